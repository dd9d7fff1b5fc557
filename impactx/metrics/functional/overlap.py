"""Overlap between the top of an attribution map and a ground-truth mask (weighted-IG paper, section 6)."""

from __future__ import annotations

import torch

from impactx.metrics.functional.map_options import prepare_maps
from impactx.metrics.functional.validation import check_int, check_masks


def overlap_curve(maps: torch.Tensor, masks: torch.Tensor, n_steps: int = 100, abs: bool = False,  # noqa: A002
                  normalise: bool = False) -> torch.Tensor:
    """Overlap curve ``[B, n_steps]``: ``Overlap(p_i) = |T_{p_i} ∩ S| / |T_{p_i}|``, ``p_i = i / N``, i = 1..N.

    ``S`` is the mask's pixel set, ``T_p`` the top ``t = ceil(p |S|)`` pixels of the map (summed over
    channels; ties to the lower flat index). The paper divides by ``p |S|``, which equals ``t`` whenever
    ``p |S|`` is a whole number; dividing by ``t`` keeps the value a fraction in ``[0, 1]`` otherwise.
    Images with an empty mask get a NaN row (the metric class skips them). ``Overlap(p)`` is Quantus'
    ``TopKIntersection`` at ``k = t``, and ``abs``, ``normalise`` are its options (rank ``|map|``; divide each map by
    its largest ``|value|``, which cannot change a ranking); Quantus' defaults are ``False`` and ``True``, ``False``
    here keeps today's numbers bit for bit.

    Args:
        maps: ``[B,C,H,W]`` or ``[B,1,H,W]`` attributions.
        masks: ``[B,1,H,W]`` or ``[B,H,W]``, nonzero inside the object.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 4:
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a [B,C,H,W] or [B,1,H,W] tensor, got {shape}")
    inside = check_masks(maps, masks)
    n = check_int("n_steps", n_steps)
    b = maps.shape[0]
    maps = prepare_maps(maps.detach(), abs, normalise)
    dtype = maps.dtype
    relevance = maps.sum(dim=1).reshape(b, -1)
    order = torch.argsort(-relevance, dim=1, stable=True)
    hits = inside.gather(1, order).cumsum(dim=1)
    size = inside.sum(dim=1, keepdim=True)
    i = torch.arange(1, n + 1, device=maps.device).view(1, -1)
    top = torch.div(i * size + n - 1, n, rounding_mode="floor").clamp(min=1)
    overlap = hits.gather(1, (top - 1).clamp(max=hits.shape[1] - 1)).to(dtype) / top
    return torch.where(size > 0, overlap, torch.full_like(overlap, torch.nan))


def overlap_auc(curve: torch.Tensor) -> torch.Tensor:
    """``AUC of Overlap = 1/N * sum_{i=1}^{N} Overlap(i / N)`` for ``curve [..., N]`` -> ``[...]``."""
    if curve.dim() < 1 or curve.shape[-1] < 1:
        raise ValueError(f"curve must have a last dimension of length N >= 1, got shape {list(curve.shape)}")
    return curve.mean(dim=-1)
