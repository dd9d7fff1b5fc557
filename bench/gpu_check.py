"""GPU correctness: every registered method gives the same maps on CUDA as on the CPU.

    python bench/gpu_check.py            # needs a CUDA device

Same model weights, same float32 images and targets on both devices. For each method it prints the largest
absolute difference relative to the largest CPU attribution, and the lowest per-image Pearson correlation.
"""

from __future__ import annotations

import warnings

import torch

from bench.common import bench_model, cifar_images, device_name, print_table
from impactx.attribution import available, create_explainer


def pearson_min(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1).div(a.norm(dim=1) * b.norm(dim=1) + 1e-30).min().item()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU")
    parser.add_argument("--max-evals", type=int, default=2000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    # Compare true float32 on both sides: cuDNN convolutions default to TF32 on Ampere and newer.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cuda = torch.device(args.device)
    cpu = torch.device("cpu")
    images, source = cifar_images(16, cpu)
    print(f"device: {device_name(cuda)}; images: {source}")
    options = {
        "ig": {"n_steps": 50},
        "eg": {"n_samples": 200, "seed": 0},
        "wg": {"n_baselines": 8, "n_steps": 32, "seed": 0},
        "deepprior_eg": {"n_samples": 200, "seed": 0},
        "partition": {"max_evals": args.max_evals},
    }
    needs_background = {"eg", "wg", "deepprior_eg"}
    rows = []
    for name in ("lenet5", "resnet18_cifar"):
        model_cpu = bench_model(name, cpu)
        model_gpu = bench_model(name, cuda)
        x = images[:8] if name == "lenet5" else images[:4]
        with torch.no_grad():
            y = model_cpu(x).argmax(1)
        background = images[8:]
        for method in available():
            if method not in options:
                continue
            kwargs = dict(options[method])
            if method in needs_background:
                kwargs["background"] = background
            a_cpu = create_explainer(method, **kwargs)(model_cpu, x, y)
            if method in needs_background:
                kwargs["background"] = background.to(cuda)
            a_gpu = create_explainer(method, **kwargs)(model_gpu, x.to(cuda), y.to(cuda)).cpu()
            rel = ((a_gpu - a_cpu).abs().max() / a_cpu.abs().max()).item()
            rows.append([name, method, f"{rel:.2e}", f"{pearson_min(a_cpu, a_gpu):.6f}"])
    print_table(f"{args.device} vs CPU maps (float32)", ["model", "method", "max |diff| / max |cpu|", "min Pearson r"], rows)


if __name__ == "__main__":
    main()
