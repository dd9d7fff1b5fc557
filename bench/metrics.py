"""Benchmark: impactx's batched MoRF and deletion curves against Quantus on the same model, images and maps.

    python bench/metrics.py                       # CPU, LeNet-5 and a CIFAR ResNet-18
    python bench/metrics.py --device cuda --images 256

Settings shared by both implementations: 3x32x32 CIFAR-10 images (random ones if the archive is absent),
randomly initialised models, per-entry attribution maps (|gradient x input|), class probabilities,
constant-zero replacement. MoRF: 4x4 regions, all 64 of them, Quantus ``RegionPerturbation``.
Deletion: 48 steps of 64 entries (Quantus needs the step to divide H*W), Quantus ``PixelFlipping``. Prints images per second, the ratio
(impactx / Quantus) and the largest absolute difference between the two curves.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from bench.common import bench_model, best_time, cifar_images, device_name, print_table
from impactx.metrics.functional import Perturbation, deletion_curve, region_perturbation_curve

PATCH, REGIONS, DELETION_STEPS = 4, 64, 48


def gradient_x_input(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, y.view(-1, 1)).sum(), x)
    return (g * x).abs().detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet18_cifar"])
    parser.add_argument(
        "--batch", type=int, default=None, help="impactx's internal_batch_size (default 64 on CPU, 4096 on GPU)"
    )
    args = parser.parse_args()

    import quantus

    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    args.batch = args.batch or (4096 if device.type == "cuda" else 64)
    images, source = cifar_images(args.images, device)
    print(f"device: {device_name(device)}; {args.images} images: {source}")
    rows = []
    for name in args.models:
        model = bench_model(name, device)
        with torch.no_grad():
            targets = model(images).argmax(1)
        maps = gradient_x_input(model, images, targets)
        x_np, y_np, a_np = images.cpu().numpy(), targets.cpu().numpy(), maps.cpu().numpy()
        quantus_kwargs = dict(channel_first=True, softmax=True, device=str(device), batch_size=args.images)

        def ours_morf() -> torch.Tensor:
            return region_perturbation_curve(
                model, images, targets, maps, order="morf", patch_size=PATCH, n_steps=REGIONS,
                perturbation=Perturbation("constant", value=0.0), output="prob", internal_batch_size=args.batch,
            )

        morf_metric = quantus.RegionPerturbation(
            patch_size=PATCH, order="morf", regions_evaluation=REGIONS, perturb_baseline=0.0,
            normalise=False, abs=False, disable_warnings=True, display_progressbar=False,
        )

        def quantus_morf() -> np.ndarray:
            return np.asarray(morf_metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, **quantus_kwargs))

        def ours_deletion() -> torch.Tensor:
            return deletion_curve(
                model, images, targets, maps, n_steps=DELETION_STEPS, perturbation=Perturbation("constant", value=0.0),
                output="prob", internal_batch_size=args.batch,
            )

        step = images[0].numel() // DELETION_STEPS
        pixel_metric = quantus.PixelFlipping(
            features_in_step=step, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True,
            display_progressbar=False,
        )

        def quantus_deletion() -> np.ndarray:
            return np.asarray(pixel_metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, **quantus_kwargs))

        # Curves compared in true float32 (with TF32 convolutions, the CUDA default, they differ by ~1e-4
        # between batch compositions, which would hide a real disagreement); timed with the defaults.
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        curve = ours_morf().cpu()
        morf_diff = (curve[:, :1] - curve[:, 1:] - torch.from_numpy(quantus_morf()).float()).abs().max().item()
        curve = ours_deletion().cpu()
        del_diff = (curve[:, 1:] - torch.from_numpy(quantus_deletion()).float()).abs().max().item()
        torch.backends.cudnn.allow_tf32 = tf32
        for metric, ours, theirs, diff in (
            ("MoRF (64 regions)", ours_morf, quantus_morf, morf_diff),
            ("deletion (48 steps)", ours_deletion, quantus_deletion, del_diff),
        ):
            t_ours = best_time(ours, device)
            t_ref = best_time(theirs, device, repeats=2)
            rows.append([name, metric, args.images / t_ours, args.images / t_ref, t_ref / t_ours, f"{diff:.2e}"])
    print_table(
        "images per second (higher is better); ratio = impactx / Quantus",
        ["model", "metric", "impactx img/s", "Quantus img/s", "ratio", "max |diff|"],
        rows,
    )


if __name__ == "__main__":
    main()
