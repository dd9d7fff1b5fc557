"""Axiomatic checks of attribution maps (survey section 4): completeness, non-sensitivity, input invariance."""

from __future__ import annotations

import torch
from torch import nn

from impactx.core import eval_mode, forward_scores
from impactx.metrics.functional.sensitivity import ExplainerFn
from impactx.metrics.functional.validation import check_batch, check_maps, check_output_name

__all__ = ["ShiftedInput", "completeness_gap", "input_invariance", "non_sensitivity"]


def completeness_gap(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    baseline: float | torch.Tensor = 0.0,
    output: str = "logit",
    relative: bool = False,
) -> torch.Tensor:
    """``|sum(phi) - (f(x) - f(x'))|`` per image -> ``[B]`` (Sundararajan et al., 2017), ``x'`` the ``baseline`` (a
    number or a tensor broadcastable to the images, in the model's input units); ``relative`` divides by
    ``|f(x) - f(x')|``. 0 for a complete method (IG, EG, DeepLIFT, IDGI from the same baseline). Quantus'
    ``Completeness`` tests ``sum(phi) == f(x) - f(x')`` with float equality, which almost never holds; the gap
    says by how much it fails."""
    targets_t = check_batch(model, images, targets)
    check_output_name(output)
    maps = check_maps(images, maps).detach()
    reference = torch.as_tensor(baseline, dtype=images.dtype, device=images.device).expand_as(images)
    with eval_mode(model):
        gap = forward_scores(model, images, targets_t, output) - forward_scores(model, reference, targets_t, output)
    difference = (maps.flatten(1).sum(dim=1).to(gap.dtype) - gap).abs()
    return difference / gap.abs().clamp_min(1e-12) if relative else difference


def non_sensitivity(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    maps: torch.Tensor,
    eps: float = 1e-5,
    features_in_step: int = 1,
    baseline: float | str = "black",
    abs: bool = True,  # noqa: A002
    output: str = "logit",
    internal_batch_size: int | None = 256,
) -> torch.Tensor:
    """Non-sensitivity violations per image ``[B]`` (Nguyen & Martinez, 2020; Quantus ``NonSensitivity``): the
    features (entries of the flattened image, ``features_in_step`` at a time, in order) whose attribution is
    below ``eps`` but whose replacement by ``baseline`` moves the score by ``eps`` or more, plus those with an
    attribution that do not move it. 0 is best. ``baseline``: ``"black"`` (each image's minimum, as Quantus) or a
    number. A group of features counts as attribution-free when all of its entries are (Quantus supports one
    feature per step only). All ``B * ceil(D / features_in_step)`` perturbed images are scored in chunks."""
    targets_t = check_batch(model, images, targets)
    check_output_name(output)
    maps = check_maps(images, maps).detach()
    b = images.shape[0]
    flat = images.reshape(b, -1)
    d = flat.shape[1]
    if maps.numel() != images.numel():
        raise ValueError(f"non-sensitivity compares maps with input features: maps {list(maps.shape)} must have the "
                         f"images' {list(images.shape)} entries")
    attribution = maps.reshape(b, -1).abs() if abs else maps.reshape(b, -1)
    k = int(features_in_step)
    if k < 1:
        raise ValueError(f"features_in_step must be >= 1, got {features_in_step!r}")
    steps = -(-d // k)
    fill = flat.amin(dim=1) if baseline == "black" else torch.full((b,), float(baseline), dtype=flat.dtype,
                                                                     device=flat.device)
    chunk = internal_batch_size or b * steps
    with eval_mode(model):
        original = forward_scores(model, images, targets_t, output)
        moved = []
        for start in range(0, b * steps, chunk):
            q = torch.arange(start, min(b * steps, start + chunk), device=images.device)
            image, step = q // steps, q % steps
            perturbed = flat[image].clone()
            column = torch.arange(d, device=images.device).view(1, -1)
            inside = (column >= (step * k).view(-1, 1)) & (column < ((step + 1) * k).view(-1, 1))
            perturbed = torch.where(inside, fill[image].view(-1, 1), perturbed)
            scores = forward_scores(model, perturbed.view(-1, *images.shape[1:]), targets_t[image], output)
            moved.append((scores - original[image]).abs() >= eps)
    moved = torch.cat(moved).view(b, steps)
    padded = torch.nn.functional.pad(attribution < eps, (0, steps * k - d), value=True)
    attribution_free = padded.view(b, steps, k).all(dim=2)
    return (moved == attribution_free).sum(dim=1).to(images.dtype)


class ShiftedInput(nn.Module):
    """``model`` behind a constant input shift: ``ShiftedInput(model, c)(x + c) == model(x)`` (Kindermans et al.'s
    compensated network, the same function of the shifted input)."""

    def __init__(self, model: nn.Module, shift: float) -> None:
        super().__init__()
        self.model = model
        self.shift = float(shift)
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x - self.shift)


def input_invariance(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    explainer: ExplainerFn,
    maps: torch.Tensor | None = None,
    shift: float = -1.0,
) -> torch.Tensor:
    """Input invariance (Kindermans et al., 2019; Quantus ``InputInvariance``) per image ``[B]``: the relative change
    ``||phi'(x + c) - phi(x)|| / ||phi(x)||`` of the map when the input is shifted by ``c`` and the model compensates
    (:class:`ShiftedInput`, the same function), 0 for an invariant method (gradients, saliency, a baseline shifted
    with the input), > 0 for input x gradient or IG from a fixed zero baseline. Quantus tests exact equality of the
    two maps (a bool); this says by how much they differ. The explainer sees the compensated model as a wrapper
    (its layers under ``model.``), so methods that name a layer need the prefixed name."""
    targets_t = check_batch(model, images, targets)
    with eval_mode(model):
        if maps is None:
            maps = explainer(model, images, targets_t)
        maps = check_maps(images, maps).detach()
        shifted = explainer(ShiftedInput(model, shift), images + shift, targets_t).detach()
    change = (shifted.reshape(maps.shape[0], -1) - maps.reshape(maps.shape[0], -1)).norm(dim=1)
    return change / maps.reshape(maps.shape[0], -1).norm(dim=1).clamp_min(1e-12)
