"""Benchmark: explaining every class of an image in one call (``target [B,T]``) against ``T`` single-target calls.

    python -m bench.multi_target                       # CPU: LeNet-5 (3x32x32), 2 images, all 10 classes
    python -m bench.multi_target --device cuda --images 64

Rows, on the same model, images and classes, in one process:

- Partition SHAP (``--max-evals`` per image): ten single-target calls of ``partition``; one ``[B,10]`` call
  (each (image, class) pair on its own, the same values); one ``[B,10]`` call with ``joint_targets=True``
  (shap's multi-output Owen values: one queue per image, every masked image read for all ten classes); and
  shap's own multi-output ``PartitionExplainer`` (``shap_partition`` with ``joint_targets=True``).
- IG (``--steps``): ten single-target calls, one ``[B,10]`` call, and Captum's ``IntegratedGradients`` on the
  batch repeated ten times with one target per row.

``x single`` = time of the ten single-target calls of the same method / the row's time (above 1: faster);
``max |diff|`` compares the row's maps with its reference (the single calls, or shap's multi-output values for
the joint row). Models are randomly initialised (seeded); images are CIFAR-10 test JPEGs where the archive is
present (random otherwise).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from bench.common import bench_model, best_time, cifar_images, device_name, print_table
from impactx.attribution import create_explainer


def _rows(name: str, images: torch.Tensor, classes: int, device: torch.device, repeats: int,
          runs: list[tuple[str, Callable[[], torch.Tensor], Callable[[], torch.Tensor] | None]]) -> list[list]:
    """Time each ``(implementation, run, reference)``; the first run is the ten single-target calls."""
    table, single_time, single_maps = [], None, None
    for label, run, reference in runs:
        maps = run()
        seconds = best_time(run, device, repeats=repeats, warmup=0)
        if single_time is None:
            single_time, single_maps = seconds, maps
        expected = single_maps if reference is None else reference()
        diff = (maps.double() - expected.double()).abs().max().item()
        table.append([name, label, images.shape[0], classes, f"{seconds:.3g}",
                      f"{images.shape[0] * classes / seconds:.3g}", f"{single_time / seconds:.2f}x", f"{diff:.1e}"])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    model = bench_model("lenet5", device)
    x, source = cifar_images(args.images, device)
    classes = 10
    every_class = torch.arange(classes, device=device).expand(x.shape[0], classes)

    def singles(explainer) -> Callable[[], torch.Tensor]:
        return lambda: torch.stack([explainer(model, x, t) for t in range(classes)], dim=1)

    partition = create_explainer("partition", max_evals=args.max_evals)
    joint = create_explainer("partition", max_evals=args.max_evals, joint_targets=True)
    shap_joint = create_explainer("shap_partition", max_evals=args.max_evals, joint_targets=True)
    shap_maps: list[torch.Tensor] = []

    def shap_run() -> torch.Tensor:
        shap_maps[:] = [shap_joint(model, x, every_class)]
        return shap_maps[0]

    table = _rows("partition", x, classes, device, 1, [
        ("impactx, 10 single-target calls", singles(partition), None),
        ("impactx, one [B,10] call", lambda: partition(model, x, every_class), None),
        ("shap, multi-output (joint)", shap_run, None),
        ("impactx, [B,10] joint_targets", lambda: joint(model, x, every_class), lambda: shap_maps[0]),
    ])

    ig = create_explainer("ig", n_steps=args.steps)

    def captum_ig() -> torch.Tensor:
        from captum.attr import IntegratedGradients

        repeated = x.repeat_interleave(classes, dim=0)
        maps = IntegratedGradients(model).attribute(repeated, baselines=0.0, target=every_class.reshape(-1),
                                                    n_steps=args.steps, method="gausslegendre")
        return maps.view(x.shape[0], classes, *x.shape[1:])

    table += _rows("ig", x, classes, device, args.repeats, [
        ("impactx, 10 single-target calls", singles(ig), None),
        ("impactx, one [B,10] call", lambda: ig(model, x, every_class), None),
        ("Captum, repeated batch, per-row target", captum_ig, None),
    ])
    print_table(
        f"LeNet-5 (3x32x32), all {classes} classes, partition max_evals {args.max_evals}, ig n_steps "
        f"{args.steps}, on {device_name(device)}; {source}",
        ["method", "implementation", "images", "classes", "s", "(image, class)/s", "x single", "max |diff|"],
        table,
    )


if __name__ == "__main__":
    main()
