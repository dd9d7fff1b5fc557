"""Sparseness (Gini index of the map) as a torchmetric."""

from __future__ import annotations

import torch

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.sparseness import sparseness


class Sparseness(ScalarMetric):
    r"""Mean Gini index of ``|phi|`` (Chalasani et al., 2020; Quantus ``Sparseness``):

    .. math:: G(\phi) = \frac{\sum_{i=1}^{d}(2i - d - 1)\,a_{(i)}}{d\sum_{i=1}^{d} a_{(i)}},
              \quad a = |\phi| + \epsilon \text{ sorted ascending.}

    Higher is sparser. ``abs`` and ``normalise`` are Quantus' options with Quantus' defaults (``True``, ``True``):
    each map is divided by its largest ``|value|`` before ``eps`` is added, so a map scores the same at any scale
    (:func:`~impactx.metrics.functional.sparseness`).

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

    def __init__(self, eps: float = 1e-7, abs: bool = True, normalise: bool = True, **kwargs) -> None:  # noqa: A002
        super().__init__(**kwargs)
        sparseness(torch.zeros(1, 1), eps, abs, normalise)  # checks the options now
        self.eps = eps
        self.options = dict(eps=eps, abs=abs, normalise=normalise)

    def update(self, maps: torch.Tensor) -> None:
        """``maps [B, ...]`` (any map shape)."""
        self._accumulate(sparseness(maps, **self.options))
