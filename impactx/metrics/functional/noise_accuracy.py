"""Accuracy under additive Gaussian noise: a robustness curve of the model (DeepPrior-EG paper, 4.3.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from impactx.core import eval_mode, image_keys, keyed_normal
from impactx.metrics.functional.validation import check_batch, check_chunk, check_noise_levels

DEFAULT_NOISE_LEVELS: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(11))

_GAUSS_STREAMS = (31, 32)


def gaussian_noise(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Standard normal noise ``[B,C,H,W]`` (Box-Muller on keyed uniforms): a function of (image, ``seed``)
    only, so an image gets the same draw alone, in any batch and on any DDP rank."""
    z = keyed_normal(image_keys(images, seed), images[0].numel(), _GAUSS_STREAMS)
    return z.to(images.dtype).view(images.shape)


@torch.no_grad()
def noise_accuracy_curve(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    noise_levels: Sequence[float] | torch.Tensor = DEFAULT_NOISE_LEVELS,
    seed: int = 0,
    clamp: tuple[float, float] | None = None,
    internal_batch_size: int | None = 128,
) -> torch.Tensor:
    """Correctness ``[B, L]`` (1.0 / 0.0) of ``argmax f(x + sigma_l * z) == y`` for each noise level ``sigma_l``.

    ``z`` = :func:`gaussian_noise` is shared by all levels of an image (common random numbers, so the curve
    is smooth in sigma); ``clamp=(low, high)`` clips noisy images to the valid input range. The mean over
    images is test accuracy at each level (default levels 0, 0.1, ..., 1.0, in input units).
    """
    targets_t = check_batch(model, images, targets)
    levels = torch.tensor(check_noise_levels(noise_levels), dtype=images.dtype, device=images.device)
    chunk = check_chunk(internal_batch_size)
    b, n_levels = images.shape[0], levels.numel()
    z = gaussian_noise(images, seed)
    total = b * n_levels
    step = total if not chunk else chunk
    correct = []
    with eval_mode(model):
        for start in range(0, total, step):
            q = torch.arange(start, min(total, start + step), device=images.device)
            img, level = q // n_levels, q % n_levels
            x = images[img] + levels[level].view(-1, 1, 1, 1) * z[img]
            if clamp is not None:
                x = x.clamp(float(clamp[0]), float(clamp[1]))
            logits = model(x)
            correct.append((logits.argmax(dim=1) == targets_t[img]).to(images.dtype))
    return torch.cat(correct).view(b, n_levels)
