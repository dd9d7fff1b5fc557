"""Axiomatic metrics as torchmetrics (cores in :mod:`impactx.metrics.functional.axiomatic`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.axiomatic import completeness_gap
from impactx.metrics.functional.validation import check_output_name

__all__ = ["Completeness"]


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
