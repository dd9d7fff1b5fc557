"""train.py: the configs parse and instantiate, the default experiment runs end to end, bad input fails clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_script import load_train_script

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
BASE = ROOT / "configs" / "base.yaml"
# base.yaml holds no model or data: it lies under every experiment
EXPERIMENTS = [p for p in CONFIGS if p != BASE]

train = load_train_script("impactx_train_script")


@pytest.fixture(autouse=True)
def _plain_command_line(monkeypatch) -> None:
    """In-process CLIs get their args from the test, not from pytest's own command line."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


def test_configs_folder_is_not_empty() -> None:
    assert any(p.name == "default.yaml" for p in EXPERIMENTS) and BASE in CONFIGS


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_config_parses_and_instantiates(config: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Pretrained weights cannot be fetched here: instantiate the same architecture without them.
    overrides = ["--model.init_args.pretrained=false"] if "pretrained: true" in config.read_text() else []
    cli = train.make_cli(["--config", str(config), *overrides], run=False)
    data, model = cli.datamodule, cli.model
    assert model.hparams.num_classes == data.num_classes
    assert model.hparams.in_chans == data.in_chans
    assert model.hparams.input_size == data.image_size
    x = torch.zeros(2, data.in_chans, data.image_size, data.image_size)
    model.eval()
    assert model(x).shape == (2, data.num_classes)
    assert cli.trainer.max_epochs >= 1


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_builds_on_the_base_config(config: Path, tmp_path, monkeypatch) -> None:
    """One --config: base.yaml's loggers and checkpointing under the experiment's own log folder name."""
    monkeypatch.chdir(tmp_path)
    overrides = ["--model.init_args.pretrained=false"] if "pretrained: true" in config.read_text() else []
    resolved = train.make_cli(["--config", str(config), *overrides], run=False).config
    assert resolved.seed_everything == 0
    trainer = resolved.trainer
    assert [lg.class_path for lg in trainer.logger] == [
        "lightning.pytorch.loggers.CSVLogger",
        "impactx.loggers.WandbLogger",
    ]
    for logger in trainer.logger:  # merged item by item onto base.yaml's: its save_dir, the experiment's name
        assert logger.init_args.save_dir == "logs" and logger.init_args.name == config.stem
    checkpoint = trainer.callbacks[0]
    assert checkpoint.class_path == "lightning.pytorch.callbacks.ModelCheckpoint"
    assert (checkpoint.init_args.monitor, checkpoint.init_args.mode, checkpoint.init_args.save_last) == (
        "val/acc",
        "max",
        True,
    )
    assert trainer.default_root_dir == "logs" and trainer.accelerator == "auto"


def test_base_config_given_twice_changes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "cifar10_lenet5_baseline.yaml"
    implicit = train.make_cli(["--config", str(config)], run=False).config
    explicit = train.make_cli(["--config", str(BASE), "--config", str(config)], run=False).config
    implicit.pop("config"), explicit.pop("config")
    assert implicit == explicit
    assert [c.class_path.rsplit(".", 1)[-1] for c in implicit.trainer.callbacks] == [
        "ModelCheckpoint",
        "LearningRateMonitor",
    ]


def test_default_experiment_end_to_end(tmp_path, monkeypatch, capsys) -> None:
    """A bare `python train.py` is two-stage IMPACTX on digits: it prints both accuracies, the map error and the MoRF
    AOPC of IMPACTX's maps, Partition SHAP and random maps (here with short stages and few evaluations)."""
    monkeypatch.chdir(tmp_path)
    summary = train.run_default([
        "--trainer.max_epochs=3", "--model.init_args.stage1_epochs=3", "--trainer.enable_progress_bar=false",
        "--model.init_args.target_options={max_evals: 32}", "--run.eval_images=32", "--run.gallery_images=2",
        "--run.map_error_images=32", "--run.eval_explainer={partition: {max_evals: 32}}",
    ])
    assert summary["method"] == "impactx" and summary["test_acc"] > 0.8 and summary["stage1_test_acc"] > 0.8, summary
    assert Path(summary["checkpoint"]).is_file()
    out = capsys.readouterr().out
    for text in ("baseline A (stage 1) test accuracy", "impactx test accuracy", "decoder maps' MSE",
                 "the model's own maps", "partition on the same model", "random maps", str(summary["checkpoint"])):
        assert text in out
    assert (tmp_path / "logs/default/seed0-stage2/metrics.csv").is_file()
    assert list((tmp_path / "logs/default/seed0-test").glob("explanation_gallery_*.png"))
    # The checkpoint describes itself: it rebuilds the model without the config (or the stage-1 file).
    from impactx.modules import ImpactxModule

    restored = ImpactxModule.load_from_checkpoint(summary["checkpoint"], map_location="cpu", stage1_checkpoint=None)
    assert restored.hparams.backbone == "lenet5" and restored.hparams.num_classes == 10
    # It ends with an export of its model and the explain command for a test image it saved; that command works.
    command = next(line for line in out.splitlines() if "python train.py explain" in line).split("python train.py ")[1]
    args = command.split()
    assert args[:3] == ["explain", "--model", "logs/default/seed0/export"] and Path(args[3]).is_file()
    description = json.loads((tmp_path / "logs/default/seed0/export/exported_program.json").read_text())["metadata"]
    assert description["test_accuracy"] == pytest.approx(summary["test_acc"]) and description["map"]["where"] == "forward"
    train.main([*args, "--output", "figures"])
    assert (tmp_path / "figures" / f"{Path(args[3]).stem}.explained.png").is_file()


def _run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env},
    )


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


