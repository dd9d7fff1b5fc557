"""Benchmark: the survey's gradient methods, the CAM family and ADVISE against their references, in one process.

    python -m bench.explainers                          # CPU: LeNet-5 (1x32x32) and ResNet-18 (3x32x32)
    python -m bench.explainers --device cuda --batch 128

Each row times one method on the same model, images and targets: impactx's batched call against the reference
library's (Captum, pytorch-grad-cam, PAIR's ``saliency``, the authors' ``path_explain``), and, where no library has
the method (ADVISE, AGI, boundary IG, NoiseGrad, FusionGrad), against the same algorithm called one image at a time
(the plainest faithful implementation; the authors' code loops over images). ``first s`` is the first call at this
batch (after the model has run once at every batch size of the row, and a 2-image call of impactx's method has paid
the process's lazy imports, which the reference would otherwise inherit), the others the best of ``--repeats`` warm
calls (more, up to 30, for calls of a few ms); ``x ref`` = reference time / impactx time
(above 1: impactx is faster), ``x ref first`` the same for first calls. The tests hold the maps' agreement. The
slow methods run on ``--small-batch`` images (the loops and per-image libraries on the same images). Models are
randomly initialised (seeded); images are CIFAR-10 test JPEGs where the archive is present (random otherwise).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

import numpy as np
import torch
import torch.fx

from bench.common import bench_model, cifar_images, device_name, print_table, synchronize
from impactx.attribution import create_explainer
from impactx.models import create_backbone

NOISE_SAMPLES = 8


def _captum(name: str, model: torch.nn.Module, layer: torch.nn.Module):
    from captum import attr

    # torchvision's ResNet block calls one ReLU module twice, which Captum's DeepLift refuses; LeNet-5 has none.
    unshared = _unshared_relus(model) if name == "deeplift" and _reuses_a_relu(model) else model
    return {
        "saliency": lambda x, t: attr.Saliency(model).attribute(x, target=t),
        "input_x_gradient": lambda x, t: attr.InputXGradient(model).attribute(x, target=t),
        "guided_backprop": lambda x, t: attr.GuidedBackprop(model).attribute(x, target=t),
        "deeplift": lambda x, t: attr.DeepLift(unshared).attribute(x, baselines=torch.zeros_like(x), target=t),
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


def _per_image(explainer):
    """The same explainer called one image at a time (the reference where no library has the method)."""
    def run(x, t):
        return torch.cat([explainer(explainer_model[0], x[i:i + 1], t[i:i + 1]) for i in range(x.shape[0])])

    return run


explainer_model: list[torch.nn.Module] = []


def _pair_saliency(name: str, model: torch.nn.Module, options: dict):
    """PAIR's ``saliency.core`` (numpy, channel-last, one image at a time; its model batch holds all the path's
    points, its fastest setting): ``BlurIG`` for blur IG, ``IntegratedGradients`` on the same straight path for
    IDGI (PAIR has no IDGI; IDGI reweights IG's path gradients, so the work is the same)."""
    import saliency.core as saliency_core

    def call_model(points, call_model_args=None, expected_keys=None):
        inputs = torch.as_tensor(points, dtype=torch.float32).permute(0, 3, 1, 2).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(inputs)[:, call_model_args["target"]].sum(), inputs)
        return {saliency_core.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}

    def run(x, t):
        maps = []
        for i in range(x.shape[0]):
            image, args = x[i].permute(1, 2, 0).cpu().numpy(), {"target": int(t[i])}
            if name == "blur_ig":
                mask = saliency_core.BlurIG().GetMask(image, call_model, call_model_args=args,
                                                      max_sigma=options["max_sigma"], steps=options["steps"],
                                                      batch_size=options["steps"])
            else:
                # IDGI's n steps score n + 1 points; PAIR's IG of x_steps = n + 1 takes as many gradients.
                mask = saliency_core.IntegratedGradients().GetMask(
                    image, call_model, call_model_args=args, x_steps=options["n_steps"] + 1,
                    x_baseline=np.zeros_like(image), batch_size=options["n_steps"] + 1)
            maps.append(mask)
        return torch.from_numpy(np.stack(maps))

    return run


