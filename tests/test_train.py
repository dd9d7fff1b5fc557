"""train.py: the configs parse and instantiate, the default experiment runs end to end, bad input fails clearly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

spec = importlib.util.spec_from_file_location("impactx_train_script", ROOT / "train.py")
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)


def test_configs_folder_is_not_empty() -> None:
    assert any(p.name == "default.yaml" for p in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
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


def test_default_experiment_end_to_end(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    summary = train.run_default(["--trainer.max_epochs=3", "--trainer.enable_progress_bar=false"])
    assert summary["test_acc"] > 0.85, summary
    assert Path(summary["checkpoint"]).is_file()
    out = capsys.readouterr().out
    assert "test accuracy" in out and str(summary["checkpoint"]) in out
    assert (tmp_path / summary["log_dir"] / "metrics.csv").is_file()
    # The checkpoint describes itself: it rebuilds the model without the config.
    from impactx.modules import ClassifierModule

    restored = ClassifierModule.load_from_checkpoint(summary["checkpoint"], map_location="cpu")
    assert restored.hparams.backbone == "lenet5" and restored.hparams.num_classes == 10


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_wrong_config_key_gets_the_cli_error(tmp_path) -> None:
    result = _run_cli(["fit", "--config", str(ROOT / "configs/default.yaml"), "--model.init_args.not_a_key=1"], tmp_path)
    assert result.returncode != 0
    assert "not_a_key" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_config_value_gets_the_cli_error(tmp_path) -> None:
    result = _run_cli(["fit", "--config", str(ROOT / "configs/default.yaml"), "--trainer.max_epochs=many"], tmp_path)
    assert result.returncode != 0
    assert "max_epochs" in result.stderr and "Traceback" not in result.stderr


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
            "fit", "--config", str(ROOT / "configs/default.yaml"),
            "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
            "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = list((tmp_path / "logs" / "default").glob("version_*/checkpoints/last.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] > 0
