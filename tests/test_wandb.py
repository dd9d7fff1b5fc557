"""W&B shows the science: offline runs of the default experiment named by experiment, model, data set, seed and
stage, with the full config, the curves (tables and line plots equal to the CSVs), the gallery's captioned images and
the export as a model artifact; no API key means offline without a prompt. Never the network (WANDB_MODE=offline).

wandb 0.31 writes an offline run's config, summary and artifacts only into its ``run-<id>.wandb`` file (a LevelDB
log of protobuf records), not as ``files/config.yaml`` / ``wandb-summary.json``; :func:`run_records` reads it.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from train_script import load_train_script

ROOT = Path(__file__).resolve().parents[1]
train = load_train_script("impactx_train_script_wandb")

CHEAP = [
    "--trainer.max_epochs=1", "--model.init_args.stage1_epochs=1", "--trainer.enable_progress_bar=false",
    "--trainer.limit_train_batches=4", "--model.init_args.target_options={max_evals: 16}", "--run.eval_images=16",
    "--run.gallery_images=2", "--run.map_error_images=16", "--run.eval_explainer={partition: {max_evals: 16}}",
]


# ------------------------------------------------------------------------------------- reading a .wandb file
def _records(path: Path) -> Iterator[Any]:
    """The protobuf ``Record``s of a ``run-<id>.wandb`` file: a ``:W&B`` header, then 32 KiB blocks of chunks
    ``crc32 (4) | length (2) | type (1: full, 2: first, 3: middle, 4: last) | data``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += left  # zero padding to the end of the block
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _set_nested(target: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _apply(target: dict, items: Any) -> None:
    for item in items:
        _set_nested(target, list(item.nested_key) or [item.key], json.loads(item.value_json))


def _finished_records(run_dir: Path, timeout: float = 60.0) -> list[Any]:
    """The records of the run folder's ``run-<id>.wandb`` once its ``exit`` record is there: ``wandb.finish()``
    returns before wandb's core process has written the file out."""
    deadline = time.monotonic() + timeout
    while True:
        paths = list(run_dir.glob("run-*.wandb"))
        records = list(_records(paths[0])) if len(paths) == 1 and paths[0].stat().st_size > 7 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{run_dir}: no finished run file after {timeout} s"
        time.sleep(0.2)


def run_records(run_dir: Path) -> dict[str, Any]:
    """``{"name", "group", "job_type", "config", "summary", "history", "artifacts"}`` of an offline run folder."""
    found: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "artifacts": []}
    for record in _finished_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found.update(name=record.run.display_name, group=record.run.run_group, job_type=record.run.job_type)
            _apply(found["config"], record.run.config.update)
        elif kind == "config":
            _apply(found["config"], record.config.update)
        elif kind == "summary":
            _apply(found["summary"], record.summary.update)
        elif kind == "history":
            row: dict = {}
            _apply(row, record.history.item)
            found["history"].append(row)
        elif kind == "artifact":
            found["artifacts"].append(record.artifact)
    return found


