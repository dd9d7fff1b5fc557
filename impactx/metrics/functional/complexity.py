"""Complexity of attribution maps (survey section 4): entropy and effective complexity, besides the Gini
sparseness of :mod:`impactx.metrics.functional.sparseness`."""

from __future__ import annotations

import torch

from impactx.metrics.functional.map_options import prepare_maps

__all__ = ["effective_complexity", "entropy_complexity"]


def entropy_complexity(maps: torch.Tensor, normalise: bool = False) -> torch.Tensor:
    """Shannon entropy ``[B]`` of each map's ``|phi| / sum |phi|`` over all entries (Bhatt et al., 2020; Quantus
    ``Complexity``): ``-sum p log(p + 1e-12)``. 0 for a one-hot map, ``log D`` for a uniform one; lower is
    simpler. ``normalise`` (by the max |value|) leaves it unchanged: the entropy is scale-free."""
    p = prepare_maps(maps, abs=True, normalise=normalise).flatten(1)
    p = p / p.sum(dim=1, keepdim=True)
    return -(p * torch.log(p + 1e-12)).sum(dim=1)


def effective_complexity(maps: torch.Tensor, eps: float = 1e-5, normalise: bool = False) -> torch.Tensor:
    """The number of entries with ``|phi| > eps`` ``[B]`` (Nguyen & Martinez, 2020; Quantus
    ``EffectiveComplexity``, which normalises by the max |value| first by default: ``normalise=True`` here)."""
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    a = prepare_maps(maps, abs=True, normalise=normalise).flatten(1)
    return (a > eps).sum(dim=1).to(a.dtype)
