"""Expected Gradients (Erion et al., 2021): Integrated Gradients averaged over references from data.

    EG_i(x) = E_{x' ~ D, a ~ U(0,1)} [ (x_i - x'_i) * d f(x' + a (x - x')) / d x_i ]
           ~= 1/S sum_s (x_i - r_si) * d f(r_s + a_s (x - r_s)) / d x_i

with ``S = n_samples`` pairs ``(r_s, a_s)`` per image: ``r_s`` drawn uniformly (with replacement) from a
background set, ``a_s ~ U(0,1)``. The draws come from ``common.image_keys``/``keyed_uniform``: they depend
only on (image, seed), so an image gets the same draws alone or inside any batch. Completeness holds in
expectation: ``sum_i EG_i(x) -> f(x) - E_{x'}[f(x')]`` (for the drawn references, ``f(x) - mean_s f(r_s)``
up to the Monte-Carlo error of the alphas).

This module also holds the background-set plumbing shared with weighted IG (:mod:`impactx.attribution.wg`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from impactx.attribution.base import Explainer
from impactx.attribution.common import (
    Output,
    check_inputs,
    check_internal_batch_size,
    check_output,
    image_keys,
    keyed_uniform,
)
from impactx.attribution.paths import path_attribution
from impactx.attribution.registry import register

BackgroundSource = Any
"""A ``[N,C,H,W]`` tensor, a map-style ``Dataset`` whose items are ``image`` or ``(image, label, ...)``, or
any object with a ``.dataset(split)`` method returning such a Dataset (e.g. an impactx DataModule)."""


def _item_image(item: Any) -> torch.Tensor:
    image = item[0] if isinstance(item, tuple | list) else item
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"background items must hold an image tensor [C,H,W] first, got {type(image).__name__}"
        )
    return image


def materialise_background(
    source: BackgroundSource, max_background: int = 1000, split: str = "train", seed: int = 0
) -> torch.Tensor:
    """A background set ``[N,C,H,W]`` from ``source``.

    A tensor is used as given (all of it). From a datamodule (``source.dataset(split)``) or a Dataset, up to
    ``max_background`` items are taken at positions drawn without replacement by a generator seeded with
    ``seed``, so the same source and seed always give the same set.
    """
    if isinstance(source, torch.Tensor):
        background = source
    else:
        dataset = source.dataset(split) if callable(getattr(source, "dataset", None)) else source
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                "background must be a [N,C,H,W] tensor, a map-style Dataset, or an object with a .dataset(split) "
                f"method; got {type(source).__name__}"
            )
        if max_background < 1:
            raise ValueError(f"max_background must be >= 1, got {max_background}")
        gen = torch.Generator().manual_seed(int(seed))
        positions = torch.randperm(len(dataset), generator=gen)[:max_background].sort().values
        # Data loading, done once per explainer: a loop over items is fine here.
        background = torch.stack([_item_image(dataset[int(i)]) for i in positions])
    if background.dim() != 4 or background.shape[0] == 0:
        raise ValueError(f"background must have shape [N,C,H,W] with N >= 1, got {list(background.shape)}")
    if not background.is_floating_point():
        raise TypeError(f"background must be floating point, got dtype {background.dtype}")
    return background


class BackgroundMixin:
    """A lazily materialised background set, settable after construction (``explainer.background = x``
    or ``explainer.set_background(x)``) or per call (``explainer(model, x, y, background=...)``), and
    cached on the device/dtype of the last call. Mix in before :class:`Explainer`."""

    max_background: int
    split: str
    seed: int | None

    def _init_background(
        self, background: BackgroundSource | None, seed: int | None, max_background: int, split: str
    ) -> None:
        """Check and store the background options, then the source (materialised at the next call)."""
        if max_background < 1:
            raise ValueError(f"max_background must be >= 1, got {max_background}")
        self.seed = seed
        self.max_background = max_background
        self.split = split
        self._background_source: BackgroundSource | None = None
        self._background: torch.Tensor | None = None
        self._background_cast: torch.Tensor | None = None
        self._override: BackgroundSource | None = None
        self.set_background(background)

    def set_background(self, background: BackgroundSource | None) -> None:
        """Replace the background source; materialised at the next call (tensors are checked now)."""
        if isinstance(background, torch.Tensor):
            materialise_background(background)  # shape/dtype errors surface at once
        self._background_source = background
        self._background = None
        self._background_cast = None

    @property
    def background(self) -> torch.Tensor | None:
        """The background set ``[N,C,H,W]`` (materialised on first access), ``None`` when unset."""
        if self._background is None and self._background_source is not None:
            seed = 0 if self.seed is None else int(self.seed)
            self._background = materialise_background(
                self._background_source, self.max_background, self.split, seed
            )
        return self._background

    @background.setter
    def background(self, value: BackgroundSource | None) -> None:
        self.set_background(value)

    def _background_like(self, inputs: torch.Tensor) -> torch.Tensor:
        """The background of this call (the per-call override, else the configured one) on the inputs'
        device and dtype, checked against their ``[C,H,W]``."""
        override = self._override
        if override is not None:
            seed = 0 if self.seed is None else int(self.seed)
            background = materialise_background(override, self.max_background, self.split, seed)
        else:
            background = self.background
            if background is None:
                raise ValueError(
                    f"{type(self).__name__} needs a background set: pass background= (a [N,C,H,W] tensor, a "
                    "Dataset or a datamodule) at construction or call time, or set explainer.background"
                )
            cached = self._background_cast
            if cached is not None and cached.device == inputs.device and cached.dtype == inputs.dtype:
                background = cached
        if background.shape[1:] != inputs.shape[1:]:
            raise ValueError(
                f"background images have shape {list(background.shape[1:])} but inputs have {list(inputs.shape[1:])}"
            )
        background = background.to(device=inputs.device, dtype=inputs.dtype)
        if override is None:
            self._background_cast = background
        return background

    def __call__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor | int,
        background: BackgroundSource | None = None,
    ) -> torch.Tensor:
        """As :meth:`Explainer.__call__`; ``background`` replaces the configured set for this call only."""
        self._override = background
        try:
            return super().__call__(model, inputs, target)  # type: ignore[misc]
        finally:
            self._override = None

    def _call_seed(self) -> int:
        """The seed of this call: the configured one, else a fresh one from torch's global RNG."""
        if self.seed is not None:
            return int(self.seed)
        return int(torch.randint(0, 2**31 - 1, (1,)).item())


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


