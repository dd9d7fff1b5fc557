"""Fixtures for the callback tests: the digits data, an untrained LeNet-5 classifier and a self-explaining one."""
# ruff: noqa: E402  (sys.path is fixed before the imports)

from __future__ import annotations

import sys
from pathlib import Path

# tests/conftest.py puts tests/ on sys.path, where this folder would shadow the top-level ``callbacks`` package
# as a namespace package; the repository root on sys.path lets the real (regular) package win.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from impactx.data import DigitsDataModule
from impactx.modules import ClassifierModule


class SelfExplainingClassifier(ClassifierModule):
    """A test-only self-explaining module: ``explain`` is a forward-only map that depends on the weights
    (the input convolved with the first LeNet kernel summed over its output channels), ``[B,1,H,W]``."""

    def explain(self, images: torch.Tensor) -> torch.Tensor:
        kernel = self.model.features.conv[0].weight.sum(dim=0, keepdim=True)  # [1, C, 5, 5]
        return F.conv2d(images, kernel, padding=2)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (``tests/conftest.py``)."""
    yield


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    return DigitsDataModule(batch_size=64)


@pytest.fixture(scope="module")
def lenet() -> ClassifierModule:
    L.seed_everything(0, verbose=False)
    return ClassifierModule(backbone="lenet5", num_classes=10, in_chans=1, input_size=32)


@pytest.fixture(scope="module")
def self_explaining() -> SelfExplainingClassifier:
    L.seed_everything(1, verbose=False)
    return SelfExplainingClassifier(backbone="lenet5", num_classes=10, in_chans=1, input_size=32)


def _make_trainer(tmp_path, callbacks, inference_mode: bool = False, logger=None, **kwargs) -> L.Trainer:
    from lightning.pytorch.loggers import CSVLogger

    options = dict(
        accelerator="cpu", devices=1, limit_test_batches=1, limit_val_batches=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
    )
    options.update(kwargs)
    return L.Trainer(
        inference_mode=inference_mode,
        callbacks=callbacks,
        logger=logger if logger is not None else CSVLogger(str(tmp_path), name="run"),
        **options,
    )


@pytest.fixture
def make_trainer(tmp_path):
    """``make_trainer(callbacks, inference_mode=False, logger=None, **trainer_kwargs)``: a quiet CPU trainer
    that tests one batch and logs (CSV) under ``tmp_path``."""
    return lambda callbacks, **kwargs: _make_trainer(tmp_path, callbacks, **kwargs)
