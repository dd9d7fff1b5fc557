"""Benchmark: the time of one optimisation step under an EG attribution prior against a plain step.

    python -m bench.prior_overhead                       # CPU: LeNet-5 and CIFAR ResNet-18, batch 64
    python -m bench.prior_overhead --device cuda --batch 64 256

Same model, batch and optimiser (Adam) in one process; every variant is one full step (forward, loss,
backward, ``optimizer.step``):

- ``plain``: cross-entropy only;
- ``bare``: the inline double-backward step a user would write: one reference image from a pool, one random
  alpha, ``g = autograd.grad(f_y(x' + a (x - x')), create_graph=True)``, ``phi = (x - x') g``,
  ``CE + lam * TV(standardise(phi))``; the model stays in train mode (the reference op's trap, kept here as
  the cheapest possible step);
- ``module``: ``AttributionPriorModule.compute_loss`` (references ``train``, k = 1): the same mathematics plus
  what makes it correct (eval-mode attribution pass, batch-invariant keyed draws);
- ``module mgm``: the same with DeepMGM-EG baselines (one more partial forward for the prior map);
- ``bare fused``: the bare step with the CE forward and the attribution forward in one batch of ``2B``
  (possible only without BatchNorm in train mode; shown for what it would buy, not used by the module).

Times: the median of ``--steps`` steps (round-robin over the variants) after 3 warm-up steps, and the first step on its own (a user's first
call: allocation, lazy initialisation). ``x plain`` and ``x bare`` are ratios measured in the same process.
Memory: on CUDA the peak ``max_memory_allocated`` growth of one step; on the CPU (no allocator statistics) the
MiB of distinct tensors autograd saves for backward in one step, the activations that dominate it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.common import cifar_images, device_name, print_table, synchronize
from impactx.metrics.functional import total_variation
from impactx.modules import AttributionPriorModule

LAM = 0.01
CASES = {"lenet5": (1, 32), "resnet18_cifar": (3, 32)}  # backbone: (channels, size)
VARIANTS = ("plain", "bare", "module", "module mgm", "bare fused")


def _data(backbone: str, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    channels, size = CASES[backbone]
    images, _ = cifar_images(batch + 256, device)
    if channels == 1:
        images = images.mean(dim=1, keepdim=True)
    labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    return images[:batch].contiguous(), labels, images[batch:].contiguous()


def make_step(variant: str, backbone: str, batch: int, device: torch.device) -> Callable[[], None]:
    """One optimisation step of ``variant`` (a closure over its own model, optimiser and batch)."""
    channels, size = CASES[backbone]
    torch.manual_seed(0)
    references = "mgm" if variant == "module mgm" else "train"
    module = AttributionPriorModule(backbone, num_classes=10, in_chans=channels, input_size=size, lam=LAM,
                                    references=references, deepprior_fit_images=128).to(device)
    module.train()
    model = module.model
    x, y, pool = _data(backbone, batch, device)
    if variant.startswith("module"):
        module.set_reference_pool(pool)
        if references == "mgm":
            module.fit_density()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)

    def bare_points() -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randint(0, pool.shape[0], (batch,), generator=gen, device=device)
        ref = pool[pick]
        alpha = torch.rand(batch, 1, 1, 1, generator=gen, device=device)
        return ref, (ref + alpha * (x - ref)).requires_grad_(True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if variant == "plain":
            loss = F.cross_entropy(model(x), y)
        elif variant == "bare":
            ref, points = bare_points()
            score = model(points).gather(1, y.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, points, create_graph=True)
            tv = total_variation((x - ref) * grad, standardise=True).mean()
            loss = F.cross_entropy(model(x), y) + LAM * tv
        elif variant == "bare fused":
            ref, points = bare_points()
            logits = model(torch.cat([x, points]))
            score = logits[batch:].gather(1, y.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, points, create_graph=True)
            tv = total_variation((x - ref) * grad, standardise=True).mean()
            loss = F.cross_entropy(logits[:batch], y) + LAM * tv
        else:
            loss = module.compute_loss((x, y, torch.arange(batch, device=device)), "train").loss
        loss.backward()
        optimizer.step()

    return step


def time_steps(steps: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict[str, tuple[float, float]]:
    """``{variant: (first step, median of repeats after 3 warm-up steps)}`` in milliseconds. The repeats run
    round-robin over the variants, so a load change on a shared machine affects every variant alike."""
    def timed(step: Callable[[], None]) -> float:
        start = time.perf_counter()
        step()
        synchronize(device)
        return 1e3 * (time.perf_counter() - start)

    first = {name: timed(step) for name, step in steps.items()}
    for step in steps.values():
        for _ in range(3):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            samples[name].append(timed(step))
    return {name: (first[name], statistics.median(samples[name])) for name in steps}


def peak_memory_mb(variant: str, backbone: str, batch: int, device: torch.device) -> float:
    """Peak memory of one step (after a warm-up step) in MiB (module docstring)."""
    if device.type == "cuda":
        step = make_step(variant, backbone, batch, device)
        step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return saved_tensors_mb(make_step(variant, backbone, batch, device))


def saved_tensors_mb(step: Callable[[], None]) -> float:
    """MiB of the distinct tensors autograd saves for backward during one step (after a warm-up step): the
    activations that dominate a step's memory, double-backward graph included (CPU has no allocator stats)."""
    step()
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "meta" and tensor.untyped_storage().nbytes():
            key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
            seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(seen.values()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--backbones", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    for backbone in args.backbones:  # one table per case, printed as soon as it is measured
        for batch in args.batch:
            times = time_steps({v: make_step(v, backbone, batch, device) for v in VARIANTS}, device, args.steps)
            plain, bare = times["plain"][1], times["bare"][1]
            rows = []
            for variant in VARIANTS:
                first, median = times[variant]
                memory = float("nan") if args.no_memory else peak_memory_mb(variant, backbone, batch, device)
                rows.append([backbone, batch, variant, first, median, median / plain, median / bare, memory])
            print_table(f"Attribution-prior step overhead on {device_name(device)}, lam {LAM}, Adam, k = 1",
                        ["backbone", "batch", "step", "first ms", "median ms", "x plain", "x bare", "memory MiB"],
                        rows)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
