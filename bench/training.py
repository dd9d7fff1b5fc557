"""Benchmark: training throughput of the real LightningModules under the precision and speed switches.

    python -m bench.training                       # CPU: LeNet-5 and ResNet-18, every module and switch
    python -m bench.training --device cuda --batch 256
    python -m bench.training --quick               # LeNet-5 only, few steps, no compile

One optimisation step = ``optimizer.zero_grad(); module.training_step(batch, i).backward(); optimizer.step()``
through each module's own ``training_step`` (loss, accuracy metric, logging call) and ``configure_optimizers``
(Adam), no Trainer loop or data loader around it. Modules: the baseline classifier (``ClassifierModule``),
IMPACTX stage 2 (``ImpactxModule``, two-stage, M frozen, batches carrying a target map) and ABN
(``AbnModule``). Variants, each a fresh module with the same seed, timed in the same process:

- ``fp32``: the default on CPU;
- ``bf16``: the step under ``torch.autocast(device, bfloat16)`` (what ``bf16-mixed`` does; the default on a CUDA
  GPU with bf16);
- ``channels_last``: the module's ``channels_last=True`` (weights and images NHWC);
- ``compile``: the module's ``compile=True`` (``torch.compile`` of the forward; ``first s`` holds the compilation).

``steps/s`` is the median over ``--steps`` rounds after one warm-up step each; a round times one step of every
variant in turn, so the load of a shared machine falls on all alike. ``x fp32`` is the speed-up over the ``fp32``
row of the same module and model. A second table gives the error bf16 autocast makes in one step's
loss and parameter gradient against fp32 on the same weights and batch, for these modules and the attribution
prior (whose loss differentiates through ``autograd.grad``): the measurement behind the bf16 default.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext

import torch

from bench.common import cifar_images, device_name, print_table, synchronize
from impactx.modules import AbnModule, AttributionPriorModule, ClassifierModule, ImpactxModule
from impactx.modules.base import BaseModule

MODELS = {"lenet5": 1, "resnet18_cifar": 3}  # backbone: input channels (32x32 images)
MODULES: dict[str, Callable[..., BaseModule]] = {
    "baseline": lambda **kw: ClassifierModule(**kw),
    "impactx stage 2": lambda **kw: ImpactxModule(training="two_stage", **kw),
    "abn": lambda **kw: AbnModule(**kw),
}
VARIANTS = ("fp32", "bf16", "channels_last", "compile")


def make_batch(backbone: str, batch: int, device: torch.device, size: int = 32) -> tuple[torch.Tensor, ...]:
    """``(images [B,C,size,size], labels [B], index [B], target maps [B,1,size,size])``: CIFAR-10 test images
    (resized when ``size`` is not 32; mean over colour for LeNet-5's one channel), seeded labels, a seeded
    uniform map."""
    images, _ = cifar_images(batch, device)
    if MODELS[backbone] == 1:
        images = images.mean(dim=1, keepdim=True)
    if size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (batch,), generator=g).to(device)
    maps = torch.rand(batch, 1, size, size, generator=g).to(device)
    return images.contiguous(), labels, torch.arange(batch, device=device), maps


def build(module: str, backbone: str, device: torch.device, input_size: int = 32, **options: object) -> BaseModule:
    """A fresh module of kind ``module`` (key of ``MODULES`` or ``"attribution prior"``: lam 0.01, the batch's
    other images as references) for ``input_size`` images, seeded, in train mode, speed switches applied.
    ``options`` go to the module (``compile``, ``channels_last``, ``n_references``, ...)."""
    torch.manual_seed(0)
    kw = dict(backbone=backbone, num_classes=10, in_chans=MODELS[backbone], input_size=input_size, **options)
    made = AttributionPriorModule(lam=0.01, references="batch", **kw) if module == "attribution prior" \
        else MODULES[module](**kw)
    made = made.to(device).train()
    made.apply_speed_switches()
    return made


def _optimizer(module: BaseModule) -> torch.optim.Optimizer:
    configured = module.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def step_fn(module: BaseModule, batch: tuple[torch.Tensor, ...], bf16: bool) -> Callable[[], None]:
    """One optimisation step of ``module`` on ``batch`` (bf16 autocast around the forward when asked)."""
    optimizer = _optimizer(module)
    batch = batch if isinstance(module, ImpactxModule) else batch[:3]  # training_step does channels_last
    device = batch[0].device
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], device: torch.device,
                     rounds: int) -> dict[str, tuple[float, float]]:
    """``{name: (seconds of its first step, median seconds over rounds)}``: one first (warm-up, compiling) step
    each, then ``rounds`` rounds that time one step of every entry in turn, so load on a shared machine falls
    on all of them alike."""
    def timed(step: Callable[[], None]) -> float:
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        return time.perf_counter() - start

    first = {name: timed(step) for name, step in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(timed(step))
    return {name: (first[name], statistics.median(times[name])) for name in steps}


def throughput_rows(backbone: str, batch: int, device: torch.device, rounds: int,
                    variants: tuple[str, ...]) -> list[list[object]]:
    data = make_batch(backbone, batch, device)
    rows = []
    for name in MODULES:
        steps = {}
        for variant in variants:
            module = build(name, backbone, device, compile=variant == "compile",
                           channels_last=variant == "channels_last")
            steps[variant] = step_fn(module, data, bf16=variant == "bf16")
        times = time_interleaved(steps, device, rounds)
        base = times[variants[0]][1]
        for variant, (first, median) in times.items():
            rows.append([backbone, name, batch, variant, f"{first:.3f}", f"{1 / median:.3g}",
                         f"{batch / median:.4g}", f"{base / median:.2f}"])
        print(f"{backbone} {name}: " + ", ".join(f"{v} {1 / m:.3g} steps/s" for v, (_, m) in times.items()), flush=True)
    return rows


def gradients(module: BaseModule, batch: tuple[torch.Tensor, ...], bf16: bool) -> tuple[float, torch.Tensor]:
    """(loss, the flat gradient of every trainable parameter) of one training step, nothing updated."""
    module.zero_grad(set_to_none=True)
    batch = batch if isinstance(module, ImpactxModule) else batch[:3]
    with torch.autocast(batch[0].device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
        loss = module.training_step(batch, 0)
    loss.backward()
    flat = torch.cat([p.grad.flatten().float() for p in module.parameters() if p.grad is not None])
    return float(loss), flat


def bf16_error_rows(backbone: str, batch: int, device: torch.device) -> list[list[object]]:
    data = make_batch(backbone, batch, device)
    rows = []
    for name in (*MODULES, "attribution prior"):
        module = build(name, backbone, device)
        loss32, grad32 = gradients(module, data, bf16=False)
        loss16, grad16 = gradients(module, data, bf16=True)
        cosine = float(torch.nn.functional.cosine_similarity(grad32, grad16, dim=0))
        rel = float((grad16 - grad32).norm() / grad32.norm())
        rows.append([backbone, name, batch, f"{loss32:.4f}", f"{abs(loss16 - loss32) / abs(loss32):.2e}",
                     f"{rel:.2e}", f"{cosine:.5f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 64 CPU, 256 GPU)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (median), after one warm-up step each")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="LeNet-5, batch 8, 2 steps, no compile")
    parser.add_argument("--compile-all", action="store_true", help="compile ResNet-18 on the CPU too (minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.steps = ["lenet5"], 8, 2
        args.variants = [v for v in args.variants if v != "compile"]
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 64)
    rows, errors = [], []
    for backbone in args.models:
        variants = tuple(args.variants)
        if device.type == "cpu" and backbone != "lenet5" and not args.compile_all and "compile" in variants:
            variants = tuple(v for v in variants if v != "compile")
            print(f"{backbone}: compile not timed on the CPU (its compilation takes minutes; --compile-all)")
        rows += throughput_rows(backbone, batch, device, args.steps, variants)
        errors += bf16_error_rows(backbone, min(batch, 32), device)
    print_table(f"Training steps through training_step, {device_name(device)}, torch {torch.__version__}, Adam",
                ["model", "module", "batch", "variant", "first s", "steps/s", "img/s", "x fp32"], rows)
    print_table(f"bf16 autocast vs fp32, one training step on the same weights and batch, {device_name(device)}",
                ["model", "module", "batch", "fp32 loss", "loss rel. err", "grad rel. err", "grad cosine"], errors)


if __name__ == "__main__":
    main()
