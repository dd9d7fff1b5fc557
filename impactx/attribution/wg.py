"""Weighted Integrated Gradients (WG; Kien et al., "Enhancing Visual Feature Attribution via Weighted
Integrated Gradients"): IG from several baselines, each weighted by its fitness.

    WG(x) = sum_k w_k IG(x, x^(k)),    w_k = (1 / D_alpha(k)) / sum_j (1 / D_alpha(j))

``D_alpha(k)`` is the fewest features (pixels) that must be set to their neutral value, in the order of
``IG(x, x^(k))`` (most positive first), to bring the target score down to ``alpha`` times its value at
``x`` (paper eq. 5). Filtered WG (``drop_lowest=k``) drops the ``k`` baselines of lowest weight and
renormalises. Completeness holds in the generalised form ``sum_i WG_i(x) = f(x) - sum_k w_k f(x^(k))``
(up to the quadrature error of each IG).

How this differs from the paper's Algorithm 1 and the authors' code (deliberately):

- The search here is a lower-bound bisection over the count ``m`` in ``[0, d]`` for the smallest ``m`` with
  ``score(x with its top-m pixels neutral) <= alpha * score(x) + epsilon``: if ``m`` reaches the target,
  the answer is ``<= m`` (``high = m``), else it is ``> m`` (``low = m + 1``). That is exactly eq. 5 (with
  tolerance ``epsilon``) whenever the score falls monotonically with ``m``, and takes
  ``ceil(log2(d + 1))`` forward passes. Algorithm 1 as printed moves the other way (``low = mid + 1``
  when the score is already *below* the target), stops at the first ``mid`` within ``epsilon`` of the
  target rather than the smallest count, and its authors' code stalls and masks every pixel when the
  count is 0. Here a count of 0 masks nothing (masks are ``rank < m`` on exact ranks, not a threshold on
  the ``m``-th value), and ``max_iterations`` (100, as in the paper) is only a guard.
- No count reaches the target (even the all-neutral image scores above it): ``D_alpha = d`` (every
  feature), the lowest possible weight. That image is the same for every baseline of an image, so a
  baseline gets there only because no smaller count worked.
- ``D_alpha = 0`` (the unmasked image already scores at most ``alpha * f(x) + epsilon``, e.g. a class
  with probability below ``epsilon / (1 - alpha)``, or a non-positive logit): no baseline can be told apart
  from another by masking, and ``1/0`` is undefined, so weights use ``max(D_alpha, 1)``.
- Features are pixels (an attribution summed over channels; all channels of a masked pixel take the
  neutral value), so ``d = H * W``.
- The fitness is measured on the softmax probability by default (``fitness_output="prob"``: the paper
  halves the model's *confidence*); the attributions themselves explain ``output`` (logit by default).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from impactx.attribution.background import BackgroundSource, materialise_background
from impactx.attribution.base import Explainer
from impactx.attribution.eg import call_seed, require_background
from impactx.attribution.ig import Quadrature, quadrature
from impactx.attribution.neutral import Neutral, check_neutral, neutral_images
from impactx.attribution.paths import path_attribution
from impactx.attribution.registry import register
from impactx.core import (
    Output,
    check_int,
    check_internal_batch_size,
    check_output,
    forward_scores,
    image_keys,
    keyed_uniform,
)


class WGResult(NamedTuple):
    """Everything behind one WG call (``B`` images, ``K`` baselines each)."""

    attributions: torch.Tensor  # [B, C, H, W] the weighted IG
    per_baseline: torch.Tensor  # [B, K, C, H, W] IG from each baseline
    baselines: torch.Tensor  # [B, K, C, H, W]
    counts: torch.Tensor  # [B, K] long, D_alpha of each baseline (before the max(., 1) of the weights)
    weights: torch.Tensor  # [B, K] normalised weights (zeros for dropped baselines)
    iterations: int  # bisection steps taken (forward passes over all B*K candidates)


def pixel_ranks(attributions: torch.Tensor) -> torch.Tensor:
    """Rank ``[N, H*W]`` (long, 0 = most positive) of each pixel's channel-summed attribution in
    ``attributions [N,C,H,W]``; ties keep pixel order."""
    scores = attributions.detach().sum(dim=1).flatten(1)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def mask_top(
    inputs: torch.Tensor, neutral: torch.Tensor, ranks: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """``inputs [N,C,H,W]`` with the ``counts [N]`` top-ranked pixels (``ranks [N, H*W]``) set to ``neutral``
    (``[N,C,H,W]``); a count of 0 changes nothing."""
    mask = (ranks < counts.view(-1, 1)).view(inputs.shape[0], 1, *inputs.shape[2:])
    return torch.where(mask, neutral, inputs)


def _check_fitness_options(alpha: float, epsilon: float, max_iterations: int) -> None:
    """The ``D_alpha`` search options: ``alpha`` in (0, 1), ``epsilon >= 0``, ``max_iterations >= 1``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")


