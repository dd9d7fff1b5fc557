"""Sparseness of an attribution map: the Gini index (Chalasani et al., 2020; as Quantus ``Sparseness``)."""

from __future__ import annotations

import torch

from impactx.metrics.functional.map_options import prepare_maps


def sparseness(maps: torch.Tensor, eps: float = 1e-7, abs: bool = True, normalise: bool = False) -> torch.Tensor:  # noqa: A002
    """Gini index ``[B]`` of ``|phi|`` over all entries of each map ``[B, ...]``.

    ``G = sum_{i=1}^{d} (2i - d - 1) a_(i) / (d * sum_i a_(i))`` with ``a = |phi| + eps`` sorted ascending.
    0 for a uniform map, ``(d - 1) / d`` for a one-hot map (up to ``eps``); higher is sparser. ``eps``
    (Quantus adds 1e-7) keeps an all-zero map defined (it scores 0). Differentiable (the sort is a
    permutation), so :func:`impactx.priors.sparsity` trains through it.

    ``abs`` and ``normalise`` are Quantus' (``Sparseness(abs=True, normalise=True)`` by default there): ``abs=False``
    scores the signed ``phi + eps`` as Quantus 0.6 does; ``normalise`` divides each map by its largest ``|value|``
    first, which makes ``eps`` relative to the map's scale (the Gini index itself is scale-free). The default here
    is ``False``, as the priors train through this function unnormalised; the :class:`~impactx.metrics.Sparseness`
    metric defaults to Quantus' ``True``.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() < 2:
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a [B, ...] tensor with at least one entry per image, got {shape}")
    a = prepare_maps(maps, abs, normalise).reshape(maps.shape[0], -1)
    a = torch.sort(a + eps, dim=1).values
    d = a.shape[1]
    i = torch.arange(1, d + 1, device=a.device, dtype=a.dtype)
    return ((2 * i - d - 1) * a).sum(dim=1) / (d * a.sum(dim=1))
