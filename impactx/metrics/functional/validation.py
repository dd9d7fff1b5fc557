"""Argument checks shared by the metric cores: each raises early, naming the bad value and what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from impactx.core import check_inputs, check_int, check_output


def check_batch(
    model: nn.Module | None, images: torch.Tensor, targets: torch.Tensor | int | None
) -> torch.Tensor | None:
    """Validate ``images [B,C,H,W]`` (and ``targets [B]`` when given); return targets as ``[B]`` long."""
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if targets is None:
        check_inputs(images, 0)
        return None
    num_classes = getattr(model, "num_classes", None)
    return check_inputs(images, targets, num_classes if isinstance(num_classes, int) else None)


def check_bool(name: str, value: object) -> bool:
    """A flag option (``abs``, ``normalise``, ``random_baseline``, ...) must be a bool, not a truthy stand-in."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_explainer(explainer: object) -> None:
    """An explainer for the metrics that re-explain inputs: a callable ``explainer(model, x, y) -> maps``."""
    if not callable(explainer):
        raise TypeError(f"explainer must be a callable explainer(model, x, y) -> map, got {type(explainer).__name__}")


def check_maps(images: torch.Tensor, maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """``maps`` must be ``[B,C,H,W]`` (one value per image entry) or ``[B,1,H,W]`` (one per pixel) for
    ``images [B,C,H,W]``; returned on the images' device as a floating tensor."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B,C,H,W] or [B,1,H,W], got {type(maps).__name__}")
    b, c, h, w = images.shape
    if (
        maps.dim() != 4
        or maps.shape[0] != b
        or maps.shape[2:] != images.shape[2:]
        or maps.shape[1] not in (1, c)
    ):
        raise ValueError(
            f"{name} must have shape [B,C,H,W]={[b, c, h, w]} or [B,1,H,W]={[b, 1, h, w]} to match the images, "
            f"got {list(maps.shape)}"
        )
    if not maps.is_floating_point():
        maps = maps.float()
    return maps.to(images.device)


def check_curve_inputs(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    output: str,
    internal_batch_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """The checks every perturbation curve starts with: returns ``(targets [B] long, maps, chunk)``
    (see :func:`check_batch`, :func:`check_maps`, :func:`check_chunk`); ``output`` is checked too."""
    targets_t = check_batch(model, images, targets)
    maps = check_maps(images, maps)
    check_output_name(output)
    return targets_t, maps, check_chunk(internal_batch_size)


def check_masks(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Ground-truth ``masks`` ``[B,1,H,W]`` or ``[B,H,W]`` (nonzero = object) -> bool ``[B,H*W]``."""
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor [B,1,H,W] or [B,H,W], got {type(masks).__name__}")
    b, _, h, w = maps.shape
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3 or masks.shape != (b, h, w):
        raise ValueError(f"masks must have shape [B,1,H,W] or [B,H,W] = {[b, h, w]}, got {list(masks.shape)}")
    return (masks != 0).reshape(b, -1).to(maps.device)


def check_chunk(internal_batch_size: int | None) -> int | None:
    if internal_batch_size is None:
        return None
    return check_int("internal_batch_size", internal_batch_size)


def check_patch_size(patch_size: object, height: int, width: int) -> int:
    """A square patch side that tiles ``height x width`` exactly (regions never overlap or spill over)."""
    check_int("patch_size", patch_size)
    if patch_size > min(height, width):
        raise ValueError(f"patch_size={patch_size} is larger than the image ({height}x{width})")
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"patch_size={patch_size} must divide the image height and width ({height}x{width}); "
            "choose a divisor so that regions tile the image"
        )
    return patch_size


def check_output_name(output: str) -> str:
    check_output(output)
    return output


def check_radius(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_noise_levels(levels: Sequence[float] | torch.Tensor) -> tuple[float, ...]:
    """Noise standard deviations: a non-empty 1-D sequence of finite numbers >= 0."""
    if isinstance(levels, torch.Tensor):
        if levels.dim() != 1:
            raise ValueError(f"noise_levels must be 1-D, got shape {list(levels.shape)}")
        levels = levels.tolist()
    if isinstance(levels, str) or not isinstance(levels, Sequence):
        raise ValueError(f"noise_levels must be a sequence of numbers >= 0, got {levels!r}")
    if len(levels) == 0:
        raise ValueError("noise_levels must hold at least one level, got an empty sequence")
    out = []
    for level in levels:
        if (
            isinstance(level, bool)
            or not isinstance(level, int | float)
            or not math.isfinite(level)
            or level < 0
        ):
            raise ValueError(f"noise_levels must be finite numbers >= 0, got {level!r} in {list(levels)}")
        out.append(float(level))
    return tuple(out)
