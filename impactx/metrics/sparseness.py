"""Sparseness (Gini index of the map) as a torchmetric."""

from __future__ import annotations

import torch

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.sparseness import sparseness


class Sparseness(ScalarMetric):
    r"""Mean Gini index of ``|phi|`` (Chalasani et al., 2020; Quantus ``Sparseness``):

    .. math:: G(\phi) = \frac{\sum_{i=1}^{d}(2i - d - 1)\,a_{(i)}}{d\sum_{i=1}^{d} a_{(i)}},
              \quad a = |\phi| + \epsilon \text{ sorted ascending.}

    Higher is sparser.

    Example (a one-hot map of d entries scores (d - 1) / d):
        >>> import torch
        >>> from impactx.metrics import Sparseness
        >>> maps = torch.zeros(2, 1, 4, 4); maps[:, 0, 1, 2] = 3.0
        >>> metric = Sparseness()
        >>> metric.update(maps)
        >>> round(float(metric.compute()), 4)
        0.9375
    """

    higher_is_better = True

    def __init__(self, eps: float = 1e-7, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def update(self, maps: torch.Tensor) -> None:
        """``maps [B, ...]`` (any map shape)."""
        self._accumulate(sparseness(maps, self.eps))
