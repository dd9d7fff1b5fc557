"""Average drop and increase in confidence (Chattopadhyay et al., Grad-CAM++, 2018, section 5.1)."""

from __future__ import annotations

import torch
from torch import nn

from impactx.core import eval_mode, forward_scores
from impactx.metrics.functional.validation import check_batch, check_chunk, check_maps, check_output_name


def explanation_mask(maps: torch.Tensor) -> torch.Tensor:
    """Saliency in ``[0, 1]``: ``relu(phi) / max(relu(phi))`` per image (0 where the map has no positive part).

    Grad-CAM++ applies this to ReLU'd, max-normalised Grad-CAM heatmaps; for signed maps the negative
    evidence is clipped away the same way.
    """
    pos = maps.clamp(min=0)
    peak = pos.reshape(pos.shape[0], -1).amax(dim=1).view(-1, 1, 1, 1)
    return torch.where(peak > 0, pos / peak.clamp(min=torch.finfo(pos.dtype).tiny), torch.zeros_like(pos))


def confidence_change(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    output: str = "prob",
    internal_batch_size: int | None = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``(drop [B], increase [B])`` in percent, with ``Y = f_c(x)`` and ``O = f_c(E o x)``.

    - drop: ``100 * max(0, Y - O) / Y`` (its mean over images is the *Average Drop %*, lower is better);
    - increase: ``100 * 1[Y < O]`` (its mean is the *% Increase in Confidence*, higher is better);

    where ``E`` = :func:`explanation_mask` of the map (``[B,1,H,W]`` maps act on all channels) and
    ``f_c`` the class probability (``output="prob"``, Grad-CAM++'s "confidence").
    """
    targets_t = check_batch(model, images, targets)
    maps = check_maps(images, maps)
    check_output_name(output)
    chunk = check_chunk(internal_batch_size)
    explained = images * explanation_mask(maps).to(images.dtype)
    with eval_mode(model):
        both = forward_scores(model, torch.cat([images, explained]), targets_t.repeat(2), output, chunk)
    full, masked = both.chunk(2)
    drop = 100.0 * (full - masked).clamp(min=0) / full
    increase = 100.0 * (full < masked).to(full.dtype)
    return drop, increase


def average_drop(
    model: nn.Module, images: torch.Tensor, targets, maps: torch.Tensor, **options
) -> torch.Tensor:
    """Per-image drop in confidence ``[B]`` (percent); see :func:`confidence_change`."""
    return confidence_change(model, images, targets, maps, **options)[0]


def increase_in_confidence(
    model: nn.Module, images: torch.Tensor, targets, maps: torch.Tensor, **options
) -> torch.Tensor:
    """Per-image increase indicator ``[B]`` (0 or 100); see :func:`confidence_change`."""
    return confidence_change(model, images, targets, maps, **options)[1]
