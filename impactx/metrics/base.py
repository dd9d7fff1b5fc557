"""State handling shared by the metric classes: sums over images plus a count, reduced with ``"sum"``.

Summing per-image values (or per-step curve values) and counting images makes the DDP-synced mean equal
the single-process mean, whatever the shard sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import Metric

from impactx.metrics.functional.perturbation import Perturbation
from impactx.metrics.functional.validation import check_bool, check_chunk, check_int, check_output_name


class CurveMetric(Metric):
    """Accumulates per-image curves ``[B, n_points]`` as ``curve_sum [n_points]`` and ``count []``."""

    is_differentiable = False
    full_state_update = False

    curve_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, n_points: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_points = n_points
        self.add_state("curve_sum", default=torch.zeros(n_points), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(()), dist_reduce_fx="sum")

    def _accumulate(self, curves: torch.Tensor, prefix: str = "") -> None:
        """Add per-image curves ``[B, n_points]`` to the states ``{prefix}curve_sum`` and ``{prefix}count``; rows
        holding a NaN (undefined for that image) are skipped."""
        if curves.dim() != 2 or curves.shape[1] != self.n_points:
            raise RuntimeError(f"expected curves [B, {self.n_points}], got {list(curves.shape)}")
        curves = curves.detach()
        curves = curves[~torch.isnan(curves).any(dim=1)]
        curve_sum = getattr(self, f"{prefix}curve_sum")
        curve_sum += curves.sum(dim=0).to(curve_sum)
        getattr(self, f"{prefix}count").add_(curves.shape[0])

    def mean_curve(self, prefix: str = "") -> torch.Tensor:
        """Mean over all images seen (``[n_points]``) of the states ``{prefix}curve_sum`` / ``{prefix}count``."""
        return getattr(self, f"{prefix}curve_sum") / getattr(self, f"{prefix}count")


class PerturbationCurveMetric(CurveMetric):
    """A curve over ``n_steps + 1`` perturbed copies of each image, summarised by one number.

    Holds the options every perturbation curve shares (how replaced units are filled, one
    :class:`~impactx.metrics.functional.perturbation.Perturbation`; the score; the chunking). A subclass names its curve function (``curve_fn(model, images, targets, maps, **options)
    -> [B, n_steps + 1]``), its summary (``summary_name``, ``summary_fn(curve [n + 1]) -> []``), and
    passes the options that pick its curve (``curve_options``, checked by the subclass) to this
    constructor. :attr:`options` holds all of them, ready for ``curve_fn``. ``random_baseline=True`` also
    accumulates the curve of a random ordering of the same units (``curve_fn(..., random_order=True)``).
    """

    curve_fn: ClassVar[Callable[..., torch.Tensor]]
    summary_name: ClassVar[str]
    summary_fn: ClassVar[Callable[[torch.Tensor], torch.Tensor]]

    def __init__(
        self,
        curve_options: dict[str, Any],
        n_steps: int,
        perturbation: Perturbation,
        output: str,
        internal_batch_size: int | None,
        random_baseline: bool = False,
        **kwargs,
    ) -> None:
        check_int("n_steps", n_steps)
        check_bool("random_baseline", random_baseline)
        if not isinstance(perturbation, Perturbation):
            raise TypeError(f"perturbation must be a Perturbation, got {type(perturbation).__name__}")
        check_output_name(output)
        check_chunk(internal_batch_size)
        super().__init__(n_steps + 1, **kwargs)
        self.options = dict(
            **curve_options,
            n_steps=n_steps,
            perturbation=perturbation,
            output=output,
            internal_batch_size=internal_batch_size,
        )
        self.random_baseline = random_baseline
        if random_baseline:
            self.add_state("random_curve_sum", default=torch.zeros(n_steps + 1), dist_reduce_fx="sum")
            self.add_state("random_count", default=torch.zeros(()), dist_reduce_fx="sum")

    def update(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor
    ) -> None:
        """``images [B,C,H,W]``, ``targets [B]``, ``maps [B,C,H,W]`` or ``[B,1,H,W]``."""
        self._accumulate(self.curve_fn(model, images, targets, maps, **self.options))
        if self.random_baseline:
            self._accumulate(self.curve_fn(model, images, targets, maps, **self.options, random_order=True), "random_")

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"curve": mean score per curve point [n_steps + 1], summary_name: its summary []}``; with
        ``random_baseline``, also ``"random_curve"`` and ``"random_" + summary_name``: the same images with their
        units perturbed in a random order (keyed on each image and the perturbation's seed), the chance level
        the summary is read against."""
        curve = self.mean_curve()
        out = {"curve": curve, self.summary_name: self.summary_fn(curve)}
        if self.random_baseline:
            random = self.mean_curve("random_")
            out.update({"random_curve": random, f"random_{self.summary_name}": self.summary_fn(random)})
        return out


class ScalarMetric(Metric):
    """Accumulates per-image values ``[B]`` as ``value_sum []`` and ``count []``; computes their mean."""

    is_differentiable = False
    full_state_update = False

    value_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("value_sum", default=torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(()), dist_reduce_fx="sum")

    def _accumulate(self, values: torch.Tensor) -> None:
        values = values.detach().reshape(-1)
        self.value_sum += values.sum().to(self.value_sum)
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return self.value_sum / self.count
