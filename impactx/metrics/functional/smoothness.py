"""Smoothness of an attribution map: its anisotropic total variation (Erion et al., 2021, Eq. 26 of the
DeepPrior-EG paper), optionally of the per-image standardised map (as the attribution-priors MNIST code does
with ``tf.image.per_image_standardization`` before ``tf.image.total_variation``)."""

from __future__ import annotations

import math

import torch


def standardise_per_image(maps: torch.Tensor, min_std: float | None = None) -> torch.Tensor:
    """``(phi - mean) / max(std, min_std)`` over all ``d`` entries of each map ``[B, ...]``, the population std.

    ``min_std=None`` is ``tf.image.per_image_standardization``'s floor ``1 / sqrt(d)``: it keeps a constant map
    finite, but a map whose std is below it is only centred, not rescaled (attributions of a model with small
    gradients then score small). A tiny ``min_std`` (e.g. ``1e-12``) makes the result scale-free. Differentiable.
    """
    flat = maps.reshape(maps.shape[0], -1)
    d = flat.shape[1]
    floor = 1.0 / math.sqrt(d) if min_std is None else float(min_std)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True, correction=0).clamp_min(floor)
    return ((flat - mean) / std).reshape(maps.shape)


def total_variation(maps: torch.Tensor, standardise: bool = False, min_std: float | None = None) -> torch.Tensor:
    """Total variation ``[B]`` of maps ``[B, C, H, W]``, summed over channels and positions:

    ``TV(phi) = sum_{c,i,j} |phi_{c,i+1,j} - phi_{c,i,j}| + |phi_{c,i,j+1} - phi_{c,i,j}|``

    (``tf.image.total_variation``'s definition). ``standardise``: of :func:`standardise_per_image`
    ``(phi, min_std)``, independent of the map's offset and (above the floor) of its scale. Differentiable;
    lower is smoother.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 4:
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a [B, C, H, W] tensor, got {shape}")
    if not maps.is_floating_point():
        maps = maps.float()
    if standardise:
        maps = standardise_per_image(maps, min_std)
    vertical = (maps[:, :, 1:, :] - maps[:, :, :-1, :]).abs().sum(dim=(1, 2, 3))
    horizontal = (maps[:, :, :, 1:] - maps[:, :, :, :-1]).abs().sum(dim=(1, 2, 3))
    return vertical + horizontal
