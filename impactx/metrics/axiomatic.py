"""Axiomatic metrics as torchmetrics (cores in :mod:`impactx.metrics.functional.axiomatic`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.axiomatic import completeness_gap, input_invariance, non_sensitivity
from impactx.metrics.functional.validation import check_explainer, check_output_name

__all__ = ["Completeness", "InputInvariance", "NonSensitivity"]


class Completeness(ScalarMetric):
    """Mean completeness gap ``|sum(phi) - (f(x) - f(x'))|`` (relative to ``|f(x) - f(x')|`` with ``relative``) of
    the maps against ``baseline``; lower is better, 0 for a complete method. ``update(model, images, targets,
    maps)``."""

    higher_is_better = False

    def __init__(self, baseline: float = 0.0, output: str = "logit", relative: bool = True, **kwargs: Any) -> None:
        check_output_name(output)
        super().__init__(**kwargs)
        self.options = {"baseline": baseline, "output": output, "relative": relative}

    def update(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor) -> None:
        self._accumulate(completeness_gap(model, images, targets, maps, **self.options))


class NonSensitivity(ScalarMetric):
    """Mean number of non-sensitivity violations per image (Nguyen & Martinez, 2020; Quantus ``NonSensitivity``;
    see :func:`~impactx.metrics.functional.axiomatic.non_sensitivity`). Lower is better."""

    higher_is_better = False

    def __init__(self, eps: float = 1e-5, features_in_step: int = 1, baseline: float | str = "black",
                 abs: bool = True, output: str = "logit", internal_batch_size: int | None = 256,  # noqa: A002
                 **kwargs: Any) -> None:
        check_output_name(output)
        super().__init__(**kwargs)
        self.options = {"eps": eps, "features_in_step": features_in_step, "baseline": baseline, "abs": abs,
                        "output": output, "internal_batch_size": internal_batch_size}

    def update(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor) -> None:
        self._accumulate(non_sensitivity(model, images, targets, maps, **self.options))


class InputInvariance(ScalarMetric):
    """Mean relative change of ``explainer``'s maps under a compensated constant input shift (Kindermans et al.;
    :func:`~impactx.metrics.functional.axiomatic.input_invariance`). Lower is better; 0 is invariant."""

    higher_is_better = False

    def __init__(self, explainer: Any, shift: float = -1.0, **kwargs: Any) -> None:
        check_explainer(explainer)
        super().__init__(**kwargs)
        self.explainer = explainer
        self.shift = float(shift)

    def update(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
               maps: torch.Tensor | None = None) -> None:
        self._accumulate(input_invariance(model, images, targets, self.explainer, maps, self.shift))
