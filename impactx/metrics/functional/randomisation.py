"""Model-parameter randomisation sanity check (Adebayo et al., 2018: cascading randomisation, top first)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from impactx.core import eval_mode, image_keys, keyed_uniform
from impactx.metrics.functional.map_options import prepare_maps
from impactx.metrics.functional.sensitivity import ExplainerFn, _maps_of
from impactx.metrics.functional.validation import check_batch, check_chunk, check_explainer, check_maps

Similarity = Literal["spearman", "pearson", "ssim"]
SIMILARITIES: tuple[str, ...] = ("spearman", "pearson", "ssim")


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the layers cascading randomisation visits, top (output side) first.

    A layer is a module with parameters of its own and a ``reset_parameters`` method (Linear, Conv,
    BatchNorm, ...); "top first" is the reverse of registration order, as in Quantus' ``top_down``.
    """
    return [
        name
        for name, module in reversed(list(model.named_modules()))
        if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))
    ]


LAYER_ORDERS: tuple[str, ...] = ("top_down", "bottom_up", "independent")


def cascading_randomisation(model: nn.Module, seed: int = 0,
                            layer_order: str = "top_down") -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(layer name, model copy)`` for each randomisable layer (Quantus' ``layer_order``):

    - ``"top_down"`` (Adebayo et al.'s cascade): layers 1..l re-initialised, output side first;
    - ``"bottom_up"``: the same cascade from the input side;
    - ``"independent"``: only layer ``l`` re-initialised, the others trained.

    Works on deep copies; the caller's model is never touched. A layer is re-initialised by
    ``reset_parameters()`` on a CPU copy under ``torch.manual_seed(seed + k)``, ``k`` its position in the
    top-down list (inside a forked RNG: the global RNG is left as it was), so a layer gets the same random
    weights in every order, call, process, DDP rank and device.
    """
    if layer_order not in LAYER_ORDERS:
        raise ValueError(f"layer_order must be one of {LAYER_ORDERS}, got {layer_order!r}")
    names = randomisable_layers(model)
    steps = {name: k for k, name in enumerate(names)}
    order = names if layer_order != "bottom_up" else list(reversed(names))
    clone = copy.deepcopy(model)
    for name in order:
        if layer_order == "independent":
            clone = copy.deepcopy(model)
        layer = dict(clone.named_modules())[name]
        fresh = copy.deepcopy(layer).cpu()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed + steps[name])
            fresh.reset_parameters()
        layer.load_state_dict(fresh.state_dict())
        yield name, clone


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks ``[B, D]`` of each row with ties given their average rank (as ``scipy.stats.rankdata``)."""
    sorted_x = torch.sort(x, dim=1).values
    lo = torch.searchsorted(sorted_x, x.contiguous(), right=False)
    hi = torch.searchsorted(sorted_x, x.contiguous(), right=True)
    return (lo + hi - 1).to(torch.float64) / 2.0


def spearman_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation ``[B]`` between maps ``a`` and ``b`` ``[B, ...]`` (average ranks for ties).

    NaN where a map is constant (its ranks have no variance), as in ``scipy.stats.spearmanr``.
    """
    ra = _average_ranks(a.reshape(a.shape[0], -1).double())
    rb = _average_ranks(b.reshape(b.shape[0], -1).double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    return ((ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1))).to(a.dtype)


def pearson_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation ``[B]`` between maps ``a`` and ``b`` ``[B, ...]`` (NaN where a map is constant, as
    ``scipy.stats.pearsonr``)."""
    x = a.reshape(a.shape[0], -1).double()
    y = b.reshape(b.shape[0], -1).double()
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    return ((x * y).sum(dim=1) / (x.norm(dim=1) * y.norm(dim=1))).to(a.dtype)


def similarity_function(name: str):
    """The map similarity ``f(a [B,...], b [B,...]) -> [B]`` named ``name`` (:data:`SIMILARITIES`)."""
    if name not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {name!r}")
    return {"spearman": spearman_correlation, "pearson": pearson_correlation, "ssim": map_ssim}[name]


def map_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM ``[B]`` between maps ``[B,Cm,H,W]`` after min-max scaling each map to ``[0, 1]`` (Adebayo et al.).

    Gaussian window (sigma 1.5) of side ``min(11, largest odd <= min(H, W))``.
    """

    def scale(m: torch.Tensor) -> torch.Tensor:
        flat = m.reshape(m.shape[0], -1)
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        span = (hi - lo).clamp(min=torch.finfo(m.dtype).tiny).view(-1, 1, 1, 1)
        return (m - lo.view(-1, 1, 1, 1)) / span

    side = min(a.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    return structural_similarity_index_measure(
        scale(a.float()), scale(b.float()), kernel_size=kernel, data_range=1.0, reduction="none"
    ).to(a.dtype)


def model_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    explainer: ExplainerFn,
    maps: torch.Tensor | None = None,
    similarity: Similarity = "spearman",
    abs: bool = True,
    seed: int = 0,
    internal_batch_size: int | None = 128,
    layer_order: str = "top_down",
) -> tuple[torch.Tensor, list[str]]:
    """Similarity between each image's map before and after each cascading-randomisation step.

    Returns ``(curve [B, L], layer names [L])``: ``curve[:, l]`` compares ``phi(x)`` of the trained model
    with ``phi(x)`` of the model whose top ``l + 1`` layers are re-initialised (:func:`cascading_randomisation`).
    A map that stays similar while the weights it should depend on are destroyed fails the sanity check:
    lower is better. ``abs=True`` compares ``|phi|`` (Quantus' default; Adebayo et al. report both).

    Args:
        explainer: ``explainer(model, x [N,C,H,W], y [N]) -> maps [N,Cm,H,W]``.
        maps: ``phi(x)`` of the trained model, if already computed.
        similarity: ``"spearman"`` (rank correlation), ``"pearson"`` or ``"ssim"``.
        layer_order: ``"top_down"`` | ``"bottom_up"`` | ``"independent"`` (:func:`cascading_randomisation`).
    """
    check_explainer(explainer)
    compare = similarity_function(similarity)
    targets_t = check_batch(model, images, targets)
    chunk = check_chunk(internal_batch_size)
    layers = randomisable_layers(model)
    if not layers:
        raise ValueError("the model has no layer with parameters and reset_parameters() to randomise")
    with eval_mode(model):
        if maps is None:
            maps = _maps_of(explainer, model, images, targets_t, chunk)
    original = check_maps(images, maps).detach()
    if abs:
        original = original.abs()
    columns, names = [], []
    for name, randomised in cascading_randomisation(model, seed, layer_order):
        randomised.eval()
        changed = _maps_of(explainer, randomised, images, targets_t, chunk)
        changed = check_maps(images, changed, "maps of the randomised model")
        columns.append(compare(original, changed.abs() if abs else changed))
        names.append(name)
    return torch.stack(columns, dim=1), names


def random_logit(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    explainer: ExplainerFn,
    maps: torch.Tensor | None = None,
    others: torch.Tensor | None = None,
    similarity: Similarity = "ssim",
    seed: int = 0,
    num_classes: int | None = None,
    abs: bool = False,  # noqa: A002
) -> torch.Tensor:
    """Random-logit test (Sixt et al., 2020; Quantus ``RandomLogit``): similarity ``[B]`` between each image's map
    of its class and its map of another class drawn at random (lower is better: the map depends on the class).

    Args:
        others: the other classes ``[B]`` (``None``: drawn uniformly among the ``num_classes - 1`` others from
            each image's key and ``seed``, so an image gets the same class in any batch).
        similarity: ``"ssim"`` (Quantus' default), ``"pearson"`` or ``"spearman"``.
        num_classes: ``K`` (``None``: the model's output width).
        abs: compare ``|phi|`` (Quantus' option and default, ``False``). Quantus' ``normalise`` is not offered here
            or on :func:`model_randomisation`: every similarity is unchanged by a positive factor per map.
    """
    compare = similarity_function(similarity)
    targets_t = check_batch(model, images, targets)
    with eval_mode(model):
        if maps is None:
            maps = explainer(model, images, targets_t)
        maps = check_maps(images, maps).detach()
        if others is None:
            if num_classes is None:
                with torch.no_grad():
                    num_classes = int(model(images[:1]).shape[1])
            u = keyed_uniform(image_keys(images, seed), 1, stream=41)[:, 0]
            shift = 1 + torch.floor(u * (num_classes - 1)).long().clamp(max=num_classes - 2)
            others = (targets_t + shift) % num_classes
        others = torch.as_tensor(others, device=images.device).long().view(-1)
        if torch.any(others == targets_t):
            raise ValueError("the other classes must differ from the targets")
        other_maps = check_maps(images, explainer(model, images, others), "maps of the other classes").detach()
    return compare(prepare_maps(maps, abs), prepare_maps(other_maps, abs))
