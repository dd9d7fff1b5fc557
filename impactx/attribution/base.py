"""The explainer contract: an object configured once, called on ``(model, inputs, target)``."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import nn

from impactx.attribution.common import check_inputs, eval_mode


class Explainer(abc.ABC):
    """Base of every attribution method.

    ``explainer(model, inputs [B,C,H,W], target [B] | int) -> attributions [B,C,H,W]`` (``[B,1,H,W]``
    with ``reduce_channels=True``: the sum over channels), on the inputs' device. The call validates
    its arguments, runs with the model in eval mode and restores every submodule's mode afterwards;
    BatchNorm statistics, dropout state and ``requires_grad`` flags are left as they were.
    Subclasses implement :meth:`_attribute` on already-validated arguments.
    """

    name: ClassVar[str] = ""
    #: False for methods that only run forward passes (they work under ``torch.inference_mode``).
    needs_gradients: ClassVar[bool] = True

    def __init__(self, reduce_channels: bool = False) -> None:
        self.reduce_channels = reduce_channels

    def __call__(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        target_t = check_inputs(inputs, target, _num_classes(model))
        with eval_mode(model):
            attributions = self._attribute(model, inputs, target_t)
        if attributions.shape != inputs.shape:
            raise RuntimeError(
                f"{type(self).__name__} returned shape {list(attributions.shape)} for inputs {list(inputs.shape)}"
            )
        if self.reduce_channels:
            attributions = attributions.sum(dim=1, keepdim=True)
        return attributions

    @abc.abstractmethod
    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``inputs [B,C,H,W]``, ``target [B]`` long on the same device -> ``[B,C,H,W]``."""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={_short(v)}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


def _short(value: object) -> str:
    """``repr`` that names a tensor by shape and dtype instead of printing its values."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)}:{str(value.dtype).removeprefix('torch.')}"
    return repr(value)


def _num_classes(model: nn.Module) -> int | None:
    value = getattr(model, "num_classes", None)
    return value if isinstance(value, int) else None
