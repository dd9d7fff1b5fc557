"""The blur that shap's ``Image("blur(kx,ky)")`` masker puts in place of hidden features, in torch.

shap calls ``cv2.blur(image_hwc, (kx, ky))``: a normalised box filter, ``kx`` wide and ``ky`` tall,
anchored at ``(kx // 2, ky // 2)`` (so an even kernel reaches one pixel further up/left than
down/right), with OpenCV's default border ``BORDER_REFLECT_101`` (``dcb|abcdefgh|gfe``). For float32
images OpenCV sums in float64 and multiplies the sum by ``1 / (kx * ky)`` before rounding to float32;
:func:`box_blur` does the same, so it matches ``cv2.blur`` bit for bit on ordinary image data.

Blurring the normalised tensors the model sees equals normalising blurred pixel images (the box
filter is an average and per-channel normalisation is affine), up to float rounding; impactx blurs
the normalised inputs it is given, in both ``partition`` and ``shap_partition``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def default_blur_kernel(height: int, width: int) -> tuple[int, int]:
    """``(kernel_height, kernel_width)``: shap's usual ``blur(8,8)`` at 32x32, scaled with the image size."""
    return max(1, round(8 * height / 32)), max(1, round(8 * width / 32))


def resolve_blur_kernel(kernel: int | tuple[int, int] | None, height: int, width: int) -> tuple[int, int]:
    """Validate a ``blur_kernel`` option: ``None`` (scaled default), an int (square) or ``(kh, kw)``."""
    if kernel is None:
        return default_blur_kernel(height, width)
    if isinstance(kernel, bool):
        raise TypeError(f"blur_kernel must be None, an int or a (height, width) pair, got {kernel!r}")
    if isinstance(kernel, int):
        kernel = (kernel, kernel)
    if (
        not isinstance(kernel, tuple | list)
        or len(kernel) != 2
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in kernel)
    ):
        raise ValueError(
            f"blur_kernel must be None, a positive int or a (height, width) pair of them, got {kernel!r}"
        )
    return int(kernel[0]), int(kernel[1])


def reflect101_index(size: int, before: int, after: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Source indices ``[before + size + after]`` of OpenCV's ``BORDER_REFLECT_101`` padding.

    Follows ``cv::borderInterpolate``: reflections repeat when the padding is wider than the image, and
    a length-1 axis repeats its only element.
    """
    p = torch.arange(-before, size + after)  # built on the CPU: the loop's test would sync a device
    if size == 1:
        return torch.zeros_like(p).to(device)
    while bool(((p < 0) | (p >= size)).any()):
        p = torch.where(p < 0, -p, p)
        p = torch.where(p >= size, 2 * (size - 1) - p, p)
    return p.to(device)


def box_blur(images: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """``cv2.blur`` of every channel of ``images [B, C, H, W]`` with a ``kernel = (kh, kw)`` box.

    Returns ``[B, C, H, W]`` in the images' dtype, on their device (computed in float64).
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B,C,H,W], got {list(images.shape)}")
    kh, kw = kernel
    _, _, height, width = images.shape
    rows = reflect101_index(height, kh // 2, kh - 1 - kh // 2, images.device)
    cols = reflect101_index(width, kw // 2, kw - 1 - kw // 2, images.device)
    padded = images.to(torch.float64).index_select(2, rows).index_select(3, cols)
    # separable sums (exact in float64 for float32 data), then OpenCV's multiply-by-reciprocal
    sums = F.avg_pool2d(padded, (1, kw), stride=1, divisor_override=1)
    sums = F.avg_pool2d(sums, (kh, 1), stride=1, divisor_override=1)
    return (sums * (1.0 / (kh * kw))).to(images.dtype)
