"""Shared pieces of the benchmarks: models, images, timing and the table printer."""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from impactx.models import create_backbone

CIFAR_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cifar_images(n: int, device: torch.device, zip_path: Path | None = None) -> tuple[torch.Tensor, str]:
    """``n`` normalised CIFAR-10 test images ``[n,3,32,32]`` from the JPEG archive, or random ones without it.

    Set ``IMPACTX_CIFAR_ZIP`` to point at the archive elsewhere (e.g. a carried copy on the GPU machine).
    """
    path = Path(os.environ.get("IMPACTX_CIFAR_ZIP", zip_path or CIFAR_ZIP))
    if path.is_file():
        from PIL import Image

        with zipfile.ZipFile(path) as archive:
            names = sorted(x for x in archive.namelist() if "test/" in x and x.endswith(".jpg"))
            pick = np.random.default_rng(0).choice(len(names), size=min(n, len(names)), replace=False)
            arrays = [np.asarray(Image.open(io.BytesIO(archive.read(names[i]))).convert("RGB")) for i in pick]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        source = f"CIFAR-10 test JPEGs ({path.name})"
    else:
        x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        source = "uniform random images (CIFAR-10 archive not found)"
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device), source


def bench_model(name: str, device: torch.device) -> torch.nn.Module:
    """A randomly initialised (seeded) 10-class model for 3x32x32 input, in eval mode on ``device``."""
    torch.manual_seed(0)
    return create_backbone(name, num_classes=10, in_chans=3, input_size=32).to(device).eval()


def best_time(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def forward_rate(model: torch.nn.Module, device: torch.device, backward: bool, batch_sizes=(256, 2048),
                 shape: tuple[int, int, int] = (3, 32, 32), repeats: int = 2) -> float:
    """Images per second the model alone manages, forward (and backward to the input), best batch size."""
    rates = []
    for batch in batch_sizes:
        x = torch.randn(batch, *shape, device=device)

        def step() -> None:
            if backward:
                xr = x.requires_grad_(True)
                (g,) = torch.autograd.grad(model(xr)[:, 0].sum(), xr)
            else:
                with torch.no_grad():
                    model(x)

        rates.append(batch / best_time(step, device, repeats=repeats))
    return max(rates)


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [[str(c) for c in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    print(" | ".join(h.ljust(w) for h, w in zip(cells[0], widths)))
    print("-+-".join("-" * w for w in widths))
    for row in cells[1:]:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
