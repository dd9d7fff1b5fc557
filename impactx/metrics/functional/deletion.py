"""Deletion and insertion curves and their AUC (weighted-IG paper, section 6; DeepPrior-EG paper, 5.2)."""

from __future__ import annotations

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
)
from impactx.metrics.functional.validation import check_curve_inputs, check_int

DEFAULT_PERTURBATION = Perturbation("constant", value=0.0)


def feature_counts(n_features: int, n_steps: int, device: torch.device) -> torch.Tensor:
    """``k_i = floor(i * P / N)`` features for ``p_i = i / N``, ``i = 0..N`` -> ``[N + 1]`` (``k_N = P``)."""
    i = torch.arange(n_steps + 1, device=device)
    return (i * n_features) // n_steps


def _pixel_curve(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    insert: bool,
    n_steps: int,
    perturbation: PerturbationLike,
    output: str,
    internal_batch_size: int | None,
    abs: bool,  # noqa: A002
    normalise: bool,
    random_order: bool,
) -> torch.Tensor:
    targets_t, maps, chunk = check_curve_inputs(model, images, targets, maps, output, internal_batch_size)
    perturbation = as_perturbation(perturbation, DEFAULT_PERTURBATION)
    b = images.shape[0]
    n_features = maps[0].numel()
    n = check_int("n_steps", n_steps, maximum=n_features, what="the number of map entries")
    if random_order:
        scores = random_unit_scores(images, n_features, perturbation.seed)
    else:
        scores = prepare_maps(maps, abs, normalise).reshape(b, -1)
    rank_map = ranks_from_scores(scores, descending=True).view(maps.shape)
    counts = feature_counts(n_features, n, images.device).expand(b, -1)
    return perturbation_curve(model, images, targets_t, rank_map, counts, not insert, output, chunk, perturbation)


def deletion_curve(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    n_steps: int = 100,
    perturbation: PerturbationLike = None,
    output: str = "prob",
    internal_batch_size: int | None = 128,
    abs: bool = False,  # noqa: A002
    normalise: bool = False,
    random_order: bool = False,
) -> torch.Tensor:
    """Deletion curve ``[B, n_steps + 1]``: ``curve[:, i] = f_c(x o M_{p_i}(phi(x)))``, ``p_i = i / N``.

    ``M_p`` masks the top ``k_i = floor(p_i * P)`` features of the map ``phi(x)`` (descending order,
    ties to the lower flat index); a feature is one map entry, so a ``[B,1,H,W]`` map ranks pixels (all
    channels of a pixel go together) and a ``[B,C,H,W]`` map ranks single entries. As in the weighted-IG
    paper, masking multiplies by zero (the default ``Perturbation("constant", value=0)``) and the score is the
    class probability ``f_c`` (``output="prob"``). Column 0 is the unperturbed image, column ``N`` the
    fully masked one. Summarise with :func:`riemann_auc` (lower is better).

    ``abs``, ``normalise``: Quantus' ``PixelFlipping`` options: rank ``|map|`` (Quantus' default ``False``), and
    divide each map by its largest ``|value|`` first (Quantus' default ``True``; it cannot change a ranking, so
    ``False`` here keeps today's numbers bit for bit). ``random_order``: delete the features in a random order
    instead (the chance baseline), keyed on each image and ``perturbation.seed``.
    """
    return _pixel_curve(model, images, targets, maps, False, n_steps, perturbation, output, internal_batch_size, abs,
                        normalise, random_order)


def insertion_curve(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    n_steps: int = 100,
    perturbation: PerturbationLike = None,
    output: str = "prob",
    internal_batch_size: int | None = 128,
    abs: bool = False,  # noqa: A002
    normalise: bool = False,
    random_order: bool = False,
) -> torch.Tensor:
    """Insertion curve ``[B, n_steps + 1]``, the mirror of :func:`deletion_curve`.

    The weighted-IG paper defines deletion only; insertion follows the DeepPrior-EG paper (5.2): start
    from a blank image (the replacement everywhere, column 0) and put back the top ``k_i = floor(i P / N)``
    features of ``x`` in descending order of the map (column ``N`` is ``x``). Summarise with
    :func:`riemann_auc` over the same ``p_i = i / N`` (higher is better). ``abs``, ``normalise``,
    ``random_order`` as :func:`deletion_curve`.
    """
    return _pixel_curve(model, images, targets, maps, True, n_steps, perturbation, output, internal_batch_size, abs,
                        normalise, random_order)


def riemann_auc(curve: torch.Tensor) -> torch.Tensor:
    """``AUC = 1/N * sum_{i=1}^{N} curve[..., i]`` for ``curve [..., N + 1]`` sampled at ``p_i = i / N``.

    The weighted-IG paper's right Riemann sum of the integral over ``p`` in ``[0, 1]``: the unperturbed
    point ``p_0 = 0`` is left out.
    """
    if curve.dim() < 1 or curve.shape[-1] < 2:
        raise ValueError(
            f"curve must have a last dimension of length N+1 >= 2, got shape {list(curve.shape)}"
        )
    return curve[..., 1:].mean(dim=-1)
