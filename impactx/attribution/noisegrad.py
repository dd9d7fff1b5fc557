"""NoiseGrad and FusionGrad (Bykov et al., 2022; survey section 3.1): explanations averaged over copies of the
model whose weights are multiplied by noise ``N(1, std^2)``; FusionGrad adds SmoothGrad's input noise on top.

``NoiseGrad(x) = mean_m method(model_m, x, y)`` with ``model_m`` the model's parameters each multiplied
elementwise by their own draw of ``1 + std * eps`` (``n_models`` copies, drawn from ``seed`` and the copy's
number: the same copies for every image and batch, so the result is batch invariant). FusionGrad is NoiseGrad
of SmoothGrad (``n_samples`` input copies with ``stdev`` noise on each model copy). One batched call of the inner
method per model copy; the copies are made one at a time (the model's memory once more, not ``n_models`` times).
Not differentiable with respect to the original weights (the copies are detached).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.gradients import inner_explainer
from impactx.attribution.registry import register
from impactx.core import check_int

__all__ = ["FusionGrad", "NoiseGrad", "noisy_models"]


def noisy_models(model: nn.Module, n_models: int, std: float, seed: int) -> Iterator[nn.Module]:
    """``n_models`` copies of ``model`` (eval mode) with every parameter multiplied by ``1 + std * N(0, 1)``; copy
    ``m`` draws from a CPU generator seeded with ``(seed, m)``, parameters in registration order."""
    for m in range(n_models):
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + m)
        noisy = copy.deepcopy(model).eval()
        with torch.no_grad():
            for parameter in noisy.parameters():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.mul_((1 + std * noise).to(parameter))
        yield noisy


def _check_std(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


@register("noisegrad")
class NoiseGrad(Explainer):
    """NoiseGrad (module docstring). ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.

    Args:
        method: the registered method explained on each noisy model (``"saliency"``, ``"gradient"``, ``"ig"`` ...);
            method_options: its options.
        n_models: noisy model copies.
        std: the weights' multiplicative noise (paper: 0.2).
        seed: seeds the copies.
        reduce_channels: sum over channels (``[B,1,H,W]``), after the mean.
    """

    def __init__(self, method: str = "saliency", method_options: dict[str, Any] | None = None, n_models: int = 10,
                 std: float = 0.2, seed: int | None = None, reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        self.method = method
        self.method_options = dict(method_options or {})
        self.inner = inner_explainer(type(self).__name__, method, self.method_options, input_noise_inside=True)
        self.n_models = check_int("n_models", n_models)
        self.std = _check_std("std", std)
        self.seed = 0 if seed is None else int(seed)
        self.needs_gradients = self.inner.needs_gradients  # type: ignore[misc]

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        total = None
        for noisy in noisy_models(model, self.n_models, self.std, self.seed):
            maps = self.inner(noisy, inputs, target).detach()
            total = maps if total is None else total + maps
        return total / self.n_models


@register("fusiongrad")
class FusionGrad(NoiseGrad):
    """FusionGrad: NoiseGrad of SmoothGrad (module docstring). Options as :class:`NoiseGrad` plus ``n_samples``
    and ``stdev``, SmoothGrad's input copies and noise, around ``method``."""

    def __init__(self, method: str = "saliency", method_options: dict[str, Any] | None = None, n_models: int = 10,
                 std: float = 0.2, n_samples: int = 10, stdev: float = 0.15, seed: int | None = None,
                 reduce_channels: bool = False) -> None:
        smooth = {"method": method, "method_options": dict(method_options or {}), "n_samples": n_samples,
                  "stdev": _check_std("stdev", stdev), "seed": seed}
        super().__init__("smoothgrad", smooth, n_models=n_models, std=std, seed=seed, reduce_channels=reduce_channels)
