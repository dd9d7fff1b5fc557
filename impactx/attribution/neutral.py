"""Neutral ("feature removed") values for perturbation: what a masked pixel is replaced by.

``neutral_images(x [B,C,H,W], kind) -> [B,C,H,W]``, one neutral image per input image:

- ``"zeros"``: all zeros (black in the model's input space);
- ``"corners"``: per image and channel, the mean of the four ``corner_size x corner_size`` corner patches
  (a background-colour estimate for centred objects);
- ``"blur"``: a Gaussian blur of the image (std ``blur_sigma`` pixels, kernel radius ``ceil(3 sigma)``
  truncated to fit the image, reflect padding).
"""

from __future__ import annotations

from typing import Literal

import torch

from impactx.core import gaussian_blur

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
    return gaussian_blur(inputs, blur_sigma, padding="reflect")
