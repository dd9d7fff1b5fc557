"""MoRF / LeRF region-perturbation curves and AOPC (Samek et al., 2016; the IMPACTX paper's MoRF curves)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from impactx.metrics.functional.map_options import prepare_maps
from impactx.metrics.functional.perturbation import (
    Perturbation,
    PerturbationLike,
    as_perturbation,
    perturbation_curve,
    random_unit_scores,
    ranks_from_scores,
    region_rank_map,
    region_sums,
)
from impactx.metrics.functional.validation import check_curve_inputs, check_int, check_patch_size

Order = Literal["morf", "lerf"]

# Uniform noise in each image's own range, as IMPACTX (after Samek et al., 2016).
DEFAULT_PERTURBATION = Perturbation("uniform")


def region_perturbation_curve(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    order: Order = "morf",
    patch_size: int = 8,
    n_steps: int | None = None,
    perturbation: PerturbationLike = None,
    output: str = "prob",
    internal_batch_size: int | None = 128,
    abs: bool = False,  # noqa: A002
    normalise: bool = False,
    random_order: bool = False,
) -> torch.Tensor:
    """Region-perturbation curve ``[B, n_steps + 1]``: ``curve[:, k] = f_y(x_k)``, k = 0..n_steps.

    The image is tiled into non-overlapping ``patch_size`` squares; each region's relevance is the map
    summed over the region (and channels). ``x_k`` is ``x`` with the ``k`` most relevant regions
    (``order="morf"``) or least relevant ones (``"lerf"``) replaced as ``perturbation`` says (a
    :class:`~impactx.metrics.functional.perturbation.Perturbation`; default ``"uniform"`` noise as in
    IMPACTX/Samek et al., or a ``"constant"`` or a ``"blur"``). Perturbations
    accumulate: ``x_k`` keeps the first ``k - 1`` replaced regions. Ties in relevance go to the region
    with the lower row-major index.

    Args:
        model: classifier returning logits ``[N, K]``; run in eval mode (restored after), without gradients.
        images: ``[B,C,H,W]``; targets: ``[B]`` (or an int); maps: ``[B,C,H,W]`` or ``[B,1,H,W]``.
        n_steps: regions perturbed in all (``None``: every region).
        output: the score ``f_y``: ``"prob"`` (softmax), ``"logit"`` or ``"log_prob"``.
        internal_batch_size: perturbed images per forward pass.
        abs, normalise: Quantus' ``RegionPerturbation`` options: rank ``|map|`` (Quantus' default ``False``), and
            divide each map by its largest ``|value|`` first (Quantus' default ``True``; a positive factor per image
            cannot change the ranking, so ``False`` here, which keeps the numbers bit for bit).
        random_order: replace the regions in a random order instead of the map's (the chance baseline, ``order``
            then makes no difference), keyed on each image and ``perturbation.seed``
            (:func:`~impactx.metrics.functional.perturbation.random_unit_scores`).
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    targets_t, maps, chunk = check_curve_inputs(model, images, targets, maps, output, internal_batch_size)
    perturbation = as_perturbation(perturbation, DEFAULT_PERTURBATION)
    _, _, h, w = images.shape
    p = check_patch_size(patch_size, h, w)
    n_regions = (h // p) * (w // p)
    n = (
        n_regions
        if n_steps is None
        else check_int("n_steps", n_steps, maximum=n_regions, what="the number of regions")
    )

    if random_order:
        scores = random_unit_scores(images, n_regions, perturbation.seed)
    else:
        scores = region_sums(prepare_maps(maps, abs, normalise), p)
    ranks = ranks_from_scores(scores, descending=random_order or order == "morf")
    rank_map = region_rank_map(ranks, h, w, p)
    counts = torch.arange(n + 1, device=images.device).expand(images.shape[0], -1)
    return perturbation_curve(model, images, targets_t, rank_map, counts, True, output, chunk, perturbation)


def morf_curve(
    model: nn.Module, images: torch.Tensor, targets, maps: torch.Tensor, **options
) -> torch.Tensor:
    """:func:`region_perturbation_curve` with ``order="morf"`` (most relevant first)."""
    return region_perturbation_curve(model, images, targets, maps, order="morf", **options)


def lerf_curve(
    model: nn.Module, images: torch.Tensor, targets, maps: torch.Tensor, **options
) -> torch.Tensor:
    """:func:`region_perturbation_curve` with ``order="lerf"`` (least relevant first)."""
    return region_perturbation_curve(model, images, targets, maps, order="lerf", **options)


def aopc(curve: torch.Tensor) -> torch.Tensor:
    """Area over the perturbation curve (Samek et al., 2016, eq. 12), per curve.

    ``AOPC = 1/(L+1) * sum_{k=0}^{L} (f(x_0) - f(x_k))`` for ``curve [..., L+1]`` -> ``[...]``.
    High for MoRF means the ranking found the evidence; low for LeRF means it found the irrelevant parts.
    """
    if curve.dim() < 1 or curve.shape[-1] < 1:
        raise ValueError(
            f"curve must have a last dimension of length L+1 >= 1, got shape {list(curve.shape)}"
        )
    return (curve[..., :1] - curve).mean(dim=-1)
