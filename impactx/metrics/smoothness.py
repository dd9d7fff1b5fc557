"""Smoothness (total variation of the map) as a torchmetric."""

from __future__ import annotations

import torch

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.smoothness import total_variation


class TotalVariation(ScalarMetric):
    r"""Mean anisotropic total variation of the maps (the pixel smoothness prior of Erion et al., 2021):

    .. math:: TV(\phi) = \sum_{c,i,j} |\phi_{c,i+1,j} - \phi_{c,i,j}| + |\phi_{c,i,j+1} - \phi_{c,i,j}|

    ``standardise=True`` (the default) scores the per-image standardised map
    (:func:`~impactx.metrics.functional.standardise_per_image` with ``min_std``, default ``1e-12``: scale-free,
    unlike TensorFlow's ``1/sqrt(d)`` floor), so models whose gradients differ in scale compare on shape alone.
    Lower is smoother.

    Example (a map with one vertical edge of height 4 and step 1 has TV 4):
        >>> import torch
        >>> from impactx.metrics import TotalVariation
        >>> maps = torch.zeros(1, 1, 4, 4); maps[..., 2:] = 1.0
        >>> metric = TotalVariation(standardise=False)
        >>> metric.update(maps)
        >>> float(metric.compute())
        4.0
    """

    higher_is_better = False

    def __init__(self, standardise: bool = True, min_std: float | None = 1e-12, **kwargs) -> None:
        super().__init__(**kwargs)
        self.standardise = standardise
        self.min_std = min_std

    def update(self, maps: torch.Tensor) -> None:
        """``maps [B, C, H, W]``."""
        self._accumulate(total_variation(maps, self.standardise, self.min_std))