def _path_explain(model: torch.nn.Module, n_steps: int, feature: int):
    """The authors' ``PathExplainerTorch.interactions`` for one feature's row ``Gamma_{i,:}`` (``interaction_index``;
    tabular inputs only, so the image model reads a flat vector). Its package ``__init__`` imports TensorFlow, so
    the file is loaded alone, as the tests do."""
    spec = importlib.util.find_spec("path_explain")
    path = f"{list(spec.submodule_search_locations)[0]}/explainers/path_explainer_torch.py"
    module_spec = importlib.util.spec_from_file_location("path_explainer_torch", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)

    def run(x, t):
        flat_model = torch.nn.Sequential(torch.nn.Unflatten(1, tuple(x.shape[1:])), model)
        flat = x.flatten(1).clone().requires_grad_(True)
        return module.PathExplainerTorch(flat_model).interactions(
            flat, torch.zeros_like(flat[:1]), num_samples=n_steps * n_steps, use_expectation=False,
            output_indices=t, interaction_index=feature, verbose=False)

    return run


def _reuses_a_relu(model: torch.nn.Module) -> bool:
    calls: dict[int, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
             for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    for hook in hooks:
        hook.remove()
    return any(n > 1 for n in calls.values())


def _unshared_relus(model: torch.nn.Module) -> torch.nn.Module:
    """The same network with one ReLU module per call (torch.fx), which Captum's DeepLift needs: torchvision's
    ResNet block calls its one ``relu`` twice. Same weights, same function."""
    graph = torch.fx.symbolic_trace(model)
    for n, node in enumerate(graph.graph.nodes):
        if node.op == "call_module" and isinstance(graph.get_submodule(node.target), torch.nn.ReLU):
            graph.add_submodule(f"relu_call_{n}", torch.nn.ReLU())
            node.target = f"relu_call_{n}"
    graph.recompile()
    return graph.eval()


def _timed(fn, device, clock) -> float:
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def _best(fn, device, clock, repeats: int, budget: float = 0.3) -> float:
    """Best of ``repeats`` calls, or of as many as fit ``budget`` seconds (at most 30) for calls of a few ms."""
    times = [_timed(fn, device, clock) for _ in range(repeats)]
    while sum(times) < budget and len(times) < 30:
        times.append(_timed(fn, device, clock))
    return min(times)


def _warm_model(model: torch.nn.Module, images: torch.Tensor) -> None:
    """A forward and an input gradient at each batch size the row uses, so that the first calls measure the
    methods' own set-up, not the one-off set-up of the model's kernels at a new shape (which would go to whichever
    side runs first)."""
    for n in sorted({images.shape[0], 1, 2}):
        for x in (images[:n], images[:n].contiguous(memory_format=torch.channels_last)):
            x = x.detach().requires_grad_(True)
            torch.autograd.grad(model(x)[:, 0].sum(), x)


def cases(device: torch.device, batch: int) -> list[tuple[str, torch.nn.Module, torch.Tensor, str]]:
    images, _ = cifar_images(batch, device)
    torch.manual_seed(0)
    lenet = create_backbone("lenet5", num_classes=10, in_chans=3, input_size=32).to(device).eval()
    resnet = bench_model("resnet18_cifar", device)
    return [("LeNet-5", lenet, images, None), ("ResNet-18", resnet, images, None)]


def _plan(batch: int, small: int) -> list[tuple[str, dict, str, object, int]]:
    """Rows ``(method, options, reference name, reference builder, images)``; a builder takes ``(name, model,
    layer, options)`` and returns ``reference(x, t)``. ``layer: None`` becomes the model's last convolution."""
    captum = lambda name, model, layer, options: _captum(name, model, layer)  # noqa: E731
    grad_cam = lambda name, model, layer, options: _grad_cam(name, model, layer)  # noqa: E731
    pair = lambda name, model, layer, options: _pair_saliency(name, model, options)  # noqa: E731
    loop = lambda name, model, layer, options: _per_image(create_explainer(name, **options))  # noqa: E731
    hessian = lambda name, model, layer, options: _path_explain(model, options["n_steps"], HESSIAN_FEATURE)  # noqa: E731
    plan = [(n, {}, "Captum", captum, batch) for n in ("saliency", "input_x_gradient", "guided_backprop", "deeplift")]
    plan += [("smoothgrad", {"n_samples": NOISE_SAMPLES, "stdev": 0.15}, "Captum", captum, batch)]
    plan += [(n, {"layer": None}, "Captum", captum, batch) for n in ("gradcam", "guided_gradcam")]
    plan += [("gradcam_pp", {"layer": None}, "pytorch-grad-cam", grad_cam, batch),
             ("scorecam", {"layer": None}, "pytorch-grad-cam", grad_cam, small),
             ("fullgrad", {}, "pytorch-grad-cam", grad_cam, batch),
             ("blur_ig", {"max_sigma": 50.0, "steps": 16}, "PAIR saliency BlurIG", pair, small),
             ("idgi", {"n_steps": 15}, "PAIR saliency IntegratedGradients (no IDGI)", pair, small),
             ("integrated_hessians", {"n_steps": 4}, "path_explain interactions, one row", hessian, small),
             ("agi", {"eps": 0.05, "max_iter": 10, "n_classes": 5}, "per-image loop (no library)", loop, small),
             ("boundary_ig", {"steps": 10, "n_steps": 16}, "per-image loop (no library)", loop, small),
             ("noisegrad", {"n_models": 4}, "per-image loop (no library)", loop, small),
             ("fusiongrad", {"n_models": 4, "n_samples": 4}, "per-image loop (no library)", loop, small),
             ("advise", {"layer": None}, "per-image loop (no library)", loop, batch)]
    return plan


#: The feature whose interaction row integrated Hessians computes (path_explain's ``interaction_index``).
HESSIAN_FEATURE = 100


def _ours(name: str, options: dict):
    """impactx's call for one row (integrated Hessians: the same row as the reference, ``interaction_pairs``)."""
    if name == "integrated_hessians":
        from impactx.attribution.hessians import interaction_pairs

        def run(model, x, t):
            pairs = [(HESSIAN_FEATURE, j) for j in range(x[0].numel())]
            return interaction_pairs(model, x, t, pairs, n_steps=options["n_steps"])

        return run
    return create_explainer(name, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--small-batch", type=int, default=4, help="images for the slow methods and references")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (for a shared, overloaded machine; use with "
                             "--threads 1, where it is the wall time of an idle core)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--methods", nargs="*", default=None, help="names to run (default: all)")
    parser.add_argument("--models", nargs="*", default=None, help="LeNet-5 and/or ResNet-18 (default: both)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    warnings.filterwarnings("ignore")
    rows = []
    for model_name, model, all_images, layer_name in cases(device, args.batch):
        if args.models and model_name not in args.models:
            continue
        with torch.no_grad():
            all_targets = model(all_images).argmax(dim=1)
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        layer_name = layer_name or convs[-1]
        layer = dict(model.named_modules())[layer_name]
        explainer_model[:] = [model]
        for name, options, reference_name, reference_of, n_images in _plan(args.batch, args.small_batch):
            if args.methods and name not in args.methods:
                continue
            options = {k: (layer_name if k == "layer" else v) for k, v in options.items()}
            images, targets = all_images[:n_images], all_targets[:n_images]
            # PAIR hands the model channel-last arrays (a 2x faster layout for LeNet-5's convolutions on a CPU):
            # impactx gets the same layout there, which its path methods keep.
            our_images = images.contiguous(memory_format=torch.channels_last) if reference_name.startswith(
                "PAIR") else images
            ours_fn = _ours(name, options)
            ours = lambda e=ours_fn, x=our_images, t=targets: e(model, x, t)  # noqa: E731
            reference = reference_of(name, model, layer, options)
            scale = 1.0
            ref_images, ref_targets = images, targets
            if name == "advise" and n_images > 8:
                ref_images, ref_targets = images[:8], targets[:8]  # the loop is slow: 8 images, scaled
                scale = n_images / 8
            ref_fn = lambda r=reference, x=ref_images, t=ref_targets: r(x, t)  # noqa: E731
            _warm_model(model, images)
            _ours(name, options)(model, all_images[-2:], all_targets[-2:])  # the process's lazy set-up
            first = _timed(ours, device, clock)
            ref_first = _timed(ref_fn, device, clock) * scale
            warm = _best(ours, device, clock, args.repeats)
            ref_warm = _best(ref_fn, device, clock, args.repeats) * scale
            rows.append([model_name, name, reference_name, n_images, f"{first:.3f}", f"{warm:.4f}",
                         f"{ref_warm:.4f}", ref_warm / warm, f"{ref_first:.3f}", ref_first / first])
            print(f"{model_name} {name}: {ref_warm / warm:.2f}x warm, {ref_first / first:.2f}x first", flush=True)
    print_table(f"Explainers vs their references, {device_name(device)}, {args.clock} seconds",
                ["model", "method", "reference", "images", "first s", "warm s", "ref warm s", "x ref",
                 "ref first s", "x ref first"], rows)


if __name__ == "__main__":
    main()
