"""Attribution priors: penalties ``Omega(phi)`` on attributions ``phi [B,C,H,W]``, minimised with the loss.

Attribution-prior training (Erion et al., 2021; DeepPrior-EG paper Eq. 25) minimises
``CE + lam * Omega(Phi(theta, x))`` with ``Phi`` computed, differentiably, in the training step. Each penalty
here is a small function of the attributions (and, for :func:`outside_region`, of a target map) returning a
scalar, mean over the batch, so ``lam`` does not depend on the batch size:

- ``"total_variation"``: the pixel smoothness prior (Eq. 26), optionally of the per-image standardised map;
- ``"sparsity"``: ``1 - Gini`` of the mean absolute attribution (Erion et al.'s sparsity prior is ``-Gini``;
  the constant 1 keeps the logged value in ``[0, 1]`` and changes no gradient);
- ``"outside_region"``: the fraction of absolute attribution that falls outside the region a target map
  marks, so a user can say where a model must look.

:class:`AttributionPrior` selects one by name with its options (the config's ``prior`` and
``prior_options``) and checks both on construction.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from impactx.metrics.functional.smoothness import total_variation as _map_total_variation
from impactx.metrics.functional.sparseness import sparseness

__all__ = ["PRIORS", "AttributionPrior", "outside_region", "sparsity", "total_variation"]

_EPS = 1e-12


def _check_attributions(attributions: torch.Tensor) -> None:
    if not isinstance(attributions, torch.Tensor) or attributions.dim() != 4:
        shape = list(attributions.shape) if isinstance(attributions, torch.Tensor) else type(attributions).__name__
        raise ValueError(f"attributions must be a [B, C, H, W] tensor, got {shape}")


def total_variation(attributions: torch.Tensor, standardise: bool = True, min_std: float | None = None) -> torch.Tensor:
    """Mean over the batch of the total variation of ``attributions [B,C,H,W]`` (Eq. 26), a scalar.

    ``standardise=True`` (the attribution-priors MNIST code: ``tf.image.per_image_standardization`` before
    ``tf.image.total_variation``) penalises the shape of each map rather than its scale. ``min_std=None`` keeps
    TensorFlow's floor ``1/sqrt(C*H*W)`` on the std: maps with a smaller std are only centred, so below it
    the model can still lower the penalty by shrinking its gradients; a tiny ``min_std`` (``1e-8``) removes
    that, at the price of amplifying noise in near-constant maps. ``False``: the raw neighbour differences.
    """
    _check_attributions(attributions)
    return _map_total_variation(attributions, standardise=standardise, min_std=min_std).mean()


def sparsity(attributions: torch.Tensor, over: Literal["batch", "image"] = "batch") -> torch.Tensor:
    """``1 - Gini`` of absolute attributions ``[B,C,H,W]``, a scalar in ``[0, 1]``; lower is sparser.

    ``over="batch"`` (Erion et al.'s global sparsity prior): the Gini index of ``mean_b |phi_b|``, one vector of
    ``C*H*W`` feature importances; the model may use few features overall, different ones per image less so.
    ``over="image"``: the mean of each image's own Gini index (each map sparse on its own).
    """
    _check_attributions(attributions)
    if over == "batch":
        return 1.0 - sparseness(attributions.abs().mean(dim=0, keepdim=True)).squeeze(0)
    if over == "image":
        return 1.0 - sparseness(attributions).mean()
    raise ValueError(f"sparsity over must be 'batch' or 'image', got {over!r}")


def region_mask(target_maps: torch.Tensor, threshold: float | None = 0.5) -> torch.Tensor:
    """The region ``[B,1,H,W]`` in ``[0, 1]`` that ``target_maps [B,1,H,W]`` marks.

    Each map's absolute values are divided by their per-image maximum; ``threshold``: positions at or above it
    are the region (1), the rest 0; ``None``: the normalised values themselves (a soft region). A map that is
    zero everywhere marks no region (all 0).
    """
    if target_maps.dim() != 4 or target_maps.shape[1] != 1:
        raise ValueError(f"target maps must be [B, 1, H, W], got {list(target_maps.shape)}")
    magnitude = target_maps.detach().abs()
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True)
    relative = magnitude / peak.clamp_min(_EPS)
    if threshold is None:
        return relative
    return (relative >= threshold).to(target_maps.dtype) * (peak > 0).to(target_maps.dtype)


def outside_region(
    attributions: torch.Tensor, target_maps: torch.Tensor, threshold: float | None = 0.5
) -> torch.Tensor:
    """Mean over the batch of the fraction of ``|phi|`` (summed over channels) outside the marked region.

    ``attributions [B,C,H,W]``, ``target_maps [B,1,H,W]`` (e.g. stored maps joined to the batch, or masks a
    user drew); the region is :func:`region_mask` ``(target_maps, threshold)``. Per image
    ``sum(|phi| * (1 - region)) / sum(|phi|)`` in ``[0, 1]``: a ratio, so the model lowers it by moving
    attribution into the region, not by shrinking all of it. An image with zero attribution scores 0.
    """
    _check_attributions(attributions)
    if target_maps.shape[0] != attributions.shape[0] or target_maps.shape[-2:] != attributions.shape[-2:]:
        raise ValueError(
            f"target maps {list(target_maps.shape)} do not match attributions {list(attributions.shape)} "
            "(expected [B, 1, H, W] with the same B, H, W)"
        )
    magnitude = attributions.abs().sum(dim=1, keepdim=True)  # [B, 1, H, W]
    outside = 1.0 - region_mask(target_maps, threshold).to(magnitude.dtype)
    total = magnitude.sum(dim=(1, 2, 3))
    return ((magnitude * outside).sum(dim=(1, 2, 3)) / total.clamp_min(_EPS)).mean()


@dataclass(frozen=True)
class PriorInfo:
    """A penalty function and whether it takes the batch's target maps as its second argument."""

    fn: Callable[..., torch.Tensor]
    needs_target_maps: bool = False


PRIORS: dict[str, PriorInfo] = {
    "total_variation": PriorInfo(total_variation),
    "sparsity": PriorInfo(sparsity),
    "outside_region": PriorInfo(outside_region, needs_target_maps=True),
}


@dataclass(frozen=True)
class AttributionPrior:
    """A named penalty with its options: ``AttributionPrior("total_variation", {"standardise": True})``.

    ``prior(attributions [B,C,H,W], target_maps [B,1,H,W] | None) -> scalar``. The name and option names
    are checked on construction (and the option values by a call on a tiny map), so a bad config fails
    before training starts.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in PRIORS:
            raise ValueError(f"unknown prior {self.name!r}; available: {', '.join(sorted(PRIORS))}")
        options = dict(self.options or {})
        object.__setattr__(self, "options", options)
        info = PRIORS[self.name]
        params = list(inspect.signature(info.fn).parameters)[2 if info.needs_target_maps else 1:]
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(f"prior {self.name!r}: unknown options {unknown}; accepted: {params}")
        probe = torch.rand(2, 1, 4, 4)
        try:
            self(probe, torch.rand(2, 1, 4, 4) if info.needs_target_maps else None)
        except (TypeError, ValueError) as err:
            raise ValueError(f"prior {self.name!r} with options {options}: {err}") from None

    @property
    def needs_target_maps(self) -> bool:
        """Whether the penalty reads the batch's target maps (the data module's ``maps`` store)."""
        return PRIORS[self.name].needs_target_maps

    def __call__(self, attributions: torch.Tensor, target_maps: torch.Tensor | None = None) -> torch.Tensor:
        info = PRIORS[self.name]
        if not info.needs_target_maps:
            return info.fn(attributions, **self.options)
        if target_maps is None:
            raise ValueError(
                f"prior {self.name!r} needs target maps [B,1,H,W] with each batch: give the data module a map store "
                "(data.init_args.maps: <store folder>)"
            )
        return info.fn(attributions, target_maps, **self.options)
