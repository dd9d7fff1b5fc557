"""The perturbation engine behind MoRF/LeRF, deletion/insertion and keep/remove curves.

Every such curve evaluates, for each image ``b`` and curve point ``s``, the image with some of its units
(pixels, map entries or patches) swapped for a replacement. A unit's *rank* says when it is swapped:
``replaced = rank < k`` ("replace first": deletion, MoRF, remove) or ``replaced = rank >= k`` ("keep
first": insertion, keep), with ``k = counts[b, s]``. All ``B * S`` variants are built chunk by chunk on
the inputs' device and scored as batches; nothing loops over images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import nn

from impactx.core import eval_mode, gaussian_blur, image_keys, keyed_uniform, target_scores

Replacement = Literal["uniform", "constant", "blur"]
REPLACEMENTS: tuple[str, ...] = ("uniform", "constant", "blur")

# Streams of keyed_uniform reserved for the replacement noise of region/pixel perturbation and for the random
# ordering of the units (the chance baseline), so that both can come from one seed.
_UNIFORM_STREAM = 11
_ORDER_STREAM = 13


def check_replacement(replacement: str) -> str:
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement must be one of {REPLACEMENTS}, got {replacement!r}")
    return replacement


@dataclass(frozen=True)
class Perturbation:
    """What a perturbed unit (pixel, map entry or patch) becomes: the options every perturbation curve shares.

    - ``"constant"``: ``value`` (a float, or a tensor broadcastable to ``[B,C,H,W]`` such as per-channel
      means ``[C,1,1]`` or a mean image ``[C,H,W]``);
    - ``"uniform"``: i.i.d. uniform noise in ``noise_range`` (``None``: each image's own ``[min, max]``),
      drawn once per image, so a region keeps the same noise at every later step (Samek et al., 2016). The
      draw depends only on (image, ``seed``): an image gets the same noise alone, anywhere in a batch, or
      on another DDP rank;
    - ``"blur"``: the image blurred with a Gaussian of standard deviation ``blur_sigma`` pixels.

    Checked at construction. Metrics and curve functions take ``perturbation=Perturbation(...)`` or the same
    fields as a dict (``{"replacement": "blur", "blur_sigma": 2.0}``, as a YAML config writes it).
    """

    replacement: Replacement = "constant"
    value: float | torch.Tensor = 0.0
    noise_range: tuple[float, float] | None = None
    blur_sigma: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_replacement(self.replacement)
        sigma = self.blur_sigma
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"blur_sigma must be a finite number > 0, got {sigma!r}")
        if self.noise_range is not None:
            low, high = (float(v) for v in self.noise_range)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"noise_range must be (low, high) with finite low <= high, got {self.noise_range!r}")
            object.__setattr__(self, "noise_range", (low, high))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    def fill(self, images: torch.Tensor) -> torch.Tensor:
        """The replacement of every unit of ``images [B,C,H,W]``: a ``[B,C,H,W]`` tensor on their device."""
        if self.replacement == "constant":
            value_t = torch.as_tensor(self.value, dtype=images.dtype, device=images.device)
            try:
                return torch.broadcast_to(value_t, images.shape).clone()
            except RuntimeError:
                raise ValueError(
                    f"value of shape {list(value_t.shape)} cannot be broadcast to the images {list(images.shape)}"
                ) from None
        if self.replacement == "blur":
            return gaussian_blur(images, self.blur_sigma, padding="replicate")
        b = images.shape[0]
        u = keyed_uniform(image_keys(images, self.seed), images[0].numel(), stream=_UNIFORM_STREAM)
        u = u.to(images.dtype).view(images.shape)
        if self.noise_range is None:
            flat = images.detach().reshape(b, -1)
            low = flat.min(dim=1).values.view(b, 1, 1, 1)
            high = flat.max(dim=1).values.view(b, 1, 1, 1)
        else:
            low, high = self.noise_range
        return low + (high - low) * u


PerturbationLike = Perturbation | Mapping[str, Any] | None
"""A :class:`Perturbation`, its fields as a dict, or ``None`` (the curve's default)."""


def as_perturbation(perturbation: PerturbationLike, default: Perturbation = Perturbation()) -> Perturbation:
    """``perturbation`` as a :class:`Perturbation` (``None``: ``default``; a dict: ``default`` with the dict's
    fields changed, so ``{"seed": 1}`` keeps the curve's own replacement)."""
    if perturbation is None:
        return default
    if isinstance(perturbation, Perturbation):
        return perturbation
    if isinstance(perturbation, Mapping):
        unknown = sorted(set(perturbation) - {f.name for f in fields(Perturbation)})
        if unknown:
            raise ValueError(
                f"perturbation has unknown fields {unknown}; accepted: {[f.name for f in fields(Perturbation)]}"
            )
        return replace(default, **perturbation)
    raise TypeError(f"perturbation must be a Perturbation, a dict of its fields or None, got {type(perturbation).__name__}")


def ranks_from_scores(scores: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """Position of each unit in the perturbation order: ``scores [B,U]`` -> ranks ``[B,U]`` (0 = first).

    Ties keep index order (a stable sort), so the ranking is deterministic.
    """
    key = -scores if descending else scores
    order = torch.argsort(key, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return ranks


def random_unit_scores(images: torch.Tensor, n_units: int, seed: int) -> torch.Tensor:
    """Scores ``[B, n_units]`` in ``[0, 1)`` that put each image's units in a random order: the chance baseline of a
    perturbation curve. Keyed on the image's exact pixels and ``seed`` (a stream of their own, independent of the
    uniform replacement noise drawn from the same seed), so an image gets the same order alone or in any batch."""
    return keyed_uniform(image_keys(images, seed), n_units, stream=_ORDER_STREAM).to(images.device)


def region_sums(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Sum of ``maps [B,Cm,H,W]`` over channels and each non-overlapping ``patch_size`` square -> ``[B,Hp*Wp]``."""
    b, _, h, w = maps.shape
    p = patch_size
    return maps.sum(dim=1).reshape(b, h // p, p, w // p, p).sum(dim=(2, 4)).reshape(b, -1)


def region_rank_map(ranks: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Expand region ranks ``[B, Hp*Wp]`` to a pixel rank map ``[B,1,H,W]``."""
    b = ranks.shape[0]
    grid = ranks.view(b, 1, height // patch_size, width // patch_size)
    return grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


@torch.no_grad()
def masked_scores(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    replacement: torch.Tensor,
    rank_map: torch.Tensor,
    counts: torch.Tensor,
    replace_first: bool = True,
    output: str = "prob",
    internal_batch_size: int | None = None,
) -> torch.Tensor:
    """Target scores ``[B, S]`` of every perturbed variant of every image.

    Args:
        images: ``[B,C,H,W]``; ``replacement``: ``[B,C,H,W]`` values swapped in.
        rank_map: ``[B,1,H,W]`` or ``[B,C,H,W]`` integer rank of each unit (pixel ranks cover all channels).
        counts: ``[B,S]`` integer ``k`` per image and curve point.
        replace_first: ``True``: entries with ``rank < k`` are replaced; ``False``: entries with
            ``rank >= k`` are replaced (the first ``k`` are kept).
        internal_batch_size: variants per forward pass (all at once when ``None``).
    """
    b, s = counts.shape
    chunk = b * s if not internal_batch_size else int(internal_batch_size)
    # Blocks of whole images x curve points, built by broadcasting (no gathers): ``images_per_block``
    # images with ``steps_per_block`` of their points each, at most ``chunk`` variants per forward pass.
    steps_per_block = math.ceil(s / math.ceil(s / chunk))  # balanced: 65 points at 64 -> 33 + 32, not 64 + 1
    images_per_block = max(1, chunk // s)
    scores = torch.empty(b, s, device=images.device, dtype=images.dtype)
    for i in range(0, b, images_per_block):
        rows = slice(i, i + images_per_block)
        n = images[rows].shape[0]
        ranks = rank_map[rows].unsqueeze(1)  # [n, 1, c, H, W]
        clean, fill = images[rows].unsqueeze(1), replacement[rows].unsqueeze(1)
        for j in range(0, s, steps_per_block):
            k = counts[rows, j : j + steps_per_block]
            k = k.reshape(n, -1, 1, 1, 1)
            replaced = ranks < k if replace_first else ranks >= k
            x = torch.where(replaced, fill, clean).flatten(0, 1)
            target = targets[rows].repeat_interleave(k.shape[1])
            scores[rows, j : j + steps_per_block] = target_scores(model(x), target, output).view(n, -1).to(scores.dtype)
    return scores


def perturbation_curve(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    rank_map: torch.Tensor,
    counts: torch.Tensor,
    replace_first: bool,
    output: str,
    internal_batch_size: int | None,
    perturbation: Perturbation,
) -> torch.Tensor:
    """:func:`masked_scores` ``[B, S]`` with the fill of ``perturbation``, the model in eval mode (restored
    afterwards): the common end of every perturbation curve."""
    fill = perturbation.fill(images)
    with eval_mode(model):
        return masked_scores(
            model, images, targets, fill, rank_map, counts, replace_first, output, internal_batch_size
        )
