"""Neutral ("feature removed") values for perturbation: what a masked pixel is replaced by.

``neutral_images(x [B,C,H,W], kind) -> [B,C,H,W]``, one neutral image per input image:

- ``"zeros"``: all zeros (black in the model's input space);
- ``"corners"``: per image and channel, the mean of the four ``corner_size x corner_size`` corner patches
  (a background-colour estimate for centred objects);
- ``"blur"``: a Gaussian blur of the image (std ``blur_sigma`` pixels, kernel radius ``ceil(3 sigma)``
  truncated to fit the image, reflect padding).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Neutral = Literal["zeros", "corners", "blur"]
NEUTRALS: tuple[str, ...] = ("zeros", "corners", "blur")


def check_neutral(kind: str) -> None:
    if kind not in NEUTRALS:
        raise ValueError(f"neutral must be one of {NEUTRALS}, got {kind!r}")


def corner_mean(inputs: torch.Tensor, corner_size: int | None = None) -> torch.Tensor:
    """Mean of the four corner patches ``[B,C,1,1]`` of ``inputs [B,C,H,W]``.

    ``corner_size`` defaults to ``max(1, min(H, W) // 8)``; patches may overlap on tiny images.
    """
    height, width = inputs.shape[-2:]
    size = max(1, min(height, width) // 8) if corner_size is None else int(corner_size)
    if not 1 <= size <= min(height, width):
        raise ValueError(
            f"corner_size must lie in [1, {min(height, width)}] for {height}x{width} images, got {size}"
        )
    patches = torch.stack(
        [
            inputs[..., :size, :size],
            inputs[..., :size, width - size :],
            inputs[..., height - size :, :size],
            inputs[..., height - size :, width - size :],
        ]
    )  # [4, B, C, size, size]
    return patches.mean(dim=(0, 3, 4)).unsqueeze(-1).unsqueeze(-1)


def gaussian_kernel1d(sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised Gaussian weights ``[2 radius + 1]``."""
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``inputs [B,C,H,W]`` (each channel on its own), same shape."""
    if not sigma > 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    batch, channels, height, width = inputs.shape
    # Reflect padding needs radius < side; a wider kernel is truncated (it is nearly flat there anyway).
    radius = min(math.ceil(3 * sigma), height - 1, width - 1)
    if radius <= 0:
        return inputs.clone()
    kernel = gaussian_kernel1d(sigma, radius, inputs.dtype, inputs.device)
    x = F.pad(
        inputs.reshape(batch * channels, 1, height, width), (radius, radius, radius, radius), mode="reflect"
    )
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.view(batch, channels, height, width)


def neutral_images(
    inputs: torch.Tensor, kind: Neutral = "zeros", corner_size: int | None = None, blur_sigma: float = 3.0
) -> torch.Tensor:
    """The neutral image ``[B,C,H,W]`` of each input image (see the module docstring)."""
    check_neutral(kind)
    if inputs.dim() != 4:
        raise ValueError(f"inputs must have shape [B,C,H,W], got {list(inputs.shape)}")
    inputs = inputs.detach()
    if kind == "zeros":
        return torch.zeros_like(inputs)
    if kind == "corners":
        return corner_mean(inputs, corner_size).expand_as(inputs).contiguous()
    return gaussian_blur(inputs, blur_sigma)
