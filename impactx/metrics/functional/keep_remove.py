"""Keep/remove curves KPM, KNM, KAM, RPM, RNM, RAM (DeepPrior-EG paper, section 4.2; Lundberg et al. 2020).

Definitions (the DeepPrior-EG paper's text; the masking mechanics and fractions follow the cited
benchmark, ``shap.benchmark.measures.keep_mask/remove_mask``):

- eligible features: ``positive`` = map > 0, ``negative`` = map < 0, ``absolute`` = all; ordered by
  ``phi``, ``-phi`` and ``|phi|`` respectively, descending (ties to the lower flat index);
- not-eligible features stay masked at every point of a curve;
- at fraction ``f_j = j / n`` (``j = 0..n``), ``k_j = min(floor(f_j * P), #eligible)`` features
  (``P`` = all map entries; as in shap, the x axis is the "max fraction of features kept/removed");
- keep (K*M): start fully masked and unmask the first ``k_j`` eligible features;
- remove (R*M): start from the eligible features unmasked and mask the first ``k_j`` of them.
- the curve is the mean target model output, summarised by the trapezoidal AUC over ``f`` in ``[0, 1]``
  (shap: ``sklearn.metrics.auc(fcounts, scores) / fcounts[-1]``).

Deliberate differences: (1) the paper's RPM/RNM start with the non-eligible features already masked, while
shap's remove_mask starts from the full input; we follow the paper, which also makes R*M the mirror of K*M
(for RAM both agree: every feature is eligible). (2) "positive"/"negative" are strict (shap counts zeros
as positive). (3) Fractions are linear, not shap's log-spaced integer counts. (4) The masking value is
``value`` (default 0); shap masks with the training-set mean, which you get with ``value=train_mean``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from impactx.metrics.functional.perturbation import (
    Perturbation,
    PerturbationLike,
    as_perturbation,
    perturbation_curve,
    random_unit_scores,
    ranks_from_scores,
)
from impactx.metrics.functional.validation import check_curve_inputs, check_int

Variant = Literal["kpm", "knm", "kam", "rpm", "rnm", "ram"]
VARIANTS: tuple[str, ...] = ("kpm", "knm", "kam", "rpm", "rnm", "ram")
DEFAULT_PERTURBATION = Perturbation("constant", value=0.0)
_SIGNS = {"p": "positive", "n": "negative", "a": "absolute"}


def keep_remove_curve(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    variant: Variant = "kpm",
    n_steps: int = 10,
    perturbation: PerturbationLike = None,
    output: str = "logit",
    internal_batch_size: int | None = 128,
    random_order: bool = False,
) -> torch.Tensor:
    """Keep/remove curve ``[B, n_steps + 1]`` at fractions ``j / n_steps`` (see the module docstring).

    Args:
        variant: ``"kpm"``, ``"knm"``, ``"kam"``, ``"rpm"``, ``"rnm"`` or ``"ram"``.
        maps: ``[B,C,H,W]`` (entries are features) or ``[B,1,H,W]`` (pixels are features).
        output: the model output tracked; ``"logit"`` by default (the benchmark's "model output").
        random_order: the chance baseline: the same eligible features (the map's sign still picks them) in a
            random order, keyed on each image and ``perturbation.seed``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    targets_t, maps, chunk = check_curve_inputs(model, images, targets, maps, output, internal_batch_size)
    perturbation = as_perturbation(perturbation, DEFAULT_PERTURBATION)
    b = images.shape[0]
    n_features = maps[0].numel()
    n = check_int("n_steps", n_steps, maximum=n_features, what="the number of map entries")

    keep, sign = variant[0] == "k", _SIGNS[variant[1]]
    flat = maps.reshape(b, -1)
    if sign == "positive":
        score, eligible = flat, flat > 0
    elif sign == "negative":
        score, eligible = -flat, flat < 0
    else:
        score, eligible = flat.abs(), torch.ones_like(flat, dtype=torch.bool)
    if random_order:
        score = random_unit_scores(images, n_features, perturbation.seed)
    ranks = ranks_from_scores(
        torch.where(eligible, score, torch.full_like(score, -torch.inf)), descending=True
    )
    # Not-eligible features are masked at every k: keep replaces rank >= k, so they get rank P (> any k);
    # remove replaces rank < k, so they get rank -1.
    ranks = torch.where(eligible, ranks, torch.full_like(ranks, n_features if keep else -1))
    fractions = (torch.arange(n + 1, device=images.device) * n_features) // n
    counts = torch.minimum(fractions.view(1, -1), eligible.sum(dim=1, keepdim=True))
    return perturbation_curve(
        model, images, targets_t, ranks.view(maps.shape), counts, not keep, output, chunk, perturbation
    )


def trapezoid_auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under ``curve [..., n + 1]`` sampled at ``f_j = j / n`` over ``[0, 1]`` -> ``[...]``."""
    if curve.dim() < 1 or curve.shape[-1] < 2:
        raise ValueError(
            f"curve must have a last dimension of length n+1 >= 2, got shape {list(curve.shape)}"
        )
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)
