"""Benchmark: exported artifacts against the eager module they come from, in one process.

    python -m bench.export                      # CPU: LeNet-5 on digits (IMPACTX, ABN, classifier), ResNet-18 on CIFAR
    python -m bench.export --cases lenet5       # only the LeNet-5 cases

For each model and format the artifact is written by ``export_checkpoint`` and loaded with ``impactx.export.load``
(the user's path: hash check, input check). ``first s`` is the time from ``load`` to the first result of a
batch of 1 (loading and any one-time compilation included). ``img/s`` is the best of several timed calls
after a warm-up, for batches of 1 and 64; ``x eager`` divides it by the eager network's rate on the same batch,
measured just before in this process (the same wrapper ``nn.Module`` the export traced, eval mode, ``no_grad``;
for the TorchScript ``explain`` rows the eager reference is impactx's own IG or EG on the module). Above 1:
the artifact is faster. Models are randomly initialised (seeded): speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import best_time, device_name, print_table
from impactx.attribution.ig import IntegratedGradients
from impactx.data import CIFAR10DataModule, DigitsDataModule
from impactx.export import FORMATS, export_checkpoint, load
from impactx.export.exporter import blank_image, build_export_network
from impactx.modules import AbnModule, ClassifierModule, ImpactxModule
from impactx.modules.metadata import checkpoint_metadata

CASES = {
    "impactx-lenet5": (ImpactxModule, "lenet5", "digits"),
    "abn-lenet5": (AbnModule, "lenet5", "digits"),
    "baseline-lenet5": (ClassifierModule, "lenet5", "digits"),
    "abn-resnet18": (AbnModule, "resnet18_cifar", "cifar10"),
    "baseline-resnet18": (ClassifierModule, "resnet18_cifar", "cifar10"),
}
BATCHES = (1, 64)


def _datamodule(name: str, root: Path):
    return DigitsDataModule() if name == "digits" else CIFAR10DataModule(data_dir=str(root / "cifar"))


def _checkpoint(cls, backbone: str, datamodule, path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    module = cls(backbone=backbone, num_classes=10, in_chans=datamodule.in_chans, input_size=datamodule.image_size)
    module.eval()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "impactx": checkpoint_metadata(module, datamodule)}, path)
    return module, path


def _rate(fn, batch: int, repeats: int) -> float:
    return batch / best_time(fn, torch.device("cpu"), repeats=repeats, warmup=1)


def run_case(name: str, root: Path, repeats: int) -> list[list[object]]:
    cls, backbone, data = CASES[name]
    datamodule = _datamodule(data, root)
    module, ckpt = _checkpoint(cls, backbone, datamodule, root / f"{name}.ckpt")
    shape = (datamodule.in_chans, datamodule.image_size, datamodule.image_size)
    images = {b: torch.randn(b, *shape, generator=torch.Generator().manual_seed(b)) for b in BATCHES}
    metadata = torch.load(ckpt, weights_only=True)["impactx"]
    eager = build_export_network(module, metadata, "exported_program")
    rows = []
    with torch.no_grad():
        eager_rates = {b: _rate(lambda b=b: eager(images[b]), b, repeats) for b in BATCHES}
    for fmt in FORMATS:
        export_checkpoint(ckpt, fmt, root / name, measure_accuracy=False)
        start = time.perf_counter()
        model = load(root / name, format=fmt)
        model.runner(images[1]) if fmt != "onnx" else model.runner.run(None, {"images": images[1].numpy()})
        first = time.perf_counter() - start
        for b in BATCHES:
            if fmt == "onnx":
                fn = lambda b=b: model.runner.run(None, {"images": images[b].numpy()})  # noqa: E731
            else:
                fn = lambda b=b: model.runner(images[b])  # noqa: E731
            with torch.no_grad():
                rate = _rate(fn, b, repeats)
            rows.append([name, fmt, "forward", b, f"{first:.2f}", rate, eager_rates[b], rate / eager_rates[b]])
        if fmt == "torchscript" and metadata["explainer"]["source"] == "ig":
            ig = IntegratedGradients(n_steps=32, baseline=blank_image(metadata["data"]), reduce_channels=True)
            for b in BATCHES:
                target = module(images[b]).argmax(dim=1)
                reference = _rate(lambda b=b, t=target: ig(module.model, images[b], t), b, max(1, repeats // 2))
                rate = _rate(lambda b=b, t=target: model.explain(images[b], t), b, max(1, repeats // 2))
                rows.append([name, fmt, "explain (IG 32)", b, "", rate, reference, rate / reference])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), help=f"substrings of {list(CASES)}")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = [c for c in CASES if any(s in c for s in args.cases)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            rows += run_case(case, Path(tmp), args.repeats)
            print(f"{case}: done", flush=True)
    print_table(f"Exported artifacts vs the eager network, {device_name(torch.device('cpu'))}, torch {torch.__version__}",
                ["model", "format", "call", "batch", "first s", "img/s", "eager img/s", "x eager"], rows)


if __name__ == "__main__":
    main()
