"""ADVISE's scores of a map (``iCalculateCAMmetrics.m`` of dehshibi/ADVISE): class sensitivity, average drop, SSIM,
FSIM and MSE of the masked image, and their harmonic XAI value. Used by the ``advise`` explainer to choose its map
and by the :class:`~impactx.metrics.ClassSensitivity` and :class:`~impactx.metrics.XAIValue` metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from impactx.metrics.functional.randomisation import pearson_correlation

__all__ = ["SENSITIVITY_LIMIT", "advise_scores", "class_sensitivity", "normalisation", "rescale_maps", "xai_value"]

#: ``|R|`` up to this: the maps of the two classes are told apart (``iCalculateCAMmetrics.m``).
SENSITIVITY_LIMIT = 0.55


def class_sensitivity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Pearson correlation ``[N]`` of maps ``first``, ``second [N, ...]`` (0 where undefined, as the code)."""
    return torch.nan_to_num(pearson_correlation(first, second), nan=0.0)


def rescale_maps(maps: torch.Tensor) -> torch.Tensor:
    """MATLAB ``rescale`` of each map ``[N,1,h,w]`` to ``[0,1]`` (a constant map becomes 0)."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(dim=1).view(-1, 1, 1, 1), flat.amax(dim=1).view(-1, 1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def normalisation(mean: Sequence[float] | None, std: Sequence[float] | None,
                  inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` as ``[1,C,1,1]`` tensors of the inputs' device and dtype (``None``: 0 and 1, the inputs are
    pixels already), to turn model inputs into pixels (``x * std + mean``) and back."""
    channels = inputs.shape[1]
    mean_t = torch.zeros(channels) if mean is None else torch.tensor(list(mean), dtype=torch.float64)
    std_t = torch.ones(channels) if std is None else torch.tensor(list(std), dtype=torch.float64)
    if mean_t.numel() != channels or std_t.numel() != channels:
        raise ValueError(f"mean and std have {mean_t.numel()} and {std_t.numel()} values, the inputs {channels} channels")
    shape = (1, channels, 1, 1)
    return mean_t.view(shape).to(inputs), std_t.view(shape).to(inputs)


def xai_value(ssim: torch.Tensor, fsim: torch.Tensor, mse: torch.Tensor, average_drop: torch.Tensor) -> torch.Tensor:
    """ADVISE's harmonic combination ``4 / (1/SSIM + 1/FSIM + 1/(1 - MSE) + 1/(1 - AD))``."""
    return 4 / (1 / ssim + 1 / fsim + 1 / (1 - mse) + 1 / (1 - average_drop))


def advise_scores(model: nn.Module, pixels: torch.Tensor, maps: torch.Tensor, second_maps: torch.Tensor,
                  target: torch.Tensor, probabilities: torch.Tensor, normalise: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """``iCalculateCAMmetrics.m`` for ``N`` candidates: ``pixels [N,C,H,W]`` in ``[0,1]``, ``maps``/``second_maps``
    ``[N,1,H,W]`` in ``[0,1]`` (of the explained and the runner-up class), ``target [N]``, ``probabilities [N]``
    (the explained class's on the unmasked image), ``normalise`` (pixels -> model input). Returns ``[N]`` each of
    ``class_sensitivity``, ``average_drop``, ``ssim``, ``fsim``, ``mse``, ``xai_value``, ``hit``."""
    import piq

    masked = pixels * maps
    with torch.no_grad():
        masked_probabilities = model(normalise(masked)).softmax(dim=1)
    kept = masked_probabilities.gather(1, target.view(-1, 1)).squeeze(1)
    top5 = masked_probabilities.topk(min(5, masked_probabilities.shape[1]), dim=1).indices
    hit = (top5 == target.view(-1, 1)).any(dim=1)
    sensitivity = class_sensitivity(maps, second_maps)
    drop = (probabilities - kept).clamp(min=0) / probabilities
    # MATLAB's ssim window (Gaussian, sigma 1.5, 11 px), cut to the largest odd size the image holds.
    side = min(pixels.shape[-2:])
    window = min(11, side if side % 2 else side - 1)
    ssim = piq.ssim(masked, pixels, kernel_size=window, data_range=1.0, reduction="none", downsample=False)
    fsim = piq.fsim(masked, pixels, data_range=1.0, reduction="none", chromatic=pixels.shape[1] == 3)
    mse = ((masked - pixels) ** 2).flatten(1).mean(dim=1)
    damp = 1 - (probabilities - kept).abs()
    balanced = sensitivity.abs() <= SENSITIVITY_LIMIT
    missed = ~hit
    drop = torch.where(missed & balanced, drop * damp, torch.where(missed, torch.ones_like(drop), drop))
    ssim = torch.where(missed & balanced, ssim * damp, torch.where(missed, torch.zeros_like(ssim), ssim))
    fsim = torch.where(missed & balanced, fsim * damp, torch.where(missed, torch.zeros_like(fsim), fsim))
    mse = torch.where(missed & balanced, mse * damp, torch.where(missed, torch.ones_like(mse), mse))
    return {"class_sensitivity": sensitivity, "average_drop": drop, "ssim": ssim, "fsim": fsim, "mse": mse,
            "xai_value": xai_value(ssim, fsim, mse, drop), "hit": hit.to(pixels.dtype)}