def fitness_counts(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    attributions: torch.Tensor,
    neutral: torch.Tensor,
    alpha: float = 0.5,
    epsilon: float = 0.01,
    output: Output = "prob",
    max_iterations: int = 100,
    internal_batch_size: int | None = None,
) -> tuple[torch.Tensor, int]:
    """``D_alpha`` of every row by one vectorised bisection (see the module docstring).

    Args:
        inputs: ``[N,C,H,W]`` images (one row per image/baseline pair).
        target: ``[N]`` classes.
        attributions: ``[N,C,H,W]``, giving the order in which pixels are masked.
        neutral: ``[N,C,H,W]`` values of masked pixels.

    Returns:
        ``(counts [N] long in [0, H*W], iterations)``; each iteration is one forward pass over all ``N``
        candidates (chunked by ``internal_batch_size``), ``ceil(log2(H*W + 1))`` of them in all.
    """
    _check_fitness_options(alpha, epsilon, max_iterations)
    inputs, neutral = inputs.detach(), neutral.detach()
    n, d = inputs.shape[0], inputs.shape[-2] * inputs.shape[-1]
    ranks = pixel_ranks(attributions)
    threshold = alpha * forward_scores(model, inputs, target, output, internal_batch_size) + epsilon
    low = torch.zeros(n, dtype=torch.long, device=inputs.device)
    high = torch.full((n,), d, dtype=torch.long, device=inputs.device)
    iterations = 0
    while iterations < max_iterations and bool((low < high).any()):
        active = low < high
        mid = (low + high) // 2
        scores = forward_scores(
            model, mask_top(inputs, neutral, ranks, mid), target, output, internal_batch_size
        )
        reached = scores <= threshold
        high = torch.where(active & reached, mid, high)
        low = torch.where(active & ~reached, mid + 1, low)
        iterations += 1
    # Cut short by max_iterations: `high` is the smallest count known to reach the target (or d).
    return high, iterations


def fitness_weights(counts: torch.Tensor, drop_lowest: int = 0) -> torch.Tensor:
    """Normalised weights ``[B, K]`` proportional to ``1 / max(counts, 1)`` (``counts [B, K]``), with the
    ``drop_lowest`` lowest-weight baselines of each row set to 0 (ties: later baselines drop first)."""
    k = counts.shape[1]
    if not 0 <= drop_lowest < k:
        raise ValueError(f"drop_lowest must lie in [0, {k - 1}] for {k} baselines, got {drop_lowest}")
    inverse = 1.0 / counts.clamp_min(1).to(torch.float64)
    if drop_lowest:
        order = torch.argsort(inverse, dim=1, descending=True, stable=True)
        keep = torch.zeros_like(inverse, dtype=torch.bool).scatter_(1, order[:, : k - drop_lowest], True)
        inverse = inverse * keep
    return inverse / inverse.sum(dim=1, keepdim=True)


