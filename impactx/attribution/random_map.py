"""``random``: uniform noise maps, the chance baseline every faithfulness score is read against.

A random map orders pixels at random, so its MoRF / deletion curves are what "no explanation" scores; a map
that does no better than this explains nothing (the IMPACTX default experiment prints both). The values are
drawn from each image's exact pixels and ``seed`` (:func:`impactx.core.image_keys`), so an image gets the same
map alone or inside any batch, on any device; the model is not called.
"""

from __future__ import annotations

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.registry import register
from impactx.core import image_keys, keyed_uniform


@register("random")
class RandomMap(Explainer):
    """``random(model, x [B,C,H,W], y) -> U[0,1) [B,C,H,W]``, keyed on each image and ``seed``; no model call.

    Args:
        seed: selects the draw.
        reduce_channels: sum over channels (``[B,1,H,W]``).
    """

    needs_gradients = False

    def __init__(self, seed: int = 0, reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels)
        self.seed = int(seed)

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        values = keyed_uniform(image_keys(inputs, self.seed), inputs[0].numel())
        return values.view_as(inputs).to(inputs.dtype)
