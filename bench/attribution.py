"""Benchmark: impactx's attribution methods against shap and Captum, and against the model's own speed limit.

    python bench/attribution.py                     # CPU: LeNet-5 and a CIFAR ResNet-18 on 32x32 images
    python bench/attribution.py --device cuda --scale 8

For each model it prints images per second of every method next to its reference, run in the same
process on the same images (CIFAR-10 test JPEGs when ../shared/data has them):

- ``partition`` (2000 evaluations) vs shap's ``PartitionExplainer`` (through ``shap_partition``, warmed);
- ``ig`` (50 steps) vs Captum ``IntegratedGradients`` (50 steps);
- ``eg`` (200 samples) vs Captum ``GradientShap`` (200 samples, no noise) and shap's ``GradientExplainer``;
- ``wg`` (8 baselines x 50 steps) and ``deepprior_eg`` (200 samples), with no outside reference.

``bound`` is the physical limit: images per second the model alone reaches for the same number of forward
(and backward) passes at its best batch size (256 or 2048); ``of bound`` = achieved / bound.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch

from bench.common import bench_model, cifar_images, device_name, forward_rate, print_table, synchronize
from impactx.attribution import create_explainer
from impactx.attribution.partition import expansion_evals

MAX_EVALS, IG_STEPS, EG_SAMPLES, WG_BASELINES = 2000, 50, 200, 8


def per_image_seconds(fn: Callable[[torch.Tensor, torch.Tensor], object], x, y, device, warm=True) -> float:
    """Wall seconds per image of ``fn(x, y)`` (after one warm-up call on the first images)."""
    if warm:
        fn(x[: min(2, len(x))], y[: min(2, len(y))])
    synchronize(device)
    start = time.perf_counter()
    fn(x, y)
    synchronize(device)
    return (time.perf_counter() - start) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet18_cifar"])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of images per method")
    parser.add_argument("--chunk", type=int, default=None, help="internal batch size (default 512 CPU, 8192 GPU)")
    parser.add_argument("--skip", nargs="*", default=[], help="method names to skip")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    chunk = args.chunk or (8192 if gpu else 512)
    pool, source = cifar_images(4096 if gpu else 512, device)
    print(f"device: {device_name(device)}; images: {source}; internal batch {chunk}")

    # Images per method and model: enough for a steady time, few where the method is slow on this device.
    counts = {
        "lenet5": {"partition": 128, "shap": 4, "grad": 64, "captum_gs": 16, "shap_grad": 4},
        "resnet18_cifar": {"partition": 2, "shap": 1, "grad": 4, "captum_gs": 2, "shap_grad": 1},
    }
    if gpu:
        counts = {
            "lenet5": {"partition": 1024, "shap": 8, "grad": 1024, "captum_gs": 64, "shap_grad": 8},
            "resnet18_cifar": {"partition": 128, "shap": 4, "grad": 128, "captum_gs": 16, "shap_grad": 4},
        }
    rows: list[list[object]] = []
    for name in args.models:
        model = bench_model(name, device)
        with torch.no_grad():
            labels = torch.cat([model(pool[i : i + 512]).argmax(1) for i in range(0, len(pool), 512)])
        background = pool[-64:]
        fwd = forward_rate(model, device, backward=False)
        fwdbwd = forward_rate(model, device, backward=True)
        rows.append([name, "model forward", "-", "-", f"{fwd:.0f}/s", "-", "-", "-"])
        rows.append([name, "model fwd+bwd", "-", "-", f"{fwdbwd:.0f}/s", "-", "-", "-"])
        n = {k: max(1, int(v * args.scale)) for k, v in counts.get(name, counts["resnet18_cifar"]).items()}

        def add(method: str, impl: str, seconds: float, bound: float, ref_seconds: float | None, images: int):
            rate = 1.0 / seconds
            ratio = f"{ref_seconds / seconds:.1f}x" if ref_seconds else "-"
            rows.append([name, method, impl, images, f"{rate:.3g}", ratio, f"{bound:.3g}", f"{rate / bound:.2f}"])
            return seconds

        def explainer_fn(method: str, **options) -> Callable:
            explainer = create_explainer(method, **options)
            return lambda x, y: explainer(model, x, y)

        # Partition SHAP: ours vs shap's PartitionExplainer (2000 evaluations per image, both warmed).
        bound = fwd / expansion_evals(MAX_EVALS)
        if "shap_partition" not in args.skip:
            k = n["shap"]
            ref = per_image_seconds(explainer_fn("shap_partition", max_evals=MAX_EVALS), pool[:k], labels[:k], device)
            add("partition", "shap PartitionExplainer", ref, bound, None, k)
        else:
            ref = None
        if "partition" not in args.skip:
            k = n["partition"]
            fn = explainer_fn("partition", max_evals=MAX_EVALS, internal_batch_size=chunk)
            secs = add("partition", "impactx", per_image_seconds(fn, pool[:k], labels[:k], device), bound, ref, k)
            if name == "lenet5":
                print(f"{name}: partition on the 50,000 CIFAR-10 training images would take {50000 * secs / 60:.1f} min")

        # Integrated Gradients: ours vs Captum (50 steps, trapezoid nodes on both sides... Gauss-Legendre).
        k = n["grad"]
        bound = fwdbwd / IG_STEPS
        from captum.attr import GradientShap, IntegratedGradients

        captum_ig = IntegratedGradients(model)
        ref = per_image_seconds(
            lambda x, y: captum_ig.attribute(x, target=y, n_steps=IG_STEPS, internal_batch_size=chunk),
            pool[:k], labels[:k], device,
        )
        add("ig", "Captum IntegratedGradients", ref, bound, None, k)
        fn = explainer_fn("ig", n_steps=IG_STEPS, internal_batch_size=chunk)
        add("ig", "impactx", per_image_seconds(fn, pool[:k], labels[:k], device), bound, ref, k)

        # Expected Gradients: ours vs Captum GradientShap (same estimator without noise) and shap's GradientExplainer.
        bound = fwdbwd / EG_SAMPLES
        kg = n["captum_gs"]
        captum_gs = GradientShap(model)
        ref = per_image_seconds(
            lambda x, y: captum_gs.attribute(x, baselines=background, target=y, n_samples=EG_SAMPLES, stdevs=0.0),
            pool[:kg], labels[:kg], device,
        )
        add("eg", "Captum GradientShap", ref, bound, None, kg)
        if "shap_gradient" not in args.skip:
            import shap

            ks = n["shap_grad"]
            shap_grad = shap.GradientExplainer(model, background)
            shap_ref = per_image_seconds(
                lambda x, y: shap_grad.shap_values(x, nsamples=EG_SAMPLES, ranked_outputs=1), pool[:ks], labels[:ks],
                device,
            )
            add("eg", "shap GradientExplainer", shap_ref, bound, None, ks)
        fn = explainer_fn("eg", background=background, n_samples=EG_SAMPLES, seed=0, internal_batch_size=chunk)
        add("eg", "impactx", per_image_seconds(fn, pool[:k], labels[:k], device), bound, ref, k)

        # Weighted IG and DeepPrior-EG: no outside implementation to compare with.
        wg = create_explainer(
            "wg", background=background, n_baselines=WG_BASELINES, n_steps=IG_STEPS, seed=0, internal_batch_size=chunk
        )
        search_steps = (32 * 32).bit_length()
        bound = 1.0 / (WG_BASELINES * IG_STEPS / fwdbwd + WG_BASELINES * (search_steps + 1) / fwd)
        add("wg", "impactx", per_image_seconds(lambda x, y: wg(model, x, y), pool[:k], labels[:k], device), bound, None, k)
        prior = create_explainer("deepprior_eg", background=background, n_samples=EG_SAMPLES, seed=0,
                                 internal_batch_size=chunk)
        prior.fit(model, pool[:256])
        bound = fwdbwd / EG_SAMPLES
        secs = per_image_seconds(lambda x, y: prior(model, x, y), pool[:k], labels[:k], device)
        add("deepprior_eg", "impactx", secs, bound, None, k)

    print_table(
        "attribution speed: images per second (x = speed-up over the reference above it); "
        "of bound = achieved / model-alone limit",
        ["model", "method", "implementation", "images", "img/s", "speed-up", "bound img/s", "of bound"],
        rows,
    )


if __name__ == "__main__":
    main()