def _offline_runs(root: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    runs = {}
    for run_dir in sorted((root / "wandb").glob("offline-run-*")):
        records = run_records(run_dir)
        assert "name" in records, f"no run record in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}"
        runs[records["name"]] = (run_dir, records)
    return runs


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _table(files: Path, key: str) -> dict[str, Any]:
    (path,) = files.glob(f"media/table/{key}_*.table.json")
    return json.loads(path.read_text())


@pytest.fixture
def wandb_home(tmp_path, monkeypatch) -> Path:
    """An empty HOME and W&B folders under ``tmp_path``, offline, no key: nothing of the user's is read or written."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_API_KEY", "NETRC", "WANDB_DIR", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_state" / name.lower()))
    monkeypatch.setattr(sys, "argv", ["train.py"])
    return home


# ------------------------------------------------------------------------------------------------- the tests
def test_default_experiment_offline_runs_hold_curves_gallery_config_and_export(tmp_path, monkeypatch, wandb_home):
    monkeypatch.chdir(tmp_path)
    import wandb

    try:
        results = train.run_default(CHEAP)
    finally:
        wandb.finish()
    runs = _offline_runs(tmp_path / "logs")
    stem = "default-lenet5-digits-seed0"
    assert set(runs) == {f"{stem}-{stage}" for stage in ("stage1", "stage2", "test_stage1", "test", "export")}
    assert {name: r["job_type"] for name, (_, r) in runs.items()} == {
        f"{stem}-stage1": "stage1", f"{stem}-stage2": "stage2", f"{stem}-test_stage1": "test",
        f"{stem}-test": "test", f"{stem}-export": "export",
    }
    assert {r["group"] for _, r in runs.values()} == {"default"}

    run_dir, test = runs[f"{stem}-test"]
    files = run_dir / "files"
    # The config in full: the identity, the resolved CLI config (with the run options), the module's hparams.
    config = test["config"]
    assert config["identity"] == {"experiment": "default", "model": "lenet5", "dataset": "digits", "seed": 0,
                                           "stage": "test", "job_type": "test"}
    cli = config["cli"]
    assert cli["trainer"]["max_epochs"] == 1 and cli["trainer"]["limit_train_batches"] == 4
    assert cli["model"]["class_path"] == "impactx.modules.ImpactxModule"
    assert cli["model"]["init_args"]["target_options"] == {"max_evals": 16}
    assert cli["run"]["gallery_images"] == 2 and cli["seed_everything"] == 0
    assert cli["run"]["name"] is None and cli["run"]["eval_explainer"] == {"partition": {"max_evals": 16}}
    assert config["lam"] == 1.0 and config["backbone"] == "lenet5"  # the module's hparams
    assert config["batch_size"] == 64  # the data module's

    # The summary holds the test metrics of the CSV logger.
    test_csv = tmp_path / "logs/default/seed0-test"
    metrics = [r for r in _read_csv(test_csv / "metrics.csv") if r.get("test/acc")]
    assert test["summary"]["test/acc"] == pytest.approx(float(metrics[-1]["test/acc"])) \
        == pytest.approx(results["test_acc"])
    assert test["summary"]["test_eval/self/morf_aopc"] == pytest.approx(results["morf_aopc"]["self"])

    # Curves: the table of every point and the line plot's table equal the evaluation CSV's curve points.
    (eval_csv,) = test_csv.glob("explanation_eval_test_epoch*.csv")
    points = {(r["source"], float(r["x"])): float(r["value"]) for r in _read_csv(eval_csv)
              if r["quantity"] == "curve" and r["metric"] == "morf"}
    assert {s for s, _ in points} == {"self", "partition", "random"} and len(points) > 3 * 5
    table = _table(files, "test_eval/curves")
    assert table["columns"] == ["source", "metric", "x", "value"]
    assert {(s, float(x)): v for s, m, x, v in table["data"] if m == "morf"} == pytest.approx(points)
    line = _table(files, "test_eval/morf_curve_table")
    assert line["columns"] == ["source", "regions replaced", "mean target score"]
    assert {(s, float(x)): v for s, x, v in line["data"]} == pytest.approx(points)
    chart = config["_wandb"]["visualize"]["test_eval/morf_curve"]["panel_config"]
    assert chart["panelDefId"] == "wandb/line/v0"
    assert chart["fieldSettings"] == {"x": "regions replaced", "y": "mean target score", "stroke": "source"}

    # Gallery: the figure and each image and map as captioned images, with the CSV's numbers in the captions.
    (gallery_csv,) = test_csv.glob("explanation_gallery_test_epoch*.csv")
    aopc = {(r["position"], r["source"]): r for r in _read_csv(gallery_csv) if r["quantity"] == "morf_aopc"}
    assert {s for _, s in aopc} == {"self", "partition"} and len(aopc) == 4
    maps_logged = next(row["test_gallery/maps"] for row in test["history"] if "test_gallery/maps" in row)
    captions = maps_logged["captions"]
    assert maps_logged["count"] == len(captions) == 2 * 3  # 2 images x (image, partition map, self map)
    assert len(list(files.glob("media/images/test_gallery/maps_*.png"))) == 6
    assert list(files.glob("media/images/test_gallery_*.png"))  # the whole figure
    for (position, source), row in aopc.items():
        about = f"image {position}: label {row['label']}, predicted {row['prediction']} ({float(row['probability']):.2f})"
        assert about in captions, (about, captions)
        expected = f"{source} map, {about}, MoRF AOPC {float(row['value']):.3f}"
        assert expected in captions, (expected, captions)
    gallery_table = _table(files, "test_gallery/table")
    assert len(gallery_table["data"]) == len(_read_csv(gallery_csv))

    # The export as a W&B model artifact (recorded offline, for `wandb sync`) with its description as metadata.
    _, export = runs[f"{stem}-export"]
    (artifact,) = [a for a in export["artifacts"] if a.type == "model"]
    assert artifact.name == stem
    description = json.loads((Path(results["checkpoint"]).parent / "export/exported_program.json").read_text())
    assert json.loads(artifact.metadata) == description
    assert {"model.pt2", "exported_program.json", "impactx_artifact.py"} <= {c.path for c in artifact.manifest.contents}


def test_plain_fit_names_its_run_and_logs_the_cli_config(tmp_path, monkeypatch, wandb_home):
    monkeypatch.chdir(tmp_path)
    import wandb

    try:
        train.make_cli(["fit", "--config", str(ROOT / "configs/digits_baseline.yaml"), "--trainer.max_epochs=1",
                        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
                        "--trainer.enable_progress_bar=false", "--seed_everything=3"])
    finally:
        wandb.finish()
    ((_, records),) = _offline_runs(tmp_path / "logs").values()
    assert records["name"] == "digits_baseline-lenet5-digits-seed3"
    assert records["group"] == "digits_baseline" and records["job_type"] == "fit"
    assert records["config"]["cli"]["trainer"]["limit_train_batches"] == 2
    assert records["config"]["cli"]["seed_everything"] == 3


def test_no_api_key_means_offline_without_a_prompt(tmp_path) -> None:
    """A fresh process, no key, no netrc, WANDB_MODE unset, stdin closed: the run is written offline, no prompt."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"))
    script = ("from impactx.loggers import WandbLogger\n"
              "logger = WandbLogger(name='no-key', save_dir='logs')\n"
              "print('offline', logger._offline)\n"
              "logger.log_metrics({'x': 1.0}, step=0)\n"
              "logger.experiment.finish()\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "offline True" in result.stdout
    assert "api key" not in (result.stdout + result.stderr).lower()
    (run_dir,) = (tmp_path / "logs/wandb").glob("offline-run-*")
    records = run_records(run_dir)
    assert records["name"] == "no-key" and records["summary"]["x"] == 1.0


def test_a_netrc_entry_for_the_wandb_host_counts_as_credentials(tmp_path, monkeypatch) -> None:
    from impactx.loggers import wandb_credentials_available

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not wandb_credentials_available()
    netrc.write_text("machine api.wandb.ai\n  login user\n  password 0123456789\n")
    netrc.chmod(0o600)
    assert wandb_credentials_available()