DEFAULT_FIT = ["fit", "--config", str(ROOT / "configs/digits_baseline.yaml")]
SHORT_RUN = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
]


def _assert_one_message(
    result: subprocess.CompletedProcess, status: int, *expected: str, max_lines: int = 8
) -> None:
    """The run ended with impactx's (or the parser's) message: a few lines, no traceback, the exit status."""
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= max_lines, result.stderr
    assert lines[-1] == "(IMPACTX_DEBUG=1 shows the full traceback)" or "--help lists every key" in lines[-1]
    for text in expected:
        assert text in result.stderr, result.stderr


def test_wrong_config_key_gets_the_cli_error(tmp_path) -> None:
    result = _run_cli([*DEFAULT_FIT, "--model.init_args.not_a_key=1"], tmp_path)
    _assert_one_message(result, 2, "not_a_key")
    assert _tree(tmp_path) == set()


def test_wrong_config_value_gets_the_cli_error(tmp_path) -> None:
    result = _run_cli([*DEFAULT_FIT, "--trainer.max_epochs=many"], tmp_path)
    _assert_one_message(result, 2, "trainer.max_epochs", "many", "python train.py fit --help")
    assert "usage:" not in result.stderr
    assert _tree(tmp_path) == set()


def test_unknown_backbone_prints_impactx_message_only(tmp_path) -> None:
    result = _run_cli([*DEFAULT_FIT, "--model.init_args.backbone", "nosuchnet"], tmp_path)
    _assert_one_message(result, 2, "error: unknown backbone 'nosuchnet': expected 'lenet5'")
    assert "Union subtypes" not in result.stderr and "Given value" not in result.stderr
    assert _tree(tmp_path) == set()  # no logs/, no logs/wandb


def test_value_rejected_by_the_data_module_leaves_no_folder(tmp_path) -> None:
    result = _run_cli([*DEFAULT_FIT, "--data.init_args.predict_split", "trian"], tmp_path)
    _assert_one_message(result, 2, "predict_split must be one of 'train', 'val', 'test', got 'trian'")
    assert _tree(tmp_path) == set()


def test_missing_cifar10_folder_prints_impactx_message_only(tmp_path) -> None:
    nowhere = tmp_path / "nowhere"
    config = str(ROOT / "configs/cifar10_lenet5_baseline.yaml")
    result = _run_cli(["fit", "--config", config, "--data.init_args.data_dir", str(nowhere)], tmp_path)
    _assert_one_message(result, 1, f"error: CIFAR-10 data set not found in data_dir='{nowhere}'", "To fix:")
    assert _tree(tmp_path) == set()  # no logs/cifar10_lenet5_baseline/version_0, no logs/wandb/offline-run-*


def test_missing_checkpoint_file_prints_one_message(tmp_path) -> None:
    config = str(ROOT / "configs/default.yaml")
    result = _run_cli(["test", "--config", config, "--ckpt_path", "nosuch.ckpt"], tmp_path)
    _assert_one_message(result, 1, f"ckpt_path '{tmp_path / 'nosuch.ckpt'}' is not a file")
    assert _tree(tmp_path) == set()


