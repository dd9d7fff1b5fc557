"""Benchmark: the whole map pass (data loading, explainer, writer and store) against the model-forward bound.

    python -m bench.maps                                # CPU: digits + LeNet-5, CIFAR-shaped + ResNet-18
    python -m bench.maps --device cuda --images 4096

For each case the map pass (``impactx.maps.map_pass.run_map_pass`` under a one-device ``Trainer``, into a
fresh store each repeat, ``partition`` at 2000 evaluations of the true class) is timed end to end, and so
is the model alone: ``bound`` = images per second the model reaches for the same number of forward passes
(``expansion_evals(2000)`` per image) at its best batch size, measured in the same process just before.
``of bound`` = pass images per second / bound (1.0: the pass costs exactly the model's forward passes).
Each case is repeated; the table gives the median and the spread (min..max) over the repeats.

A second table gives the pass's arithmetic: ``GFLOP/img`` = the FLOPs of the explainer's work for one image,
counted with torch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions) on a
few images; ``achieved`` = that times the pass's images per second; ``peak`` = the FLOP/s of a large square
fp32 matmul measured on this device in the same process (a practical peak, not a data-sheet number; on CUDA the
card's nominal bf16 and fp32 peaks are given too) and ``of peak`` = achieved / peak.

A third table compares the maps of the same images made under bf16 autocast (what a ``bf16-mixed`` trainer's map
pass does) with fp32 maps: the largest difference relative to the largest fp32 value, and the smallest per-image
Pearson correlation.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import lightning as L
import torch
from torch.utils.data import Dataset

from bench.common import (
    bench_model,
    cifar_images,
    counted_flops,
    device_name,
    forward_rate,
    measured_matmul_flops,
    nominal_peak_tflops,
    print_table,
)
from impactx.attribution import create_explainer
from impactx.attribution.partition import expansion_evals
from impactx.data import DigitsDataModule
from impactx.maps.map_pass import MapPassOptions, run_map_pass
from impactx.models import create_backbone

MAX_EVALS = 2000


class _Tensors(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], i % 10, i


class _CifarShaped:
    """A data module stand-in: CIFAR-10 test JPEGs (or random images) as the split to explain."""

    name, num_workers = "cifar_shaped", 0

    def __init__(self, n: int) -> None:
        self.images, self.source = cifar_images(n, torch.device("cpu"))

    def preprocessing(self) -> str:
        return "cifar10 normalisation"

    def map_dataset(self) -> Dataset:
        return _Tensors(self.images)


class _Digits:
    """The first ``n`` items of the embedded digits train split."""

    name, num_workers, source = "digits", 0, "scikit-learn digits (train split)"

    def __init__(self, n: int) -> None:
        self.module = DigitsDataModule()
        self.n = n

    def preprocessing(self) -> str:
        return self.module.preprocessing()

    def map_dataset(self) -> Dataset:
        return torch.utils.data.Subset(self.module.map_dataset(), range(self.n))


def pass_seconds(model: torch.nn.Module, data, batch_size: int, device: torch.device,
                 max_evals: int = MAX_EVALS) -> float:
    """Wall seconds of one whole map pass (``partition`` at ``max_evals``) over ``data.map_dataset()``."""
    trainer = L.Trainer(accelerator=device.type, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with tempfile.TemporaryDirectory() as folder:
        options = MapPassOptions(method="partition", options={"max_evals": max_evals}, dir=folder,
                                 batch_size=batch_size)
        start = time.perf_counter()
        run_map_pass(trainer, model, data, options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


def flops_per_image(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> float:
    """FLOPs the partition explainer (``MAX_EVALS`` evaluations) spends on one image of ``images [k,C,H,W]``."""
    images = images.to(device)
    labels = torch.zeros(len(images), dtype=torch.long, device=device)
    explainer = create_explainer("partition", max_evals=MAX_EVALS)
    return counted_flops(lambda: explainer(model, images, labels)) / len(images)


def bf16_map_error(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """(max |bf16 - fp32| / max |fp32|, min per-image Pearson r) of partition maps of ``images [k,C,H,W]``."""
    from bench.gpu_check import pearson_min

    images = images.to(device)
    labels = torch.zeros(len(images), dtype=torch.long, device=device)
    explainer = create_explainer("partition", max_evals=MAX_EVALS)
    fp32 = explainer(model, images, labels).float()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = explainer(model, images, labels).float()
    return float((bf16 - fp32).abs().max() / fp32.abs().max()), pearson_min(bf16, fp32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=None, help="images per pass (default 64 LeNet, 4 ResNet on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="images per explainer call (default 64 LeNet, 4 ResNet)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet18_cifar"])
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    print(f"device: {device_name(device)}; partition at {MAX_EVALS} evaluations; {args.repeats} repeats")
    rows, flop_rows, bf16_rows = [], [], []
    peak = measured_matmul_flops(device)
    for name in args.models:
        if name == "lenet5":
            torch.manual_seed(0)
            model = create_backbone("lenet5", num_classes=10, in_chans=1, input_size=32).to(device).eval()
            n = args.images or 64
            data, shape = _Digits(n), (1, 32, 32)
        else:
            model = bench_model(name, device)
            n = args.images or 4
            data, shape = _CifarShaped(n), (3, 32, 32)
        batch = args.batch or min(n, 64 if name == "lenet5" else 4)
        run_map_pass_warm = pass_seconds(model, _Digits(2) if name == "lenet5" else _CifarShaped(2), 2, device)
        del run_map_pass_warm  # first call: imports, allocator and kernel warm-up
        rates, bounds = [], []
        for _ in range(args.repeats):
            bound = forward_rate(model, device, backward=False, shape=shape, repeats=1) / expansion_evals(MAX_EVALS)
            rates.append(n / pass_seconds(model, data, batch, device))
            bounds.append(bound)
        ratios = [r / b for r, b in zip(rates, bounds)]
        sample = torch.stack([data.map_dataset()[i][0] for i in range(min(n, 4))])
        flops = flops_per_image(model, sample, device)
        with torch.no_grad():
            forward = counted_flops(lambda: model(sample[:1].to(device)))
        achieved = flops * statistics.median(rates)
        error, pearson = bf16_map_error(model, sample, device)
        bf16_rows.append([name, len(sample), MAX_EVALS, f"{error:.3g}", f"{pearson:.4f}"])
        flop_rows.append([name, f"{forward / 1e6:.3g}", expansion_evals(MAX_EVALS), f"{flops / 1e9:.3g}",
                          f"{achieved / 1e9:.3g}", f"{peak / 1e9:.4g}", f"{achieved / peak:.3f}"])
        rows.append([
            name, data.source, n, batch, f"{statistics.median(rates):.3g}", f"{min(rates):.3g}..{max(rates):.3g}",
            f"{statistics.median(bounds):.3g}", f"{statistics.median(ratios):.2f}",
            f"{min(ratios):.2f}..{max(ratios):.2f}", f"{1 / statistics.median(ratios):.2f}x",
        ])
    print_table(
        "map pass (whole pass) vs model-forward bound",
        ["model", "images", "N", "batch", "pass img/s", "spread", "bound img/s", "of bound", "spread",
         "pass time / bound time"],
        rows,
    )
    bf16_peak, fp32_peak = nominal_peak_tflops(device)
    nominal = "" if fp32_peak is None else \
        f"; nominal peaks of this card: {bf16_peak or '-'} TFLOP/s bf16, {fp32_peak} TFLOP/s fp32"
    print_table(
        f"map pass FLOPs (torch FlopCounterMode) and fraction of peak; peak = measured fp32 matmul on {device_name(device)}"
        + nominal,
        ["model", "fwd MFLOP/img", "evals/img", "GFLOP/img", "achieved GFLOP/s", "peak GFLOP/s", "of peak"],
        flop_rows,
    )
    print_table(f"partition maps under bf16 autocast vs fp32, {device_name(device)}",
                ["model", "images", "max_evals", "max |diff| / max |fp32|", "min Pearson r"], bf16_rows)


if __name__ == "__main__":
    main()
