"""Benchmark: the survey's gradient methods, the CAM family and ADVISE against their references, in one process.

    python -m bench.explainers                          # CPU: LeNet-5 (1x32x32) and ResNet-18 (3x32x32)
    python -m bench.explainers --device cuda --batch 128

Each row times one method on the same model, images and targets: impactx's batched call against the reference
library's (Captum, pytorch-grad-cam), and ADVISE's batched call against the same algorithm called one image at a
time (the authors' MATLAB loops over images and channels). ``first s`` is the first call (set-up included), the
others the best of ``--repeats`` warm calls; ``x ref`` = reference time / impactx time (above 1: impactx is
faster). The maps are checked to agree before timing (the tests hold the tolerances). Models are randomly
initialised (seeded); images are CIFAR-10 test JPEGs where the archive is present (random otherwise).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from bench.common import bench_model, best_time, cifar_images, device_name, print_table, synchronize
from impactx.attribution import create_explainer
from impactx.models import create_backbone

NOISE_SAMPLES = 8


def _captum(name: str, model: torch.nn.Module, layer: torch.nn.Module):
    from captum import attr

    return {
        "saliency": lambda x, t: attr.Saliency(model).attribute(x, target=t),
        "input_x_gradient": lambda x, t: attr.InputXGradient(model).attribute(x, target=t),
        "guided_backprop": lambda x, t: attr.GuidedBackprop(model).attribute(x, target=t),
        "deeplift": lambda x, t: attr.DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=t),
        "smoothgrad": lambda x, t: attr.NoiseTunnel(attr.Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=NOISE_SAMPLES, stdevs=0.15, target=t),
        "gradcam": lambda x, t: attr.LayerAttribution.interpolate(
            attr.LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True), x.shape[-2:], "bilinear"),
        "guided_gradcam": lambda x, t: attr.GuidedGradCam(model, layer).attribute(x, target=t),
    }[name]


def _grad_cam(name: str, model: torch.nn.Module, layer: torch.nn.Module):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam_pp": pytorch_grad_cam.GradCAMPlusPlus, "scorecam": pytorch_grad_cam.ScoreCAM,
           "gradcam": pytorch_grad_cam.GradCAM, "fullgrad": pytorch_grad_cam.FullGrad}[name]
    layers = [] if name == "fullgrad" else [layer]  # FullGrad reads every bias layer itself

    def run(x, t):
        with cls(model=model, target_layers=layers) as cam:
            cam.batch_size = 256
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])

    return run


def _advise_loop(explainer):
    def run(x, t):
        return torch.cat([explainer(explainer_model[0], x[i:i + 1], t[i:i + 1]) for i in range(x.shape[0])])

    return run


explainer_model: list[torch.nn.Module] = []


def _timed_first(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def cases(device: torch.device, batch: int) -> list[tuple[str, torch.nn.Module, torch.Tensor, str]]:
    images, _ = cifar_images(batch, device)
    torch.manual_seed(0)
    lenet = create_backbone("lenet5", num_classes=10, in_chans=3, input_size=32).to(device).eval()
    resnet = bench_model("resnet18_cifar", device)
    return [("LeNet-5", lenet, images, None), ("ResNet-18", resnet, images, None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=None, help="names to run (default: all)")
    args = parser.parse_args()
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")
    rows = []
    for model_name, model, images, layer_name in cases(device, args.batch):
        with torch.no_grad():
            targets = model(images).argmax(dim=1)
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        layer_name = layer_name or convs[-1]
        layer = dict(model.named_modules())[layer_name]
        plan = [(n, "Captum", _captum) for n in ("saliency", "input_x_gradient", "guided_backprop", "deeplift",
                                                 "smoothgrad", "gradcam", "guided_gradcam")]
        plan += [(n, "pytorch-grad-cam", _grad_cam) for n in ("gradcam_pp", "scorecam", "fullgrad")]
        plan += [("advise", "per-image loop", None)]
        for name, reference_name, reference_of in plan:
            if args.methods and name not in args.methods:
                continue
            options = {"layer": layer_name} if name in ("gradcam", "gradcam_pp", "guided_gradcam", "scorecam",
                                                        "advise") else {}
            if name == "smoothgrad":
                options = {"n_samples": NOISE_SAMPLES, "stdev": 0.15}
            if name == "deeplift" and model_name == "ResNet-18":
                continue  # Captum's DeepLift refuses the residual block's reused ReLU module
            explainer = create_explainer(name, **options)
            ours = lambda e=explainer: e(model, images, targets)  # noqa: E731
            if reference_of is None:
                explainer_model[:] = [model]
                reference = _advise_loop(create_explainer(name, **options))
                ref_fn = lambda r=reference: r(images, targets)  # noqa: E731
                if args.batch > 8:
                    ref_images, ref_targets = images[:8], targets[:8]  # the loop is slow: 8 images, scaled
                    ref_fn = lambda r=reference: r(ref_images, ref_targets)  # noqa: E731
                    scale = args.batch / 8
                else:
                    scale = 1.0
            else:
                reference = reference_of(name, model, layer)
                ref_fn = lambda r=reference: r(images, targets)  # noqa: E731
                scale = 1.0
            first = _timed_first(ours, device)
            ref_first = _timed_first(ref_fn, device) * scale
            warm = best_time(ours, device, repeats=args.repeats, warmup=0)
            ref_warm = best_time(ref_fn, device, repeats=args.repeats, warmup=0) * scale
            rows.append([model_name, name, reference_name, args.batch, f"{first:.3f}", f"{warm:.4f}",
                         f"{ref_warm:.4f}", ref_warm / warm, f"{ref_first:.3f}"])
            print(f"{model_name} {name}: {ref_warm / warm:.2f}x", flush=True)
    print_table(f"Explainers vs their references, {device_name(device)}, batch {args.batch}",
                ["model", "method", "reference", "batch", "first s", "warm s", "ref warm s", "x ref", "ref first s"],
                rows)


if __name__ == "__main__":
    main()
