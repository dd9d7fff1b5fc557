"""Shared fixtures for attribution tests: tiny float64 models, LeNet-5, random images and backgrounds.

Importing the method modules registers them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import impactx.attribution.deepprior  # noqa: F401  (registers "deepprior_eg")
import impactx.attribution.eg  # noqa: F401  (registers "eg")
import impactx.attribution.ig  # noqa: F401  (registers "ig")
import impactx.attribution.partition  # noqa: F401  (registers "partition", "shap_partition")
import impactx.attribution.wg  # noqa: F401  (registers "wg")
from impactx.models import create_backbone


class TinyCNN(nn.Module):
    """A smooth (softplus/tanh) CNN, ``[B, in_chans, size, size] -> [B, num_classes]``, so gradients are
    smooth along paths and finite differences are meaningful."""

    def __init__(self, in_chans: int = 1, size: int = 8, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1),
            nn.Softplus(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(width * ((size + 1) // 2) ** 2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BNDropoutCNN(nn.Module):
    """A small CNN with BatchNorm and Dropout, for checking that explainers leave model state alone."""

    def __init__(self, in_chans: int = 3, size: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(6 * (size // 2) ** 2, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3)
        )
        self.out = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.conv(x)))


def make_images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random float64 images ``[batch, channels, size, size]`` (standard normal), reproducible by seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=gen, dtype=torch.float64)


@pytest.fixture
def images() -> Callable[..., torch.Tensor]:
    """``images(batch, channels, size, seed=0) -> [B,C,H,W]`` float64."""
    return make_images


def build_tiny_cnn(in_chans: int = 1, size: int = 8, num_classes: int = 3, seed: int = 0) -> TinyCNN:
    """A float64 :class:`TinyCNN` in eval mode with weights fixed by ``seed``."""
    torch.manual_seed(seed)
    return TinyCNN(in_chans=in_chans, size=size, num_classes=num_classes).double().eval()


@pytest.fixture
def make_tiny_cnn() -> Callable[..., TinyCNN]:
    """``make_tiny_cnn(in_chans=1, size=8, num_classes=3, seed=0) -> TinyCNN`` (float64, eval mode)."""
    return build_tiny_cnn


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    """TinyCNN for ``[B,1,8,8]`` inputs, 3 classes, float64, fixed seed, eval mode."""
    return build_tiny_cnn()


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """``[4,1,8,8]`` float64 images for :func:`tiny_cnn`."""
    return make_images(4, 1, 8, seed=1)


@pytest.fixture
def tiny_background() -> torch.Tensor:
    """``[16,1,8,8]`` float64 background images for :func:`tiny_cnn`."""
    return make_images(16, 1, 8, seed=2)


@pytest.fixture
def lenet5() -> nn.Module:
    """LeNet-5 (``create_backbone("lenet5")``) for ``[B,1,28,28]`` inputs, 10 classes, float64, fixed seed."""
    torch.manual_seed(0)
    return create_backbone("lenet5", num_classes=10, in_chans=1, input_size=28).double().eval()


@pytest.fixture
def lenet_images() -> torch.Tensor:
    """``[3,1,28,28]`` float64 images for :func:`lenet5`."""
    return make_images(3, 1, 28, seed=3)


@pytest.fixture
def bn_dropout_model() -> BNDropoutCNN:
    """A float64 BNDropoutCNN for ``[B,3,12,12]``, 10 classes, in *train* mode with non-trivial BatchNorm
    statistics, one submodule in eval mode and one frozen parameter (a partly frozen model)."""
    torch.manual_seed(0)
    model = BNDropoutCNN().double().train()
    with torch.no_grad():
        for seed in range(3):
            model(make_images(8, 3, 12, seed=100 + seed) * 2 + 0.5)  # move the running stats
    model.head[2].eval()  # partly frozen: this BatchNorm keeps its running stats fixed
    model.conv[0].bias.requires_grad_(False)
    return model
