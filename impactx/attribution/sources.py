"""Map sources: where evaluated (or stored) maps come from, a self-explaining model's own maps or an explainer.

A source turns ``(model, images [B,C,H,W], targets [B])`` into detached maps ``[B,1,H,W]`` (or ``[B,C,H,W]``
with ``reduce_channels=False``). Sources are named: :data:`~impactx.attribution.specs.SELF` (``"self"``) for
a self-explaining model (:mod:`impactx.models.protocol`), the registry name (``"ig"``, ``"eg"``, ...) for an
explainer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from impactx.attribution.specs import SELF, ExplainerSpec
from impactx.core import eval_mode
from impactx.models.protocol import explain_needs_grad, is_self_explaining, self_maps

MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``map_fn(model, images [B,C,H,W], targets [B]) -> maps [B,1|C,H,W]``: an Explainer, or a model's own maps."""


@dataclass(frozen=True)
class MapSource:
    """A named map producer: ``source(model, images [B,C,H,W], targets [B]) -> maps [B,1|C,H,W]`` (detached).

    Gradient sources run under ``torch.enable_grad()``, others under ``torch.no_grad()``; the model is in
    eval mode throughout (BatchNorm statistics and dropout untouched) and restored afterwards.
    """

    name: str
    needs_gradients: bool
    map_fn: MapFn
    reduce_channels: bool = True

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        grad_mode = torch.enable_grad() if self.needs_gradients else torch.no_grad()
        with grad_mode, eval_mode(model):
            maps = self.map_fn(model, images, targets).detach()
        return maps.sum(dim=1, keepdim=True) if self.reduce_channels else maps


def self_source(model: nn.Module, reduce_channels: bool = True) -> MapSource:
    """The model's own maps. The map function calls ``explain`` on the model it is given, so metrics that
    re-explain a copy (randomisation) or noisy inputs (sensitivity) see that copy's maps."""
    return MapSource(
        SELF, explain_needs_grad(model), lambda m, images, targets: self_maps(m, images), reduce_channels
    )


def planned_sources(model: nn.Module, explainers: Mapping[str, ExplainerSpec], use_self: bool) -> dict[str, bool]:
    """``{source name: needs gradients}`` of what will be evaluated on ``model``, in order."""
    plan = {}
    if use_self and is_self_explaining(model):
        plan[SELF] = explain_needs_grad(model)
    for name, spec in explainers.items():
        plan[name] = spec.needs_gradients
    return plan


def build_sources(
    model: nn.Module,
    explainers: Mapping[str, ExplainerSpec],
    use_self: bool,
    reduce_channels: bool,
    seed: int,
    background: Callable[[], torch.Tensor],
) -> list[MapSource]:
    """The sources to evaluate on ``model``: ``"self"`` first (when present and wanted), then the explainers,
    each built with ``seed`` and, if it needs one, the set ``background()`` returns (called once, only then)."""
    sources = []
    if use_self and is_self_explaining(model):
        sources.append(self_source(model, reduce_channels))
    shared = None
    for name, spec in explainers.items():
        if shared is None and spec.needs_background:
            shared = background()
        sources.append(MapSource(name, spec.needs_gradients, spec.build(seed, shared), reduce_channels))
    return sources
