"""Quantus' ``abs`` and ``normalise`` options, shared by every metric that offers them.

``abs`` takes ``|map|``; ``normalise`` then divides each map by its largest ``|value|`` (Quantus'
``normalise_by_max``; an all-zero map is left as it is). Quantus divides all the maps of a call by their common
largest value, so its result depends on the other maps; here each map is divided by its own.
"""

from __future__ import annotations

import torch

from impactx.metrics.functional.validation import check_bool

__all__ = ["prepare_maps"]


def prepare_maps(maps: torch.Tensor, abs: bool = False, normalise: bool = False) -> torch.Tensor:  # noqa: A002
    """``maps [B, ...]`` as float ``[B, ...]`` with Quantus' ``abs`` then ``normalise`` (by the max |value|)."""
    if not isinstance(maps, torch.Tensor) or maps.dim() < 2:
        raise ValueError(f"maps must be a [B, ...] tensor, got {getattr(maps, 'shape', type(maps).__name__)}")
    check_bool("abs", abs)
    check_bool("normalise", normalise)
    maps = maps if maps.is_floating_point() else maps.float()
    if abs:
        maps = maps.abs()
    if normalise:
        scale = maps.flatten(1).abs().amax(dim=1).view(-1, *([1] * (maps.dim() - 1)))
        maps = torch.where(scale > 0, maps / torch.where(scale > 0, scale, torch.ones_like(scale)), maps)
    return maps
