"""ADVISE's own scores as torchmetrics (cores in :mod:`impactx.metrics.functional.advise`): the class sensitivity
of an explainer, and the XAI value of its maps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.advise import advise_scores, class_sensitivity, normalisation, rescale_maps
from impactx.metrics.functional.validation import check_explainer

__all__ = ["ClassSensitivity", "XAIValue"]

ExplainerFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _runner_up(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities of targets [B], the highest-scored other class [B])``."""
    with torch.no_grad():
        probabilities = model(images).softmax(dim=1)
    others = probabilities.scatter(1, targets.view(-1, 1), -1.0).argmax(dim=1)
    return probabilities.gather(1, targets.view(-1, 1)).squeeze(1), others


def _pixel_maps(maps: torch.Tensor) -> torch.Tensor:
    """Maps ``[B,C,H,W]`` summed over channels and min-max scaled to ``[0, 1]`` per image (ADVISE's ``rescale``)."""
    return rescale_maps(maps.detach().sum(dim=1, keepdim=True) if maps.dim() == 4 else maps.detach().unsqueeze(1))


class _ExplainerMetric(ScalarMetric):
    def __init__(self, explainer: ExplainerFn, **kwargs: Any) -> None:
        check_explainer(explainer)
        super().__init__(**kwargs)
        self.explainer = explainer


class ClassSensitivity(_ExplainerMetric):
    """Mean Pearson correlation of ``explainer``'s maps of the explained class and of the highest-scored other
    class (ADVISE; Sattarzadeh et al.'s class sensitivity). A map that tells the classes apart scores near 0 or
    below; lower is better. ``update(model, images, targets, maps=None)``."""

    higher_is_better = False

    def update(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
               maps: torch.Tensor | None = None) -> None:
        _, others = _runner_up(model, images, targets)
        first = self.explainer(model, images, targets) if maps is None else maps
        second = self.explainer(model, images, others)
        self._accumulate(class_sensitivity(_pixel_maps(first), _pixel_maps(second)))


class XAIValue(_ExplainerMetric):
    """Mean ADVISE XAI value of ``explainer``'s maps: ``4 / (1/SSIM + 1/FSIM + 1/(1 - MSE) + 1/(1 - AD))`` of the
    image masked by the map (min-max scaled to ``[0, 1]``), damped or zeroed when the masked image loses the
    class (see :func:`~impactx.metrics.functional.advise.advise_scores`). Higher is better.

    Args:
        explainer: ``explainer(model, x, y) -> maps`` (also run for the runner-up class, for the damping).
        mean, std: the inputs' per-channel normalisation, to recover pixels in ``[0, 1]`` (default: none).
    """

    higher_is_better = True

    def __init__(self, explainer: ExplainerFn, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 **kwargs: Any) -> None:
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
        super().__init__(explainer, **kwargs)
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]

    def update(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
               maps: torch.Tensor | None = None) -> None:
        probabilities, others = _runner_up(model, images, targets)
        first = _pixel_maps(self.explainer(model, images, targets) if maps is None else maps)
        second = _pixel_maps(self.explainer(model, images, others))
        mean, std = normalisation(self.mean, self.std, images)
        pixels = (images * std + mean).clamp(0, 1)
        scores = advise_scores(model, pixels, first, second, targets, probabilities, lambda p: (p - mean) / std)
        values = scores["xai_value"]
        self._accumulate(values[torch.isfinite(values)])
