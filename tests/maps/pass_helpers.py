"""A small fake data module and a call-counting explainer for the map-pass tests (also run in subprocesses)."""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.data import Dataset

from impactx.attribution.ig import IntegratedGradients
from impactx.attribution.registry import _REGISTRY, register


class Items(Dataset):
    """``n`` seeded random images ``[1, 8, 8]`` with labels; items ``(image, label, index)``."""

    def __init__(self, n: int = 22) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 1, 8, 8, generator=gen)
        self.labels = torch.randint(0, 3, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), i


class FakeDataModule:
    name = "fake"
    num_workers = 0

    def __init__(self, n: int = 22) -> None:
        self.items = Items(n)

    def preprocessing(self) -> str:
        return "identity"

    def map_dataset(self) -> Dataset:
        return self.items


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 64, 3))


if "counting_ig" not in _REGISTRY:

    @register("counting_ig")
    class CountingIG(IntegratedGradients):
        """IG that appends one line per call to ``$IMPACTX_CALL_LOG``; with ``$IMPACTX_BATCH_MIX`` its maps
        also depend on the other images of the call (as a batch-dependent explainer's would)."""

        def _attribute(self, model, inputs, target, background):
            log = os.environ.get("IMPACTX_CALL_LOG")
            if log:
                with open(log, "a") as f:
                    f.write(f"{inputs.shape[0]}\n")
            delay = float(os.environ.get("IMPACTX_CALL_DELAY", "0"))
            if delay:
                import time

                time.sleep(delay)
            maps = super()._attribute(model, inputs, target, background)
            if os.environ.get("IMPACTX_BATCH_MIX"):  # depends on which images share the call
                maps = maps + 1e-3 * inputs.mean()
            return maps
