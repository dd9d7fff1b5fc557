"""Test-wide settings: W&B never goes online from the tests; a one-thread fixture for model-heavy folders."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def one_thread():
    """Two shared cores: intra-op threads only oversubscribe them (LeNet forwards run ~8x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
