"""Shared pieces of the benchmarks: models, images, timing and the table printer.

:func:`print_table` prints a table and, inside :func:`recording` (what ``python -m bench`` uses), also keeps it
as a :class:`Table`, so one process can run every benchmark and write all their tables as markdown.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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


@dataclass
class Table:
    """One printed table: its title, header and rows as the strings printed."""

    title: str
    header: list[str]
    rows: list[list[str]]
    printed: str = field(default="", compare=False, repr=False)  # the text print_table wrote

    def markdown(self) -> str:
        escape = lambda c: c.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(map(escape, self.header)) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(map(escape, row)) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Recording:
    """The tables printed inside :func:`recording`, in order."""

    tables: list[Table] = field(default_factory=list)


_RECORDINGS: list[Recording] = []


@contextmanager
def recording() -> Iterator[Recording]:
    """Keep every table :func:`print_table` prints inside the ``with`` block (nested blocks each get them)."""
    rec = Recording()
    _RECORDINGS.append(rec)
    try:
        yield rec
    finally:
        _RECORDINGS.remove(rec)


def format_cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    """Print ``rows`` under ``header`` as an aligned text table (floats to 4 significant digits); record it too."""
    table = Table(title, [str(c) for c in header], [[format_cell(c) for c in r] for r in rows])
    cells = [table.header, *table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"\n{title}", " | ".join(h.ljust(w) for h, w in zip(cells[0], widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells[1:]]
    table.printed = "\n".join(lines) + "\n"
    print(table.printed, end="")
    for rec in _RECORDINGS:
        rec.tables.append(table)


# Nominal dense peaks (TFLOP/s) of common cards, from the vendors' data sheets: (bf16 tensor core, fp32 non-tensor).
NOMINAL_PEAK_TFLOPS = {
    "H200": (989.0, 67.0), "H100 SXM": (989.0, 67.0), "H100 PCIe": (756.0, 51.0), "H100": (989.0, 67.0),
    "A100": (312.0, 19.5), "L40S": (362.0, 91.6), "L4": (121.0, 30.3), "A10": (125.0, 31.2),
    "RTX 4090": (165.0, 82.6), "V100": (None, 15.7), "T4": (None, 8.1),
}


def nominal_peak_tflops(device: torch.device) -> tuple[float | None, float | None]:
    """(bf16, fp32) nominal dense TFLOP/s of a CUDA card named in :data:`NOMINAL_PEAK_TFLOPS`, else ``(None, None)``."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, peaks in NOMINAL_PEAK_TFLOPS.items():  # longer, more specific keys come first
        if key in name:
            return peaks
    return None, None


def measured_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                          repeats: int = 3) -> float:
    """FLOP/s of a square ``size x size`` matmul (``2 size^3`` FLOPs; default 1024 on CPU, 8192 on CUDA), best of
    ``repeats``: the practical peak this device reaches in this process, the yardstick for 'fraction of peak'."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = best_time(lambda: a @ b, device, repeats=repeats, warmup=1)
    return 2 * size**3 / seconds


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` as torch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``) counts them:
    matmuls and convolutions (forward and backward), not element-wise operations."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
