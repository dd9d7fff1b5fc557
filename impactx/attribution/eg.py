"""Expected Gradients (Erion et al., 2021): Integrated Gradients averaged over references from data.

    EG_i(x) = E_{x' ~ D, a ~ U(0,1)} [ (x_i - x'_i) * d f(x' + a (x - x')) / d x_i ]
           ~= 1/S sum_s (x_i - r_si) * d f(r_s + a_s (x - r_s)) / d x_i

with ``S = n_samples`` pairs ``(r_s, a_s)`` per image: ``r_s`` drawn uniformly (with replacement) from a
background set, ``a_s ~ U(0,1)``. The draws come from ``common.image_keys``/``keyed_uniform``: they depend
only on (image, seed), so an image gets the same draws alone or inside any batch. Completeness holds in
expectation: ``sum_i EG_i(x) -> f(x) - E_{x'}[f(x')]`` (for the drawn references, ``f(x) - mean_s f(r_s)``
up to the Monte-Carlo error of the alphas).

"""

from __future__ import annotations

import torch
from torch import nn

from impactx.attribution.background import BackgroundSource
from impactx.attribution.base import Explainer
from impactx.attribution.paths import path_attribution
from impactx.attribution.registry import register
from impactx.core import (
    Output,
    check_inputs,
    check_int,
    check_internal_batch_size,
    check_output,
    image_keys,
    image_normal,
    keyed_uniform,
)

#: The stream of GradientShap's input noise (SmoothGrad's is 0).
NOISE_STREAM = 1


def draw_references(
    inputs: torch.Tensor, n_background: int, n_samples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-invariant EG draws: background indices ``[B, S]`` (long, uniform with replacement) and
    alphas ``[B, S]`` (float32, ``U(0,1)``), a function of each image's values and ``seed`` only."""
    keys = image_keys(inputs, seed)
    u = keyed_uniform(keys, n_samples, stream=0).to(torch.float64)
    indices = (u * n_background).long().clamp_max(n_background - 1)
    alphas = keyed_uniform(keys, n_samples, stream=1)
    return indices, alphas


def call_seed(seed: int | None) -> int:
    """The seed of one call: ``seed``, else a fresh one from torch's global RNG."""
    if seed is not None:
        return int(seed)
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def require_background(explainer: Explainer, background: torch.Tensor | None) -> torch.Tensor:
    """``background``, or the error that says how to give one."""
    if background is None:
        raise ValueError(
            f"{type(explainer).__name__} needs a background set: pass background= (a [N,C,H,W] tensor, a "
            "Dataset or a datamodule) at construction or call time"
        )
    return background


@register("eg")
class ExpectedGradients(Explainer):
    """Expected Gradients over a background set.

    Args:
        background: the reference distribution (see :data:`~impactx.attribution.background.BackgroundSource`),
            or given per call (``explainer(model, x, y, background=...)``).
        n_samples: reference/alpha pairs per image.
        output: explained score: ``"logit"``, ``"prob"`` or ``"log_prob"``.
        create_graph: keep the graph (double backward), so a loss on the attributions trains the model.
        internal_batch_size: at most this many path points per forward/backward (``None``: all at once).
        seed: seed of the draws (default 0: the same map on every call; ``None``: a fresh seed per call from
            torch's global RNG, e.g. inside a training loss); also seeds which
            items of a Dataset/datamodule become the background (0 when ``None``).
        max_background: at most this many images are kept of a Dataset/datamodule (or a longer tensor).
        split: the datamodule split the background comes from.
        stdevs: GradientShap's input noise (Captum ``GradientShap(stdevs=...)``): each sample's path ends at
            ``x + N(0, stdevs^2)`` instead of ``x`` (noise drawn from the image's key and the seed). 0: plain EG.
        reduce_channels: sum the attributions over channels (``[B,1,H,W]``).

    ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.
    """

    takes_background = True

    def __init__(
        self,
        background: BackgroundSource | None = None,
        n_samples: int = 200,
        output: Output = "logit",
        create_graph: bool = False,
        internal_batch_size: int | None = None,
        seed: int | None = 0,
        max_background: int = 1000,
        split: str = "train",
        stdevs: float = 0.0,
        reduce_channels: bool = False,
    ) -> None:
        super().__init__(reduce_channels=reduce_channels)
        check_int("n_samples", n_samples)
        if isinstance(stdevs, bool) or not isinstance(stdevs, int | float) or not stdevs >= 0:
            raise ValueError(f"stdevs must be a number >= 0, got {stdevs!r}")
        self.stdevs = float(stdevs)
        check_output(output)
        check_internal_batch_size(internal_batch_size)
        self.n_samples = n_samples
        self.output = output
        self.create_graph = create_graph
        self.internal_batch_size = internal_batch_size
        self.seed = seed
        self._init_background(background, max_background, split, seed)

    def draw(self, inputs: torch.Tensor, n_background: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(indices [B,S], alphas [B,S])`` this explainer uses for ``inputs`` under ``seed``."""
        check_inputs(inputs, 0)
        return draw_references(inputs, n_background, self.n_samples, seed)

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        background = require_background(self, background)
        indices, alphas = draw_references(inputs, background.shape[0], self.n_samples, call_seed(self.seed))
        references = background[indices.to(inputs.device)]  # [B, S, C, H, W]
        weights = torch.full(alphas.shape, 1.0 / self.n_samples, dtype=inputs.dtype, device=inputs.device)
        endpoints = None
        if self.stdevs > 0:
            endpoints = inputs.unsqueeze(1) + self.input_noise(inputs, call_seed(self.seed))
        return path_attribution(
            model,
            inputs,
            target,
            references=references,
            alphas=alphas,
            weights=weights,
            output=self.output,
            create_graph=self.create_graph,
            internal_batch_size=self.internal_batch_size,
            endpoints=endpoints,
        )

    def input_noise(self, inputs: torch.Tensor, seed: int) -> torch.Tensor:
        """The noise ``[B,S,C,H,W]`` (``stdevs`` times a standard normal keyed on each image) of GradientShap."""
        return self.stdevs * image_normal(inputs, self.n_samples, seed, stream=NOISE_STREAM)