def test_debug_switch_shows_the_traceback(tmp_path) -> None:
    result = _run_cli([*DEFAULT_FIT, "--model.init_args.backbone", "nosuchnet"], tmp_path, IMPACTX_DEBUG="1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "unknown backbone 'nosuchnet'" in result.stderr


def test_plain_fit_and_a_run_failing_before_its_first_step(tmp_path) -> None:
    """A plain run warns nothing about args; a later run that fails before its first step (here on a
    checkpoint without Lightning's keys, read after the loggers made their folders) removes its own folders
    and nothing else."""
    result = _run_cli([*DEFAULT_FIT, *SHORT_RUN], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "args parameter" not in result.stderr and "sys.argv" not in result.stderr
    assert (tmp_path / "logs/digits_baseline/version_0/metrics.csv").is_file()
    (wandb_run,) = (tmp_path / "logs/wandb").glob("offline-run-*")
    before = _tree(tmp_path)

    torch.save({"epoch": 0}, tmp_path / "empty.ckpt")
    failed = _run_cli([*DEFAULT_FIT, *SHORT_RUN, "--ckpt_path", "empty.ckpt"], tmp_path)
    assert failed.returncode != 0
    assert "Traceback" in failed.stderr  # not a known user error: shown in full
    assert _tree(tmp_path) - before == {"empty.ckpt"}  # no version_1, no second W&B run
    assert _tree(tmp_path) >= before  # the earlier run is untouched, W&B's latest-run link points at it again
    assert (tmp_path / "logs/wandb/latest-run").resolve() == wandb_run.resolve()


def test_data_model_mismatch_is_a_clear_error(tmp_path, monkeypatch) -> None:
    """Outside the CLI (no argument links) a model built for other images fails before training starts."""
    import lightning as L

    from impactx.data import DigitsDataModule
    from impactx.modules import ClassifierModule

    monkeypatch.chdir(tmp_path)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="in_chans=1 but the model .* in_chans=3"):
        trainer.fit(ClassifierModule(in_chans=3), datamodule=DigitsDataModule())


@pytest.mark.ddp
def test_ddp_fit_on_two_cpu_processes(tmp_path) -> None:
    """Lightning DDP on CPU (2 processes, gloo): fit and test through the real CLI."""
    result = _run_cli(
        [
            "fit", "--config", str(ROOT / "configs/digits_baseline.yaml"),
            "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
            "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = list((tmp_path / "logs" / "digits_baseline").glob("version_*/checkpoints/last.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] > 0


MAPS = ["maps", "--config", str(ROOT / "configs/digits_baseline.yaml"), "--trainer.enable_progress_bar=false",
        "--maps.method=ig", "--maps.options={n_steps: 2}", "--maps.batch_size=256"]


def test_maps_subcommand_one_process_then_ddp(tmp_path) -> None:
    """``python train.py maps`` from a fit's checkpoint: the store is made and complete, a rerun computes
    nothing, and 2 DDP processes (gloo, through the real CLI) make the same store bitwise; no log folder."""
    import numpy as np

    fit = _run_cli([*DEFAULT_FIT, *SHORT_RUN], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (ckpt,) = (tmp_path / "logs/digits_baseline/version_0/checkpoints").glob("last.ckpt")
    logs_before = _tree(tmp_path / "logs")
    one = _run_cli([*MAPS, "--ckpt_path", str(ckpt), "--maps.dir", "one"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    (store,) = (tmp_path / "one").glob("digits-train-ig-*")
    assert f"map store one/{store.name}: complete" in one.stdout
    again = _run_cli([*MAPS, "--ckpt_path", str(ckpt), "--maps.dir", "one"], tmp_path)
    assert "nothing to compute" in again.stdout
    ddp = _run_cli([*MAPS, "--ckpt_path", str(ckpt), "--maps.dir", "two", "--trainer.accelerator=cpu",
                    "--trainer.devices=2", "--trainer.strategy=ddp"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    two = tmp_path / "two" / store.name
    assert np.array_equal(np.load(two / "maps.npy"), np.load(store / "maps.npy"))
    assert _tree(tmp_path / "logs") == logs_before  # a map pass makes no log or W&B run folder
    missing = _run_cli([*MAPS, "--maps.dir", "one"], tmp_path)
    _assert_one_message(missing, 2, "maps needs --ckpt_path")
    bad = _run_cli([*MAPS, "--ckpt_path", str(ckpt), "--maps.method=nosuch"], tmp_path)
    _assert_one_message(bad, 2, "unknown explainer 'nosuch'")


def test_option_groups_are_merged_into_one_dataclass_value() -> None:
    args = ["run", "--config", "c.yaml", "--run.eval_images=3", "--run.eval_explainer", "{partition: {max_evals: 8}}",
            "--maps.batch_size", "5", "--trainer.max_epochs=2", "--run.eval_images=4"]
    merged = train.merge_option_groups(args)
    assert merged[:4] == ["run", "--config", "c.yaml", "--trainer.max_epochs=2"]
    assert not [a for a in merged if a.startswith(("--run.", "--maps."))] and len(merged) == 6
    run = train.options_from("run", __import__("json").loads(next(a for a in merged if a.startswith("--run="))[6:]))
    assert run.eval_images == 4 and run.eval_explainer == {"partition": {"max_evals": 8}}
    assert train.options_from("maps", {"batch_size": 5}).batch_size == 5
    with pytest.raises(train.CommandLineError, match="--run: .*unexpected keyword argument 'nosuch'"):
        train.options_from("run", {"nosuch": 1})
    with pytest.raises(train.CommandLineError, match="--run: run.eval_images must be"):
        train.options_from("run", {"eval_images": -1})
