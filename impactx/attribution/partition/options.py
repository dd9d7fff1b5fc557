"""What ``partition`` and ``shap_partition`` share: their options, their checks and their result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from impactx.attribution.partition.blur import resolve_blur_kernel
from impactx.core import check_output

DEFAULT_MAX_EVALS = 2000  # what IMPACTX used (Sec. 4.2 of the paper)
# shap's PartitionExplainer with batch_size="auto" and an Image masker uses 10 masks per model call.
DEFAULT_BATCH_SIZE = 10


@dataclass(frozen=True)
class OwenResult:
    """Owen values of one image batch and what they are measured against.

    ``attributions [B, C, H, W]`` sum (over C, H, W) to ``full_values - base_values`` (efficiency);
    ``base_values [B]``: the explained output on the fully masked (blurred) image, shap's
    ``expected_value``; ``full_values [B]``: the output on the image itself; ``evals [B]`` (int64): model
    evaluations spent on each image, the two above included. For ``T`` targets per image explained together
    (``target [B, T]``): ``attributions [B, T, C, H, W]``, ``base_values, full_values [B, T]``.
    """

    attributions: torch.Tensor
    base_values: torch.Tensor
    full_values: torch.Tensor
    evals: torch.Tensor


def check_partition_options(max_evals: int, batch_size: int, output: str) -> None:
    """Raise early on a bad ``max_evals`` (>= 2: the full and the fully masked image), ``batch_size`` or ``output``."""
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 2:
        raise ValueError(
            f"max_evals must be an int >= 2 (the image and its fully masked copy), got {max_evals!r}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (masks per expansion round), got {batch_size!r}")
    check_output(output)


class OwenOptionsMixin:
    """The options both Partition explainers share (``max_evals``, ``blur_kernel``, ``output``,
    ``batch_size``, ``joint_targets``): checked and stored by :meth:`_init_owen_options`, the first four handed
    on by :meth:`_owen_options`."""

    max_evals: int
    blur_kernel: int | tuple[int, int] | None
    output: str
    batch_size: int
    joint_targets: bool

    def _init_owen_options(
        self,
        max_evals: int,
        blur_kernel: int | tuple[int, int] | None,
        output: str,
        batch_size: int,
        joint_targets: bool,
    ) -> None:
        check_partition_options(max_evals, batch_size, output)
        if blur_kernel is not None:
            resolve_blur_kernel(blur_kernel, 32, 32)  # its form now; whether it fits the images at call time
        if not isinstance(joint_targets, bool):
            raise TypeError(f"joint_targets must be a bool, got {joint_targets!r}")
        self.max_evals = max_evals
        self.blur_kernel = blur_kernel
        self.output = output
        self.batch_size = batch_size
        self.joint_targets = joint_targets

    def _attribute_targets(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None,
        rows: int,
    ) -> torch.Tensor:
        """``target [B,T]`` -> ``[B,T,C,H,W]``: with ``joint_targets``, all ``T`` classes of an image in one
        queue, the whole batch in one call as a single-target call (``rows`` does not apply: only the queue's
        scores grow ``T``-fold, the masked images per model call stay bounded by ``internal_batch_size``);
        otherwise the base class's one row per (image, target)."""
        if not self.joint_targets:
            return super()._attribute_targets(model, inputs, target, background, rows)  # type: ignore[misc]
        return self._attribute(model, inputs, target, background)  # type: ignore[attr-defined]

    def _owen_options(self) -> dict[str, Any]:
        """The shared options as keyword arguments of ``partition_owen`` / ``shap_owen``."""
        return dict(
            max_evals=self.max_evals,
            blur_kernel=self.blur_kernel,
            output=self.output,
            batch_size=self.batch_size,
        )
