"""The self-explaining protocol: a model that returns its own attribution maps next to its logits.

A model (an ``nn.Module``, e.g. the IMPACTX network, or a LightningModule wrapping one) is *self-explaining*
when it has a method

    ``explain(images: Tensor [B,C,H,W]) -> maps: Tensor [B,1,H,W] or [B,C,H,W]``

returning its own maps for a batch of (normalised) images, on the images' device; e.g. the decoder output
``D(LEP(x))`` of IMPACTX. The maps need not depend on a target class. ``explain`` is called with the model in
eval mode and under ``torch.no_grad()`` (so it works under Lightning's default ``inference_mode=True``); a
model whose ``explain`` takes gradients sets the class attribute ``explain_needs_grad = True`` (it then runs
under ``torch.enable_grad()`` and needs ``Trainer(inference_mode=False)``). ``explain`` must not change
BatchNorm statistics or dropout state. Evaluation callbacks score these maps as the source ``"self"``, and
export ships them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class SelfExplaining(Protocol):
    """``explain(images [B,C,H,W]) -> maps [B,1,H,W] | [B,C,H,W]`` next to ``forward -> logits``."""

    def explain(self, images: torch.Tensor) -> torch.Tensor: ...


def is_self_explaining(model: object) -> bool:
    """True when ``model`` follows the self-explaining protocol (has a callable ``explain``)."""
    return callable(getattr(model, "explain", None))


def explain_needs_grad(model: object) -> bool:
    """Whether ``model.explain`` takes gradients (its ``explain_needs_grad`` class attribute)."""
    return bool(getattr(model, "explain_needs_grad", False))


def self_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model.explain(images [B,C,H,W])`` checked to be ``[B,1,H,W]`` or ``[B,C,H,W]``, as float."""
    maps = model.explain(images)
    b, c, h, w = images.shape
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{type(model).__name__}.explain must return a tensor, got {type(maps).__name__}")
    if maps.dim() != 4 or maps.shape[0] != b or maps.shape[2:] != images.shape[2:] or maps.shape[1] not in (1, c):
        raise ValueError(
            f"{type(model).__name__}.explain must return maps [B,1,H,W]={[b, 1, h, w]} or [B,C,H,W]={[b, c, h, w]}"
            f" for images {list(images.shape)}, got {list(maps.shape)}"
        )
    return maps.float()
