"""``python train.py run`` killed between stage 1 and the map pass, then during the map pass, and started again:
each restart resumes its stage (stage 1 is not retrained) and its store (finished rows are not recomputed), and the
run ends with the store and the weights of an uninterrupted run, bitwise. (A crash in stage 2: test_experiment.py.)"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_script import load_train_script

from impactx.maps.store import MapStore

ROOT = Path(__file__).resolve().parents[2]
train = load_train_script("impactx_train_script_resume")

MAP_ROWS, MAP_BATCH, CRASH_AT = 1437, 64, 5  # the full train split, the map pass's batch, the crashing batch
SMALL = [
    "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
    "--trainer.max_epochs=1", "--model.init_args.stage1_epochs=1", "--data.init_args.augment=false",
    "--data.init_args.batch_size=256", "--model.init_args.target_method=saliency",
    "--model.init_args.target_options={}", f"--model.init_args.target_batch_size={MAP_BATCH}",
    "--run.eval_images=0", "--run.gallery_images=0", "--run.map_error_images=0",
    "--trainer.callbacks+=run_helpers.CrashInMapPass",
]


@pytest.fixture(autouse=True)
def _plain_command_line(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])


def _run(name: str) -> dict:
    return train.make_cli(["run", "--config", str(ROOT / "configs/default.yaml"), *SMALL, f"--run.name={name}"]).run_results


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(path: Path, reference: Path) -> None:
    got, expected = _weights(path), _weights(reference)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], v) for k, v in expected.items()), path


def test_a_run_killed_before_and_during_the_map_pass_resumes_its_stage_and_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    reference = _run("uninterrupted")
    ref_dir, run_dir = tmp_path / "logs/uninterrupted/seed0", tmp_path / "logs/killed/seed0"
    ref_store = Path(reference["store"])

    # killed between stage 1 and the map pass: stage 1 is final, no store exists yet
    monkeypatch.setenv("IMPACTX_CRASH_MAPS", "setup")
    with pytest.raises(RuntimeError, match="before the map pass"):
        _run("killed")
    assert (run_dir / "stage1.ckpt").is_file() and not (run_dir / "maps.json").exists()
    assert not list((run_dir / "maps").glob("*/manifest.json"))
    stage1_time = (run_dir / "stage1.ckpt").stat().st_mtime_ns
    capsys.readouterr()

    # started again, and killed during the map pass: stage 1 is not retrained, CRASH_AT batches are stored
    monkeypatch.setenv("IMPACTX_CRASH_MAPS", str(CRASH_AT))
    with pytest.raises(RuntimeError, match=f"at map batch {CRASH_AT}"):
        _run("killed")
    assert "stage1: logs/killed/seed0/stage1.ckpt exists, not retrained" in capsys.readouterr().out
    assert (run_dir / "stage1.ckpt").stat().st_mtime_ns == stage1_time
    (folder,) = (p.parent for p in (run_dir / "maps").glob("*/manifest.json"))
    assert folder.name == ref_store.name  # the same key: the same stage-1 weights
    killed = MapStore.open(folder)
    assert not killed.is_complete and int(np.asarray(killed.done).sum()) == CRASH_AT * MAP_BATCH
    written = np.flatnonzero(np.asarray(killed.done))
    np.testing.assert_array_equal(written, np.arange(CRASH_AT * MAP_BATCH))
    partial = np.array(killed.maps[written])

    # started again: the pass computes only the missing rows, then stage 2 and the tests run
    monkeypatch.delenv("IMPACTX_CRASH_MAPS")
    results = _run("killed")
    out = capsys.readouterr().out
    assert "stage1: logs/killed/seed0/stage1.ckpt exists, not retrained" in out
    computed = re.search(r", (\d+) maps computed in this run\)", out)
    assert computed is not None, out[-3000:]
    assert int(computed.group(1)) == MAP_ROWS - CRASH_AT * MAP_BATCH, computed.group(0)
    resumed = MapStore.open(folder)
    assert resumed.is_complete and Path(results["store"]) == folder.relative_to(tmp_path)
    maps = np.load(folder / "maps.npy")
    assert np.array_equal(maps[written], partial)  # the finished rows were left as they were
    assert np.array_equal(maps, np.load(ref_store / "maps.npy"))  # bitwise the uninterrupted run's store
    assert json.loads((run_dir / "maps.json").read_text())["images"] == MAP_ROWS
    _assert_same_weights(run_dir / "stage1.ckpt", ref_dir / "stage1.ckpt")
    _assert_same_weights(run_dir / "stage2.ckpt", ref_dir / "stage2.ckpt")
    assert results["test_acc"] == reference["test_acc"] and results["stage1_test_acc"] == reference["stage1_test_acc"]