@register("eg")
class ExpectedGradients(BackgroundMixin, Explainer):
    """Expected Gradients over a background set.

    Args:
        background: the reference distribution (see :data:`BackgroundSource`); may be set later with
            ``explainer.background = ...`` or given per call (``explainer(model, x, y, background=...)``).
        n_samples: reference/alpha pairs per image.
        output: explained score: ``"logit"``, ``"prob"`` or ``"log_prob"``.
        create_graph: keep the graph (double backward), so a loss on the attributions trains the model.
        internal_batch_size: at most this many path points per forward/backward (``None``: all at once).
        seed: seed of the draws (default 0: the same map on every call; ``None``: a fresh seed per call from
            torch's global RNG, e.g. inside a training loss); also seeds which
            items of a Dataset/datamodule become the background (0 when ``None``).
        max_background: at most this many images are taken from a Dataset/datamodule.
        split: the datamodule split the background comes from.
        reduce_channels: sum the attributions over channels (``[B,1,H,W]``).

    ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.
    """

    def __init__(
        self,
        background: torch.Tensor | Dataset | None = None,
        n_samples: int = 200,
        output: Output = "logit",
        create_graph: bool = False,
        internal_batch_size: int | None = None,
        seed: int | None = 0,
        max_background: int = 1000,
        split: str = "train",
        reduce_channels: bool = False,
    ) -> None:
        super().__init__(reduce_channels=reduce_channels)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
        check_output(output)
        check_internal_batch_size(internal_batch_size)
        self.n_samples = n_samples
        self.output = output
        self.create_graph = create_graph
        self.internal_batch_size = internal_batch_size
        self._init_background(background, seed, max_background, split)

    def draw(self, inputs: torch.Tensor, n_background: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(indices [B,S], alphas [B,S])`` this explainer uses for ``inputs`` under ``seed``."""
        check_inputs(inputs, 0)
        return draw_references(inputs, n_background, self.n_samples, seed)

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        background = self._background_like(inputs)
        indices, alphas = draw_references(inputs, background.shape[0], self.n_samples, self._call_seed())
        references = background[indices.to(inputs.device)]  # [B, S, C, H, W]
        weights = torch.full(alphas.shape, 1.0 / self.n_samples, dtype=inputs.dtype, device=inputs.device)
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
        )
