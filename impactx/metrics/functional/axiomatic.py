"""Axiomatic checks of attribution maps (survey section 4): completeness."""

from __future__ import annotations

import torch
from torch import nn

from impactx.core import eval_mode, forward_scores
from impactx.metrics.functional.validation import check_batch, check_maps, check_output_name

__all__ = ["completeness_gap"]


def completeness_gap(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    baseline: float | torch.Tensor = 0.0,
    output: str = "logit",
    relative: bool = False,
) -> torch.Tensor:
    """``|sum(phi) - (f(x) - f(x'))|`` per image -> ``[B]`` (Sundararajan et al., 2017), ``x'`` the ``baseline`` (a
    number or a tensor broadcastable to the images, in the model's input units); ``relative`` divides by
    ``|f(x) - f(x')|``. 0 for a complete method (IG, EG, DeepLIFT, IDGI from the same baseline). Quantus'
    ``Completeness`` tests ``sum(phi) == f(x) - f(x')`` with float equality, which almost never holds; the gap
    says by how much it fails."""
    targets_t = check_batch(model, images, targets)
    check_output_name(output)
    maps = check_maps(images, maps).detach()
    reference = torch.as_tensor(baseline, dtype=images.dtype, device=images.device).expand_as(images)
    with eval_mode(model):
        gap = forward_scores(model, images, targets_t, output) - forward_scores(model, reference, targets_t, output)
    difference = (maps.flatten(1).sum(dim=1).to(gap.dtype) - gap).abs()
    return difference / gap.abs().clamp_min(1e-12) if relative else difference
