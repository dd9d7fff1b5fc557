"""The explainer contract: an object configured once, called on ``(model, inputs, target)``."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch
from torch import nn

from impactx.attribution.background import BackgroundSet, BackgroundSource
from impactx.core import check_inputs, eval_mode

T = TypeVar("T")


class Explainer(abc.ABC):
    """Base of every attribution method.

    ``explainer(model, inputs [B,C,H,W], target [B] | int) -> attributions [B,C,H,W]`` (``[B,1,H,W]``
    with ``reduce_channels=True``: the sum over channels), on the inputs' device. The call validates
    its arguments, runs with the model in eval mode and restores every submodule's mode afterwards;
    BatchNorm statistics, dropout state and ``requires_grad`` flags are left as they were.

    Methods that draw references from data (``takes_background = True``) take their background at
    construction (``background=``, see :class:`~impactx.attribution.background.BackgroundSet`) or for one
    call (``explainer(model, x, y, background=...)``); nothing is changed on the explainer between calls.
    Subclasses implement :meth:`_attribute` on already-validated arguments.
    """

    name: ClassVar[str] = ""
    #: False for methods that only run forward passes (they work under ``torch.inference_mode``).
    needs_gradients: ClassVar[bool] = True
    #: True for methods that take a background set (construction or per call).
    takes_background: ClassVar[bool] = False

    def __init__(self, reduce_channels: bool = False) -> None:
        self.reduce_channels = reduce_channels
        self._background: BackgroundSet | None = None

    def _init_background(
        self, source: BackgroundSource | None, max_background: int, split: str, seed: int | None
    ) -> None:
        """Fix the construction-time background (subclasses with ``takes_background``); ``seed`` picks which
        items of a Dataset/datamodule (or of a tensor longer than ``max_background``) are kept (0 when None)."""
        self._background = BackgroundSet(source, max_background, split, 0 if seed is None else seed)

    @property
    def background(self) -> torch.Tensor | None:
        """The background fixed at construction, ``[N,C,H,W]`` (``None`` when none was given)."""
        return None if self._background is None else self._background.tensor

    def __call__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor | int,
        background: BackgroundSource | None = None,
    ) -> torch.Tensor:
        """``inputs [B,C,H,W]``, ``target [B]`` or int -> attributions; ``background`` replaces the
        construction-time set for this call only (methods with ``takes_background``)."""
        attributions = self._run(self._attribute, model, inputs, target, background)
        if attributions.shape != inputs.shape:
            raise RuntimeError(
                f"{type(self).__name__} returned shape {list(attributions.shape)} for inputs {list(inputs.shape)}"
            )
        if self.reduce_channels:
            attributions = attributions.sum(dim=1, keepdim=True)
        return attributions

    def _run(
        self,
        method: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], T],
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor | int,
        background: BackgroundSource | None,
    ) -> T:
        """Validate, resolve the call's background, and run ``method`` with the model in eval mode."""
        target_t = check_inputs(inputs, target, _num_classes(model))
        if background is not None and not self.takes_background:
            raise TypeError(f"{type(self).__name__} ({self.name!r}) takes no background")
        references = None if self._background is None else self._background.resolve(background, inputs)
        with eval_mode(model):
            return method(model, inputs, target_t, references)

    @abc.abstractmethod
    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        """``inputs [B,C,H,W]``, ``target [B]`` long on the same device, ``background [N,C,H,W]`` on the
        inputs' device and dtype (``None``: no background given, or a method that takes none) -> ``[B,C,H,W]``."""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={_short(v)}" for k, v in vars(self).items() if not k.startswith("_"))
        if self._background is not None and self._background._source is not None:
            options += f", background={_short(self._background._source)}"
        return f"{type(self).__name__}({options})"


def _short(value: object) -> str:
    """``repr`` that names a tensor by shape and dtype instead of printing its values."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)}:{str(value.dtype).removeprefix('torch.')}"
    return repr(value)


def _num_classes(model: nn.Module) -> int | None:
    value = getattr(model, "num_classes", None)
    return value if isinstance(value, int) else None
