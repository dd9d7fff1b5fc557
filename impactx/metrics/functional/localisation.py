"""Localisation of attribution maps against ground-truth object masks (survey section 4, "localisation").

Every function takes ``maps [B,C,H,W]`` (or ``[B,H,W]``) and boolean-like ``masks`` of one channel ``[B,1,H,W]``
(or ``[B,H,W]``, or of the maps' shape) and returns one value per image ``[B]``: NaN where a mask is empty (as
Quantus). Multi-channel maps against one-channel masks are summed over channels first (pixel attributions).
Quantus' options of the same names: ``abs`` (take ``|map|`` first) and ``normalise`` (divide each map by its
largest absolute value, Quantus' ``normalise_by_max``; an all-zero map is left as it is). Quantus divides all
the maps of a call by their common largest value, so its result depends on the other maps; here each map is
divided by its own, and a map scores the same in any batch.
"""

from __future__ import annotations

import torch

from impactx.metrics.functional.map_options import prepare_maps

__all__ = ["attribution_localisation", "pointing_game", "prepare_maps", "relevance_mass_accuracy",
           "relevance_rank_accuracy"]


def _flat_pair(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps [B,D], masks [B,D] bool)`` on the same pixels (``D = H*W``, or ``C*H*W`` for full-shape masks)."""
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"masks must be a tensor, got {type(masks).__name__}")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if maps.dim() != 4 or masks.dim() != 4 or masks.shape[0] != maps.shape[0] \
            or masks.shape[2:] != maps.shape[2:] or masks.shape[1] not in (1, maps.shape[1]):
        raise ValueError(f"masks {list(masks.shape)} do not fit maps {list(maps.shape)}: expected [B,1,H,W] or the "
                         "maps' shape")
    if masks.shape[1] == 1 and maps.shape[1] > 1:
        maps = maps.sum(dim=1, keepdim=True)
    return maps.flatten(1), masks.flatten(1).to(device=maps.device) != 0


def _nan_where_empty(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return torch.where(masks.any(dim=1), values, torch.full_like(values, float("nan")))


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, weighted: bool = False, abs: bool = False,  # noqa: A002
                  normalise: bool = False) -> torch.Tensor:
    """1 where the map's maximum lies in the mask (any of tied maxima), else 0 (Zhang et al., 2018; Quantus
    ``PointingGame``). ``weighted``: a hit scores ``1 - |mask| / D`` (small objects count more)."""
    a, s = _flat_pair(prepare_maps(maps, abs, normalise), masks)
    hit = (s & (a == a.amax(dim=1, keepdim=True))).any(dim=1).to(a.dtype)
    if weighted:
        hit = hit * (1 - s.sum(dim=1).to(a.dtype) / s.shape[1])
    return _nan_where_empty(hit, s)


def relevance_mass_accuracy(maps: torch.Tensor, masks: torch.Tensor, abs: bool = False,  # noqa: A002
                            normalise: bool = False) -> torch.Tensor:
    """``sum(map inside the mask) / sum(map)`` (Arras et al., 2022; Quantus ``RelevanceMassAccuracy``)."""
    a, s = _flat_pair(prepare_maps(maps, abs, normalise), masks)
    return _nan_where_empty((a * s).sum(dim=1) / a.sum(dim=1), s)


def relevance_rank_accuracy(maps: torch.Tensor, masks: torch.Tensor, abs: bool = False,  # noqa: A002
                            normalise: bool = False) -> torch.Tensor:
    """The fraction of the ``K = |mask|`` highest-ranked pixels that lie in the mask (Arras et al., 2022;
    Quantus ``RelevanceRankAccuracy``). Ties are ranked by a stable descending sort (first index first), as
    numpy's ``argsort(-a)`` does."""
    a, s = _flat_pair(prepare_maps(maps, abs, normalise), masks)
    order = torch.sort(-a, dim=1, stable=True).indices
    ranked_in_mask = s.gather(1, order)
    k = s.sum(dim=1, keepdim=True)
    top = torch.arange(a.shape[1], device=a.device).view(1, -1) < k
    return _nan_where_empty((ranked_in_mask & top).sum(dim=1).to(a.dtype) / k.clamp_min(1).squeeze(1), s)


def attribution_localisation(maps: torch.Tensor, masks: torch.Tensor, weighted: bool = False,
                             positive_attributions: bool = False, abs: bool = True,  # noqa: A002
                             normalise: bool = False) -> torch.Tensor:
    """The share of the (positive, or absolute) attribution inside the mask (Kohlbrenner et al., 2020; Quantus
    ``AttributionLocalisation``): ``sum(a * mask) / (sum(a) + 1e-9)``; NaN where it exceeds 1 (negative mass
    outside). ``weighted`` multiplies by ``|mask| / D``. Quantus computes that ratio with ``x_batch[2:].size``
    (the batch without its first two images) as ``D``, an indexing slip; here ``D`` is the pixels of one map."""
    prepared = prepare_maps(maps, abs, normalise)
    if positive_attributions:
        prepared = prepared.clamp_min(0)
    a, s = _flat_pair(prepared, masks)
    ratio = (a * s).sum(dim=1) / (a.sum(dim=1) + 1e-9)
    ratio = torch.where(ratio > 1, torch.full_like(ratio, float("nan")), ratio)
    if weighted:
        ratio = ratio * s.sum(dim=1).to(a.dtype) / s.shape[1]
    return _nan_where_empty(ratio, s)
