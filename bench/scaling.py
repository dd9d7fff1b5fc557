"""Benchmark: how each cost grows with image size, batch size and number of evaluations, measured point by point.

    python -m bench.scaling                                   # CPU: LeNet-5 at 32, 64, 128 px
    python -m bench.scaling --device cuda --model resnet18_cifar --sizes 16 32 64
    python -m bench.scaling --quick

Four costs, each varied along one axis at a time from a base point (``--sizes[0]`` px, batch 16, 500
evaluations, 50 IG steps, 1 reference), every other setting held at the base:

- ``partition``: Partition SHAP (``impactx.attribution``'s ``partition``, true class), seconds per image; axes
  image size, batch (images per call), ``max_evals``;
- ``ig``: Integrated Gradients, seconds per image; axes image size, batch, ``n_steps``;
- ``prior step``: one ``AttributionPriorModule`` training step (CE + lam * total variation of EG with the batch's
  other images as references, differentiated through, Adam), seconds per step; axes image size, batch,
  ``n_references`` (EG samples per image);
- ``map pass``: the whole map pass (``run_map_pass`` under a one-device Trainer, partition) over 16 images,
  seconds per image; axes image size, batch (images per explainer call), ``max_evals``.

Each point is the best of ``--repeats`` timed runs after one warm-up run at that point. ``x base`` = the
point's cost / the axis's first point's cost; ``x setting`` = the setting / the first setting's (pixels for
image size), so a cost that grows linearly has ``x base`` = ``x setting``. Nothing is extrapolated.
LeNet-5 needs at least 28 px, so on it the image-size axis is 32, 64, 128 (``--sizes``).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch

from bench.common import best_time, device_name, print_table
from bench.maps import _Tensors, pass_seconds
from bench.training import build, make_batch, step_fn
from impactx.attribution import create_explainer
from impactx.models import create_backbone

MAP_PASS_IMAGES = 16  # images per map pass
BASE = {"size": None, "batch": 16, "evals": 500, "n_steps": 50, "n_references": 1, "images": MAP_PASS_IMAGES}


class _Images:
    """A data module stand-in for the map pass: ``images [N,C,H,W]`` with labels ``i % 10``."""

    name, num_workers, source = "scaling", 0, "CIFAR-10 test images, resized"

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def preprocessing(self) -> str:
        return f"scaling {tuple(self.images.shape[1:])}"

    def map_dataset(self) -> _Tensors:
        return _Tensors(self.images)


def _model(backbone: str, size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    channels = 1 if backbone == "lenet5" else 3
    return create_backbone(backbone, 10, in_chans=channels, input_size=size).to(device).eval()


def explainer_cost(method: str, backbone: str, device: torch.device, repeats: int, size: int, batch: int,
                   evals: int, n_steps: int, **_: int) -> float:
    """Seconds per image of ``method`` (``"partition"`` at ``evals``, ``"ig"`` at ``n_steps``) on ``batch`` images."""
    model = _model(backbone, size, device)
    images, labels = make_batch(backbone, batch, device, size)[:2]
    options = {"max_evals": evals} if method == "partition" else {"n_steps": n_steps}
    explainer = create_explainer(method, **options)
    return best_time(lambda: explainer(model, images, labels), device, repeats=repeats) / batch


def prior_step_cost(backbone: str, device: torch.device, repeats: int, size: int, batch: int, n_references: int,
                    **_: int) -> float:
    """Seconds of one attribution-prior training step on ``batch`` images of ``size`` px."""
    module = build("attribution prior", backbone, device, input_size=size, n_references=n_references)
    step = step_fn(module, make_batch(backbone, batch, device, size), bf16=False)
    return best_time(step, device, repeats=repeats)


def map_pass_cost(backbone: str, device: torch.device, repeats: int, size: int, batch: int, evals: int,
                  images: int = MAP_PASS_IMAGES, **_: int) -> float:
    """Seconds per image of a whole map pass over ``images`` images, ``batch`` per explainer call."""
    model = _model(backbone, size, device)
    data = _Images(make_batch(backbone, images, torch.device("cpu"), size)[0])
    pass_seconds(model, data, batch, device, max_evals=evals)  # warm-up
    return min(pass_seconds(model, data, batch, device, max_evals=evals) for _ in range(repeats)) / images


def axis_rows(cost: str, fn: Callable[..., float], unit: str, axes: dict[str, list[int]],
              base: dict[str, int]) -> list[list[object]]:
    """One row per measured point: ``fn(**base with one axis changed)`` for every value of every axis."""
    rows = []
    for axis, values in axes.items():
        first_cost = None
        for value in values:
            seconds = fn(**{**base, axis: value})
            first_cost = first_cost or seconds
            setting = (value / values[0]) ** 2 if axis == "size" else value / values[0]
            rows.append([cost, axis, value, unit, f"{seconds:.4g}", f"{seconds / first_cost:.2f}", f"{setting:.2f}"])
            print(f"{cost} {axis}={value}: {seconds:.4g} {unit}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="lenet5", choices=["lenet5", "resnet18_cifar"])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes (default 32 64 128 LeNet-5, "
                        "16 32 64 ResNet-18)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--costs", nargs="+", default=["partition", "ig", "prior step", "map pass"])
    parser.add_argument("--quick", action="store_true", help="two points per axis, one repeat, small settings")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    sizes = args.sizes or ([32, 64, 128] if args.model == "lenet5" else [16, 32, 64])
    base = {**BASE, "size": sizes[0]}
    batches, evals, steps, refs = [1, 4, 16, 64], [250, 500, 1000, 2000], [10, 25, 50, 100], [1, 2, 4]
    if device.type == "cpu":
        batches = batches[:3]  # 64 images per call add nothing on 2 cores but minutes
    if args.quick:
        sizes, batches, evals, steps, refs = sizes[:2], [1, 4], [50, 100], [5, 10], [1, 2]
        base.update(batch=4, evals=50, n_steps=10, images=4)
        args.repeats = 1
    common = dict(backbone=args.model, device=device, repeats=args.repeats)
    plan = {
        "partition": (lambda **kw: explainer_cost("partition", **common, **kw), "s/image",
                      {"size": sizes, "batch": batches, "evals": evals}),
        "ig": (lambda **kw: explainer_cost("ig", **common, **kw), "s/image",
               {"size": sizes, "batch": batches, "n_steps": steps}),
        "prior step": (lambda **kw: prior_step_cost(**common, **kw), "s/step",
                       {"size": sizes, "batch": [b for b in batches if b > 1], "n_references": refs}),
        "map pass": (lambda **kw: map_pass_cost(**common, **kw), "s/image",
                     {"size": sizes, "batch": [b for b in batches if b <= base["images"]], "evals": evals[:3]}),
    }
    rows = []
    for cost in args.costs:
        fn, unit, axes = plan[cost]
        rows += axis_rows(cost, fn, unit, axes, base)
    print_table(f"Cost growth on {device_name(device)}, {args.model}, base point {base}, best of {args.repeats}",
                ["cost", "axis", "value", "unit", "cost", "x base", "x setting"], rows)


if __name__ == "__main__":
    main()
