"""Benchmark: exported artifacts against the eager module they come from, in one process.

    python -m bench.export                      # CPU: LeNet-5 on digits (IMPACTX, ABN, classifier), ResNet-18 on CIFAR
    python -m bench.export --cases lenet5       # only the LeNet-5 cases

For each model and format the artifact is written by ``export_checkpoint`` and loaded with ``impactx.export.load``
(the user's path: hash check, input check). ``first s`` is the time from ``load`` to the first result of a
batch of 1 (loading and any one-time compilation included). ``img/s`` is the best of ``--repeats`` timed calls
after a warm-up, for batches of 1 and 64; ``x eager`` divides it by the eager network's rate on the same batch,
timed in the same loop with the calls alternating, so both meet the same machine load (for ONNX the eager
calls come first: onnxruntime's worker threads spin for a while after a run and would slow them) (the same wrapper ``nn.Module`` the export traced, eval mode, ``no_grad``;
for the TorchScript ``explain`` rows the eager reference is impactx's own IG or EG on the module). Above 1:
the artifact is faster. Models are randomly initialised (seeded): speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from bench.common import device_name, print_table
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
EXPLAIN_BATCHES = (1, 16)  # 32 path points per image: IG of 16 ResNet-18 images is 512 forward-backward passes
EXPLAIN_REPEATS = 3


def _datamodule(name: str, root: Path):
    return DigitsDataModule() if name == "digits" else CIFAR10DataModule(data_dir=str(root / "cifar"))


def _checkpoint(cls, backbone: str, datamodule, path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    module = cls(backbone=backbone, num_classes=10, in_chans=datamodule.in_chans, input_size=datamodule.image_size)
    module.eval()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "impactx": checkpoint_metadata(module, datamodule)}, path)
    return module, path


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def paired_rates(eager, artifact, batch: int, repeats: int, warmup: int = 1,
                 interleave: bool = True) -> tuple[float, float]:
    """Images per second of ``eager()`` and ``artifact()``, the best of ``repeats`` calls each after ``warmup``.
    Interleaved (alternating calls), both meet the same machine load; not interleaved, every eager call comes
    first (for onnxruntime, whose worker threads spin after a run and slow whatever runs next)."""
    for _ in range(warmup):
        eager()
        artifact()
    if not interleave:
        time.sleep(0.2)
        return batch / best_seconds(eager, repeats), batch / best_seconds(artifact, repeats)
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((eager, artifact)):
            best[i] = min(best[i], best_seconds(fn, 1))
    return batch / best[0], batch / best[1]


def run_case(name: str, root: Path, repeats: int) -> list[list[object]]:
    cls, backbone, data = CASES[name]
    datamodule = _datamodule(data, root)
    module, ckpt = _checkpoint(cls, backbone, datamodule, root / f"{name}.ckpt")
    shape = (datamodule.in_chans, datamodule.image_size, datamodule.image_size)
    images = {b: torch.randn(b, *shape, generator=torch.Generator().manual_seed(b)) for b in BATCHES}
    metadata = torch.load(ckpt, weights_only=True)["impactx"]
    eager = build_export_network(module, metadata, "exported_program")
    rows = []
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
                reference, rate = paired_rates(lambda b=b: eager(images[b]), fn, b, repeats, interleave=fmt != "onnx")
            rows.append([name, fmt, "forward", b, f"{first:.2f}", rate, reference, rate / reference])
        if fmt == "torchscript" and metadata["explainer"]["source"] == "ig":
            ig = IntegratedGradients(n_steps=32, baseline=blank_image(metadata["data"]), reduce_channels=True)
            for b in EXPLAIN_BATCHES:
                x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(b))
                target = module(x).argmax(dim=1)
                # Two warm-up calls: TorchScript's profiling executor optimises the graph on its second run.
                reference, rate = paired_rates(lambda x=x, t=target: ig(module.model, x, t),
                                               lambda x=x, t=target: model.explain(x, t), b, EXPLAIN_REPEATS, 2)
                rows.append([name, fmt, "explain (IG 32)", b, "", rate, reference, rate / reference])
        model = fn = None  # the onnxruntime session (and its spinning threads) ends here
        gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), help=f"substrings of {list(CASES)}")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per row (best of), after one warm-up")
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
