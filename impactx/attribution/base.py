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

#: (image, target) rows a several-target call explains at once by default, when the batch is smaller: a
#: single image's classes go through in one call, and a batch never runs in smaller pieces than it came.
DEFAULT_TARGET_ROWS = 32


class Explainer(abc.ABC):
    """Base of every attribution method.

    ``explainer(model, inputs [B,C,H,W], target [B] | int) -> attributions [B,C,H,W]`` (``[B,1,H,W]``
    with ``reduce_channels=True``: the sum over channels), on the inputs' device; several targets per image,
    ``target [B,T]`` or a list of ``T`` ints, give ``[B,T,C,H,W]`` (``[B,T,1,H,W]``), see :meth:`__call__`. The call validates
    its arguments, runs with the model in eval mode and restores every submodule's mode afterwards;
    BatchNorm statistics, dropout state and ``requires_grad`` flags are left as they were.

    Methods that draw references from data (``takes_background = True``) take their background at
    construction (``background=``, see :class:`~impactx.attribution.background.BackgroundSet`) or for one
    call (``explainer(model, x, y, background=...)``); nothing is changed on the explainer between calls.
    Subclasses implement :meth:`_attribute` on already-validated arguments, and may override
    :meth:`_attribute_targets` where all targets cost less together than one by one.
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
        target: torch.Tensor | int | list[int] | tuple[int, ...],
        background: BackgroundSource | None = None,
        *,
        target_rows: int | None = None,
    ) -> torch.Tensor:
        """``inputs [B,C,H,W]``, ``target [B]`` or int -> attributions ``[B,C,H,W]``; ``target [B,T]`` or a
        list/tuple of ``T`` ints (the same classes for every image) -> ``[B,T,C,H,W]``, row ``t`` equal to the
        call with ``target[:, t]``. ``background`` replaces the construction-time set for this call only
        (methods with ``takes_background``); ``target_rows`` bounds the (image, target) rows explained at
        once by a several-target call (``None``: ``max(B, DEFAULT_TARGET_ROWS)``)."""
        target_t, references = self._prepare(model, inputs, target, background, several=True)
        with eval_mode(model):
            if target_t.dim() == 1:
                attributions = self._attribute(model, inputs, target_t, references)
                expected = tuple(inputs.shape)
            else:
                rows = _check_target_rows(target_rows, inputs.shape[0])
                attributions = self._attribute_targets(model, inputs, target_t, references, rows)
                expected = (*target_t.shape, *inputs.shape[1:])
        if tuple(attributions.shape) != expected:
            raise RuntimeError(
                f"{type(self).__name__} returned shape {list(attributions.shape)}, expected {list(expected)} "
                f"for inputs {list(inputs.shape)} and target {list(target_t.shape)}"
            )
        if self.reduce_channels:
            attributions = attributions.sum(dim=-3, keepdim=True)
        return attributions

    def _run(
        self,
        method: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], T],
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor | int,
        background: BackgroundSource | None,
    ) -> T:
        """Validate (one target per image), resolve the call's background, and run ``method`` with the model
        in eval mode (for entry points other than the call, such as a CAM's layer maps)."""
        target_t, references = self._prepare(model, inputs, target, background, several=False)
        with eval_mode(model):
            return method(model, inputs, target_t, references)

    def _prepare(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor | int | list[int] | tuple[int, ...],
        background: BackgroundSource | None,
        several: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Checked targets (``[B]``, or ``[B,T]`` when ``several``) and the call's references."""
        target_t = check_inputs(inputs, target, _num_classes(model), several=several)
        if background is not None and not self.takes_background:
            raise TypeError(f"{type(self).__name__} ({self.name!r}) takes no background")
        references = None if self._background is None else self._background.resolve(background, inputs)
        return target_t, references

    def _attribute_targets(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        background: torch.Tensor | None,
        rows: int,
    ) -> torch.Tensor:
        """``inputs [B,C,H,W]``, ``target [B,T]`` -> ``[B,T,C,H,W]`` (model already in eval mode).

        The default explains every (image, target) pair as one row of a single-target batch: image ``b``
        repeated ``T`` times (its targets contiguous, row ``b*T + t``), ``rows`` rows per :meth:`_attribute`
        call. Randomness keyed by the image (:func:`impactx.core.image_keys`) draws the same for every copy,
        so row ``t`` equals the single-target call with ``target[:, t]``. A method that can explain all
        targets for less than ``T`` single-target calls overrides this.
        """
        batch, count = target.shape
        flat = target.reshape(-1)
        parts = []
        for start in range(0, batch * count, rows):
            pairs = torch.arange(start, min(start + rows, batch * count), device=inputs.device)
            parts.append(self._attribute(model, inputs[pairs // count], flat[pairs], background))
        return torch.cat(parts).view(batch, count, *inputs.shape[1:])

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


def _check_target_rows(value: int | None, batch: int) -> int:
    """``target_rows``: ``None`` (``max(batch, DEFAULT_TARGET_ROWS)``) or a positive int."""
    if value is None:
        return max(batch, DEFAULT_TARGET_ROWS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"target_rows must be None or a positive int (rows per call), got {value!r}")
    return value


def _num_classes(model: nn.Module) -> int | None:
    value = getattr(model, "num_classes", None)
    return value if isinstance(value, int) else None
