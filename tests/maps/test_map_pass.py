"""The map pass: maps equal the explainer's, a complete store is not recomputed, a killed pass resumes
without recomputing done rows and ends bitwise equal, and two DDP processes write the same store as one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from pass_helpers import FakeDataModule, tiny_model

from impactx.attribution import attribute
from impactx.attribution.background import materialise_background
from impactx.maps.map_pass import MapPassOptions, fixed_batches, run_map_pass
from impactx.maps.store import MapStore, MapStoreError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def trainer(**kwargs) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**settings, **kwargs})


def options(tmp_path: Path, **changes) -> MapPassOptions:
    return MapPassOptions(**{"method": "counting_ig", "options": {"n_steps": 4}, "dir": str(tmp_path),
                             "batch_size": 4, **changes})


def test_fixed_batches():
    assert [b.tolist() for b in fixed_batches(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b.tolist() for b in fixed_batches(7, 3, np.array([4, 6]))] == [[3, 4, 5], [6]]


def test_pass_fills_the_store_with_the_explainers_maps(tmp_path, monkeypatch, capsys):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("IMPACTX_CALL_LOG", str(log))
    model, data = tiny_model(), FakeDataModule()
    folder = run_map_pass(trainer(), model, data, options(tmp_path))
    store = MapStore.open(folder)
    assert store.is_complete and store.n == 22 and store.key.target == "label"
    images, labels = data.items.images, data.items.labels
    expected = attribute("ig", model, images, labels, n_steps=4).sum(dim=1, keepdim=True)
    torch.testing.assert_close(store.read(range(22), normalisation="none"), expected, rtol=1e-5, atol=1e-6)
    assert len(log.read_text().splitlines()) == 6  # ceil(22 / 4) batches
    # a second run finds the store complete and computes nothing
    capsys.readouterr()
    assert run_map_pass(trainer(), model, data, options(tmp_path)) == folder
    assert "nothing to compute" in capsys.readouterr().out
    assert len(log.read_text().splitlines()) == 6
    # another model gets another store
    other = run_map_pass(trainer(), tiny_model(1), data, options(tmp_path))
    assert other != folder and MapStore.open(other).key.model != store.key.model


_KILLED_PASS = """
import sys
sys.path[:0] = [{here!r}, {root!r}]
import lightning as L
from pass_helpers import FakeDataModule, tiny_model
from impactx.maps.map_pass import MapPassOptions, run_map_pass
trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
run_map_pass(trainer, tiny_model(), FakeDataModule(), MapPassOptions(method="counting_ig", options={{"n_steps": 4}},
             dir={dir!r}, batch_size=4))
"""


def test_a_killed_pass_resumes_and_ends_bitwise_equal(tmp_path, monkeypatch):
    """With a batch-dependent explainer, so only recomputing the same fixed batches ends bitwise equal."""
    monkeypatch.setenv("IMPACTX_BATCH_MIX", "1")
    reference = run_map_pass(trainer(), tiny_model(), FakeDataModule(), options(tmp_path / "ref"))
    killed_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    env = {**os.environ, "IMPACTX_CALL_LOG": str(log), "IMPACTX_CALL_DELAY": "0.4", "IMPACTX_BATCH_MIX": "1"}
    script = _KILLED_PASS.format(here=str(HERE), root=str(ROOT), dir=str(killed_dir))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = killed_dir / reference.name
    killed = MapStore.open(folder)
    done_before = np.asarray(killed.done).copy()
    assert 0 < done_before.sum() < killed.n and not killed.is_complete  # killed in the middle
    todo = fixed_batches(killed.n, 4, killed.missing())
    rerun_log = tmp_path / "rerun.log"
    monkeypatch.setenv("IMPACTX_CALL_LOG", str(rerun_log))
    run_map_pass(trainer(), tiny_model(), FakeDataModule(), options(killed_dir))
    assert len(rerun_log.read_text().splitlines()) == len(todo)  # no done row recomputed
    resumed = MapStore.open(folder)
    assert resumed.is_complete
    assert np.array_equal(np.load(folder / "maps.npy"), np.load(reference / "maps.npy"))  # bitwise


@pytest.mark.ddp
def test_two_ddp_processes_write_the_same_store_as_one(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPACTX_BATCH_MIX", "1")  # the ranks must explain the very same fixed batches
    single = run_map_pass(trainer(), tiny_model(), FakeDataModule(), options(tmp_path / "one"))
    ddp = trainer(strategy="ddp_spawn", devices=2)
    run_map_pass(ddp, tiny_model(), FakeDataModule(), options(tmp_path / "two"))
    two = tmp_path / "two" / single.name
    assert MapStore.open(two).is_complete
    assert np.array_equal(np.load(two / "maps.npy"), np.load(single / "maps.npy"))  # the same fixed batches


def test_background_methods_get_a_seeded_train_background(tmp_path):
    """eg (and wg, deepprior_eg) draw references from the unaugmented train split, described in the key."""
    model, data = tiny_model(), FakeDataModule()
    folder = run_map_pass(trainer(), model, data, options(tmp_path, method="eg", options={"n_samples": 6},
                                                          background_size=8, seed=3))
    store = MapStore.open(folder)
    assert store.key.options["background"] == {"split": "train", "size": 8, "seed": 3}
    assert store.key.options["n_samples"] == 6 and store.key.options["create_graph"] is False  # defaults bound
    background = materialise_background(data.items, 8, "train", 3)
    expected = attribute("eg", model, data.items.images, data.items.labels, n_samples=6, seed=3,
                         background=background).sum(dim=1, keepdim=True)
    torch.testing.assert_close(store.read(range(22), normalisation="none"), expected, rtol=1e-5, atol=1e-6)


def test_a_refreshed_store_is_not_reused_for_the_original_model(tmp_path, capsys):
    model, data = tiny_model(), FakeDataModule()
    folder = run_map_pass(trainer(), model, data, options(tmp_path))
    MapStore.open(folder, writable=True).update_manifest(refreshed_from="f" * 64)
    with pytest.raises(MapStoreError, match="recomputed during training from other weights"):
        run_map_pass(trainer(), model, data, options(tmp_path))


@pytest.mark.parametrize(("method", "options"), [("gradcam", {}), ("smoothgrad", {"n_samples": 3}),
                                                 ("input_x_gradient", {}), ("scorecam", {})])
def test_new_methods_fill_a_store_with_their_maps(tmp_path, method, options):
    """The survey's methods and the CAMs are target-map methods of the map pass like the others."""
    model, data = tiny_model(), FakeDataModule()
    folder = run_map_pass(trainer(), model, data, MapPassOptions(method=method, options=options, dir=str(tmp_path),
                                                                 batch_size=5))
    store = MapStore.open(folder)
    assert store.is_complete and store.key.explainer == method
    expected = attribute(method, model, data.items.images, data.items.labels, **options, seed=0) \
        if method == "smoothgrad" else attribute(method, model, data.items.images, data.items.labels, **options)
    torch.testing.assert_close(store.read(range(22), normalisation="none"), expected.sum(dim=1, keepdim=True),
                               rtol=1e-5, atol=1e-6)
