"""Localisation metrics against ground-truth object masks, as torchmetrics (cores in
:mod:`impactx.metrics.functional.localisation`). ``update(maps [B,C,H,W], masks [B,1,H,W])``; images with an
empty mask are left out of the mean (their value is NaN). Options ``abs`` and ``normalise`` as Quantus'."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.localisation import (
    attribution_localisation,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)

__all__ = ["AttributionLocalisation", "PointingGame", "RelevanceMassAccuracy", "RelevanceRankAccuracy"]


class _MaskMetric(ScalarMetric):
    """Mean over images of ``score_fn(maps, masks, **options)``, skipping NaN (empty masks)."""

    higher_is_better = True
    score_fn: ClassVar[Callable[..., torch.Tensor]]

    def __init__(self, options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = options

    def update(self, maps: torch.Tensor, masks: torch.Tensor) -> None:
        """``maps [B,C,H,W]`` or ``[B,1,H,W]``; ``masks [B,1,H,W]`` or ``[B,H,W]`` (nonzero = object)."""
        values = type(self).score_fn(maps, masks, **self.options)
        self._accumulate(values[~torch.isnan(values)])


class PointingGame(_MaskMetric):
    """Share of images whose map peaks inside the object (Zhang et al., 2018; Quantus ``PointingGame``)."""

    score_fn = staticmethod(pointing_game)

    def __init__(self, weighted: bool = False, abs: bool = False, normalise: bool = False,  # noqa: A002
                 **kwargs: Any) -> None:
        super().__init__({"weighted": weighted, "abs": abs, "normalise": normalise}, **kwargs)


class RelevanceMassAccuracy(_MaskMetric):
    """Mean share of the map's mass inside the object (Arras et al., 2022; Quantus ``RelevanceMassAccuracy``)."""

    score_fn = staticmethod(relevance_mass_accuracy)

    def __init__(self, abs: bool = False, normalise: bool = False, **kwargs: Any) -> None:  # noqa: A002
        super().__init__({"abs": abs, "normalise": normalise}, **kwargs)


class RelevanceRankAccuracy(_MaskMetric):
    """Mean share of the top-|mask| pixels inside the object (Arras et al., 2022; Quantus
    ``RelevanceRankAccuracy``)."""

    score_fn = staticmethod(relevance_rank_accuracy)

    def __init__(self, abs: bool = False, normalise: bool = False, **kwargs: Any) -> None:  # noqa: A002
        super().__init__({"abs": abs, "normalise": normalise}, **kwargs)


class AttributionLocalisation(_MaskMetric):
    """Mean share of positive (or absolute) attribution inside the object (Kohlbrenner et al., 2020; Quantus
    ``AttributionLocalisation``; ``weighted`` differs from Quantus' on purpose, see the functional core)."""

    score_fn = staticmethod(attribution_localisation)

    def __init__(self, weighted: bool = False, positive_attributions: bool = False, abs: bool = True,  # noqa: A002
                 normalise: bool = False, **kwargs: Any) -> None:
        super().__init__({"weighted": weighted, "positive_attributions": positive_attributions, "abs": abs,
                          "normalise": normalise}, **kwargs)
