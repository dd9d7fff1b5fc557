"""State handling shared by the metric classes: sums over images plus a count, reduced with ``"sum"``.

Summing per-image values (or per-step curve values) and counting images makes the DDP-synced mean equal
the single-process mean, whatever the shard sizes.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


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

    def _accumulate(self, curves: torch.Tensor) -> None:
        """Add per-image curves ``[B, n_points]``; rows holding a NaN (undefined for that image) are skipped."""
        if curves.dim() != 2 or curves.shape[1] != self.n_points:
            raise RuntimeError(f"expected curves [B, {self.n_points}], got {list(curves.shape)}")
        curves = curves.detach()
        curves = curves[~torch.isnan(curves).any(dim=1)]
        self.curve_sum += curves.sum(dim=0).to(self.curve_sum)
        self.count += curves.shape[0]

    def mean_curve(self) -> torch.Tensor:
        """Mean over all images seen (``[n_points]``)."""
        return self.curve_sum / self.count


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
