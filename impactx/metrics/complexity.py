"""Complexity metrics as torchmetrics: entropy and effective complexity (cores in
:mod:`impactx.metrics.functional.complexity`). ``update(maps [B, ...])``; lower is simpler."""

from __future__ import annotations

from typing import Any

import torch

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.complexity import effective_complexity, entropy_complexity

__all__ = ["EffectiveComplexity", "EntropyComplexity"]


class EntropyComplexity(ScalarMetric):
    """Mean entropy of ``|phi| / sum |phi|`` (Bhatt et al., 2020; Quantus ``Complexity``)."""

    higher_is_better = False

    def update(self, maps: torch.Tensor) -> None:
        self._accumulate(entropy_complexity(maps))


class EffectiveComplexity(ScalarMetric):
    """Mean number of entries with ``|phi| > eps`` (Nguyen & Martinez, 2020; Quantus ``EffectiveComplexity``,
    ``normalise=True`` by default as there)."""

    higher_is_better = False

    def __init__(self, eps: float = 1e-5, normalise: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps
        self.normalise = normalise
        effective_complexity(torch.zeros(1, 1), eps)  # checks eps now

    def update(self, maps: torch.Tensor) -> None:
        self._accumulate(effective_complexity(maps, self.eps, self.normalise))
