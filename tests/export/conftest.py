"""Checkpoints of every model kind, saved by a real trainer (so ``on_save_checkpoint`` writes the metadata), and
their exports, made once per test session."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from impactx.data import DigitsDataModule
from impactx.export import FORMATS, export_checkpoint
from impactx.modules import AbnModule, AttributionPriorModule, ClassifierModule, ImpactxModule

KINDS = ("impactx", "abn", "baseline", "prior")


def new_module(kind: str, backbone: str = "lenet5") -> L.LightningModule:
    if kind == "impactx":
        return ImpactxModule(backbone=backbone, training="two_stage", latent_dim=64, decoder_width=16)
    if kind == "abn":
        return AbnModule(backbone=backbone)
    if kind == "baseline":
        return ClassifierModule(backbone=backbone)
    return AttributionPriorModule(backbone=backbone, references="train", n_references=2, output="log_prob")


def perturb_batchnorm(module: torch.nn.Module) -> None:
    """Running statistics far from (0, 1), so an artifact normalising with batch statistics differs visibly."""
    generator = torch.Generator().manual_seed(1)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=generator) * 0.5)
            layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=generator) + 0.5)


def save_checkpoint(module: L.LightningModule, datamodule: DigitsDataModule, path: Path) -> Path:
    """``path``, written by ``trainer.save_checkpoint`` after one validation batch of ``module`` on ``datamodule``."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def digits() -> DigitsDataModule:
    datamodule = DigitsDataModule(batch_size=32)
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="session")
def exported(tmp_path_factory, digits) -> dict[str, dict]:
    """``{kind: {"module", "checkpoint", "dir"}}``: every kind saved and exported in every format."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for kind in KINDS:
        torch.manual_seed(KINDS.index(kind))
        module = new_module(kind).eval()
        checkpoint = save_checkpoint(module, digits, root / f"{kind}.ckpt")
        folder = root / kind
        for fmt in FORMATS:
            export_checkpoint(checkpoint, fmt, folder, measure_accuracy=fmt == "onnx")
        out[kind] = {"module": module.eval(), "checkpoint": checkpoint, "dir": folder}
    return out


@pytest.fixture(scope="session")
def test_batch(digits) -> torch.Tensor:
    """Seven test images ``[7,1,32,32]``."""
    return torch.stack([digits.dataset("test")[i][0] for i in range(7)])
