"""Tiny models, data and reference helpers shared by the metric tests (not a conftest: sibling test folders
may have their own)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv(3x3) -> tanh -> 2x2 average pool -> linear: small, smooth, non-linear."""

    def __init__(self, in_chans: int = 1, size: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * (size // 2) ** 2, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.tanh(self.conv(x))).flatten(1))


def tiny_cnn(in_chans: int = 1, size: int = 16, num_classes: int = 3, seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(in_chans, size, num_classes).eval()


def linear_model(
    in_chans: int, size: int, num_classes: int = 3, seed: int = 0, bias: bool = True
) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * size * size, num_classes, bias=bias)).eval()


def batch(n: int = 4, in_chans: int = 1, size: int = 16, num_classes: int = 3, seed: int = 1):
    """``(images [n,C,H,W] in [0,1), targets [n], random maps [n,C,H,W] without ties)``."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, in_chans, size, size, generator=gen)
    targets = torch.randint(0, num_classes, (n,), generator=gen)
    maps = torch.randn(n, in_chans, size, size, generator=gen)
    return images, targets, maps


def saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain gradient of the target logit: a cheap, input-dependent explainer for the tests."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(model(x).gather(1, y.view(-1, 1)).sum(), x)
    return g


def np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)