@register("wg")
class WeightedIntegratedGradients(Explainer):
    """Weighted Integrated Gradients (and Filtered WG with ``drop_lowest > 0``).

    Args:
        background: the set baselines are drawn from (see :data:`impactx.attribution.eg.BackgroundSource`):
            ``n_baselines`` distinct images per input, drawn batch-invariantly under ``seed``; or given per
            call (``explainer(model, x, y, background=...)``).
        baselines: instead of a background, a fixed ``[K,C,H,W]`` set used for every image.
        n_baselines: baselines per image when drawing from ``background``.
        n_steps: quadrature nodes of each IG path.
        method: IG quadrature (``"gausslegendre"``, whose weights sum to 1, or ``"riemann_trapezoid"``).
        alpha: target fraction of the original score (paper: 0.5).
        epsilon: tolerance of the target score (paper: 0.01).
        max_iterations: guard on the bisection (paper: 100; it needs ``ceil(log2(H*W + 1))``).
        neutral: value of a masked pixel (:mod:`impactx.attribution.neutral`): ``"zeros"``, ``"corners"``,
            ``"blur"``; ``corner_size`` and ``blur_sigma`` configure the last two.
        drop_lowest: Filtered WG: drop this many lowest-weight baselines and renormalise.
        output: the score the attributions explain; ``fitness_output``: the score ``D_alpha`` halves.
        create_graph: keep the graph of the IG terms (the weights are a discrete search and stay constant).
        internal_batch_size: at most this many images per forward/backward. Set it for real models: one
            call evaluates ``B * K * n_steps`` path points (on an H200, ResNet-18/CIFAR with B=64 and the
            defaults peaked at 115 GiB unchunked).
        seed: seed of the baseline draws (default 0; ``None``: fresh per call from torch's global RNG).
        max_background, split: how a Dataset/datamodule background is materialised.
        reduce_channels: sum the attributions over channels (``[B,1,H,W]``).
    """

    takes_background = True

    def __init__(
        self,
        background: BackgroundSource | None = None,
        baselines: torch.Tensor | None = None,
        n_baselines: int = 8,
        n_steps: int = 50,
        method: Quadrature = "gausslegendre",
        alpha: float = 0.5,
        epsilon: float = 0.01,
        max_iterations: int = 100,
        neutral: Neutral = "zeros",
        corner_size: int | None = None,
        blur_sigma: float = 3.0,
        drop_lowest: int = 0,
        output: Output = "logit",
        fitness_output: Output = "prob",
        create_graph: bool = False,
        internal_batch_size: int | None = None,
        seed: int | None = 0,
        max_background: int = 1000,
        split: str = "train",
        reduce_channels: bool = False,
    ) -> None:
        super().__init__(reduce_channels=reduce_channels)
        quadrature(method, n_steps)
        check_output(output)
        check_output(fitness_output)
        check_neutral(neutral)
        check_int("n_baselines", n_baselines)
        if baselines is not None:
            baselines = materialise_background(baselines)
            n_baselines = baselines.shape[0]
        _check_fitness_options(alpha, epsilon, max_iterations)
        if not 0 <= drop_lowest < n_baselines:
            raise ValueError(
                f"drop_lowest must lie in [0, {n_baselines - 1}] for {n_baselines} baselines, got {drop_lowest}"
            )
        check_internal_batch_size(internal_batch_size)
        self.baselines = baselines
        self.n_baselines = n_baselines
        self.n_steps = n_steps
        self.method = method
        self.alpha = alpha
        self.epsilon = epsilon
        self.max_iterations = max_iterations
        self.neutral = neutral
        self.corner_size = corner_size
        self.blur_sigma = blur_sigma
        self.drop_lowest = drop_lowest
        self.output = output
        self.fitness_output = fitness_output
        self.create_graph = create_graph
        self.internal_batch_size = internal_batch_size
        self.seed = seed
        self._init_background(background, max_background, split, seed)

    def result(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor | int,
        background: BackgroundSource | None = None,
    ) -> WGResult:
        """As a call, but the full :class:`WGResult` (per-baseline maps, counts, weights) is returned."""
        return self._run(self._result, model, inputs, target, background)

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        return self._result(model, inputs, target, background).attributions

    def _draw_baselines(self, inputs: torch.Tensor, background: torch.Tensor | None) -> torch.Tensor:
        """``[B, K, C, H, W]``: the fixed set, or ``K`` distinct background images per input, a function of
        each image's values and the seed only (batch invariant)."""
        batch = inputs.shape[0]
        if self.baselines is not None:
            if self.baselines.shape[1:] != inputs.shape[1:]:
                raise ValueError(
                    f"baselines have shape {list(self.baselines.shape[1:])} but inputs have {list(inputs.shape[1:])}"
                )
            fixed = self.baselines.to(device=inputs.device, dtype=inputs.dtype)
            return fixed.unsqueeze(0).expand(batch, *fixed.shape)
        background = require_background(self, background)
        if background.shape[0] < self.n_baselines:
            raise ValueError(
                f"n_baselines={self.n_baselines} distinct baselines need a background of at least that many "
                f"images, got {background.shape[0]}"
            )
        keys = image_keys(inputs, call_seed(self.seed))
        # A keyed random permutation of the background per image; its first K entries are the baselines.
        order = torch.argsort(keyed_uniform(keys, background.shape[0], stream=2), dim=1, stable=True)
        return background[order[:, : self.n_baselines].to(inputs.device)]

    def _result(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None
    ) -> WGResult:
        batch, shape = inputs.shape[0], inputs.shape[1:]
        baselines = self._draw_baselines(inputs, background)  # [B, K, C, H, W]
        k = baselines.shape[1]
        flat_inputs = inputs.repeat_interleave(k, dim=0)  # [B*K, C, H, W], row b*K + j
        flat_target = target.repeat_interleave(k)
        alphas, quad_weights = quadrature(self.method, self.n_steps)
        rows = batch * k
        per_baseline = path_attribution(
            model,
            flat_inputs,
            flat_target,
            references=baselines.reshape(rows, *shape).unsqueeze(1).expand(rows, self.n_steps, *shape),
            alphas=alphas.to(inputs.device).expand(rows, -1),
            weights=quad_weights.to(inputs.device).expand(rows, -1),
            output=self.output,
            create_graph=self.create_graph,
            internal_batch_size=self.internal_batch_size,
        )  # [B*K, C, H, W]
        neutral = neutral_images(inputs, self.neutral, self.corner_size, self.blur_sigma)
        counts, iterations = fitness_counts(
            model,
            flat_inputs,
            flat_target,
            per_baseline,
            neutral.repeat_interleave(k, dim=0),
            alpha=self.alpha,
            epsilon=self.epsilon,
            output=self.fitness_output,
            max_iterations=self.max_iterations,
            internal_batch_size=self.internal_batch_size,
        )
        counts = counts.view(batch, k)
        weights = fitness_weights(counts, self.drop_lowest).to(inputs.dtype)
        per_baseline = per_baseline.view(batch, k, *shape)
        attributions = (weights.view(batch, k, 1, 1, 1) * per_baseline).sum(dim=1)
        return WGResult(attributions, per_baseline, baselines, counts, weights, iterations)
