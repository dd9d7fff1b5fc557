"""ADVISE (advise.txt; code: dehshibi/ADVISE, ``imADVISE.m``, ``ADVISEkernel.m``, ``iComputeSum.m``,
``iCalculateCAMmetrics.m``), batched over images and channels.

Per image, with ``A [K,h,w]`` the output of ``layer`` (default: the last ``nn.Conv2d``) and ``c1``, ``c2`` the
two classes the model scores highest:

1. For every channel, the number of peaks of the locally adaptive kernel density estimate
   (:func:`~impactx.attribution.adaptive_kde.adaptive_kde`) of its ``h*w`` activation values on ``h*w`` points
   of ``[0, 1]``.
2. For every peak count ``p`` that some channel has, Grad-CAM over only those channels,
   ``ReLU(sum_k A_k mean_hw(dy_c/dA_k))``, for ``c1`` and for ``c2``; min-max rescaled, upsampled to the input.
3. Each ``c1`` map ``m`` scored as ``iCalculateCAMmetrics.m`` does: class sensitivity ``R`` (Pearson correlation
   of the ``c1`` and ``c2`` maps), average drop ``max(0, y - o) / y`` of the masked image ``x * m``, SSIM, FSIM
   and MSE between masked and original image, and their harmonic "XAI value"
   ``4 / (1/SSIM + 1/FSIM + 1/(1 - MSE) + 1/(1 - AD))``; when ``c1`` is not in the masked image's top 5, the
   scores are damped by ``1 - |y - o|`` if ``|R| <= 0.55``, else set to the worst values.
4. The map of the highest XAI value is returned (``[B,C,H,W]``, ``map / C`` on each channel, as the CAMs).

Where this deliberately differs from the code, and why:

- **Density of what.** The paper speaks of the gradients' distribution; the code estimates the density of each
  channel's *activations*. Activations it is: the peaks then say how many distinct activation levels (object,
  parts, background) a channel separates, which is what groups channels, and the gradients only enter through
  Grad-CAM's channel weights as in the code. But the code estimates on ``[0, 1]`` and silently drops the
  activations outside it (most of a ReLU layer's); here each channel is min-max scaled to ``[0.1, 0.9]`` first
  (``scale_activations=True``), so every activation counts whatever the layer's scale, and the lowest and
  highest levels lie inside the grid, where they can be peaks (``findpeaks`` never counts an end point).
  ``False`` is the code.
- **Masked image.** The code casts the map to the ``uint8`` image type, which rounds it to 0 or 1 (a binary
  mask at 0.5); the paper multiplies by the map. Here ``x * m`` on unnormalised pixels (``mean``, ``std``
  undo the model's normalisation), the paper's.
- **Average drop** is that of the explained class ``c1`` (the paper's and Grad-CAM++'s definition); the code
  takes the highest score of the masked image, whichever class it belongs to.
- **Upsampling** is PyTorch's bicubic (``align_corners=False``, Keys ``a = -0.75``; MATLAB's ``imresize`` uses
  ``a = -0.5``), clamped to ``[0, 1]`` (bicubic overshoots; the code's ``uint8`` cast saturates the same way).
- SSIM and FSIM are ``piq``'s (the published definitions, as MATLAB's ``ssim`` and the FSIM authors' code).
- With no candidate map (every group's map zero), the Grad-CAM map of all channels is returned.

Not differentiable (a discrete choice among maps). ``last_details`` holds, after each call, the per-image
peak counts, the chosen group and every candidate's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from impactx.attribution.adaptive_kde import adaptive_kde, count_peaks
from impactx.attribution.base import Explainer
from impactx.attribution.cam import capture_output, resolve_layer, spread_over_channels
from impactx.attribution.registry import register
from impactx.core import check_int
from impactx.metrics.functional.advise import (
    advise_scores,
    class_sensitivity,
    normalisation,
    rescale_maps,
    xai_value,
)

__all__ = ["Advise", "AdviseDetails", "advise_scores", "class_sensitivity", "rescale_maps", "xai_value"]

#: Scaled activations fill [0.1, 0.9] of the density's [0, 1] grid: a level at an end of the grid could never be
#: a peak (findpeaks does not count end points), and the lowest and highest levels are the ones that matter.
SCALE_MARGIN = 0.1


@dataclass(frozen=True)
class AdviseDetails:
    """What one ADVISE call chose: ``peaks [B,K]`` per channel, ``groups [P]`` (the peak counts tried),
    ``valid [B,P]`` (a candidate map exists), ``scores`` (name -> ``[B,P]``), ``chosen [B]`` (index into groups;
    -1: the all-channel fallback)."""

    peaks: torch.Tensor
    groups: torch.Tensor
    valid: torch.Tensor
    scores: dict[str, torch.Tensor]
    chosen: torch.Tensor


@register("advise")
class Advise(Explainer):
    """ADVISE (module docstring): Grad-CAM over the channels of one activation-density peak count, chosen by
    the XAI value. ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.

    Args:
        layer: the feature layer by name (``None``: the last ``nn.Conv2d``).
        mean, std: the per-channel normalisation of the inputs, to recover pixels in ``[0, 1]`` for the masked
            images and the similarity scores (default: the inputs are pixels already).
        n_bandwidths: bandwidths the kernel density tries (the code's ``kernelRepeat``, 10).
        scale_activations: min-max scale each channel to ``[0.1, 0.9]`` before the density (``False``: the code,
            which drops activations outside ``[0, 1]``).
        reduce_channels: the map as ``[B,1,H,W]``.
    """

    def __init__(self, layer: str | None = None, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, n_bandwidths: int = 10, scale_activations: bool = True,
                 reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
        if std is not None and any(not s > 0 for s in std):
            raise ValueError(f"std must be positive, got {std!r}")
        self.layer = layer
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.n_bandwidths = check_int("n_bandwidths", n_bandwidths, minimum=2)
        self.scale_activations = bool(scale_activations)
        self.last_details: AdviseDetails | None = None

    # ------------------------------------------------------------------------------------ pieces
    def channel_peaks(self, activations: torch.Tensor) -> torch.Tensor:
        """Peaks ``[B,K]`` of each channel's activation density (step 1)."""
        batch, channels, h, w = activations.shape
        values = activations.detach().reshape(batch * channels, h * w).to(torch.float64)
        if self.scale_activations:
            lo, hi = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)
            unit = torch.where(hi > lo, (values - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi)),
                               torch.zeros_like(values))
            values = SCALE_MARGIN + (1 - 2 * SCALE_MARGIN) * unit
        grid = torch.linspace(0, 1, h * w, dtype=torch.float64, device=values.device)
        density, ok = adaptive_kde(values, grid, self.n_bandwidths)
        peaks = torch.where(ok, count_peaks(density), torch.zeros(ok.shape, dtype=torch.long, device=ok.device))
        return peaks.view(batch, channels)

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        activations, weights, probabilities = self._activations_and_weights(model, inputs, target)
        peaks = self.channel_peaks(activations)
        groups = torch.unique(peaks)
        size = tuple(inputs.shape[-2:])
        batch, n_groups = inputs.shape[0], groups.shape[0]
        member = (peaks.unsqueeze(1) == groups.view(1, -1, 1)).to(activations.dtype)  # [B,P,K]
        raw = F.relu(torch.einsum("bpk,bjk,bkhw->bpjhw", member, weights, activations))  # [B,P,2,h,w]
        valid = (member.sum(dim=2) > 0) & (raw[:, :, 0].flatten(2).sum(dim=2) > 0)  # [B,P]
        maps = F.interpolate(rescale_maps(raw.reshape(-1, 1, *raw.shape[-2:])), size=size, mode="bicubic",
                             align_corners=False).clamp(0, 1).view(batch, n_groups, 2, *size)
        mean, std = normalisation(self.mean, self.std, inputs)
        pixels = (inputs * std + mean).clamp(0, 1)
        # Only the candidates that exist are scored (an image rarely has every peak count of the batch).
        image_of, group_of = valid.nonzero(as_tuple=True)
        scored = advise_scores(
            model, pixels[image_of], maps[image_of, group_of, 0].unsqueeze(1),
            maps[image_of, group_of, 1].unsqueeze(1), target[image_of], probabilities[image_of, 0],
            lambda p: (p - mean) / std,
        )
        scores = {}
        for key, values in scored.items():
            full = torch.full((batch, n_groups), float("nan"), dtype=values.dtype, device=values.device)
            full[image_of, group_of] = values
            scores[key] = full
        xai = torch.where(valid, torch.nan_to_num(scores["xai_value"], nan=-float("inf")),
                          torch.full_like(scores["xai_value"], -float("inf")))
        chosen = xai.argmax(dim=1)
        any_valid = valid.any(dim=1)
        best = maps[torch.arange(batch), chosen, 0].unsqueeze(1)  # [B,1,H,W]
        if not bool(any_valid.all()):
            every = F.relu((weights[:, 0, :, None, None] * activations).sum(dim=1, keepdim=True))
            every = F.interpolate(rescale_maps(every), size=size, mode="bicubic", align_corners=False).clamp(0, 1)
            best = torch.where(any_valid.view(-1, 1, 1, 1), best, every)
        self.last_details = AdviseDetails(peaks, groups, valid, scores,
                                          torch.where(any_valid, chosen, torch.full_like(chosen, -1)))
        return spread_over_channels(best, inputs)

    def _activations_and_weights(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A [B,K,h,w], Grad-CAM channel weights [B,2,K], probabilities [B,2])`` of the explained class and of the
        highest-scored other class (the code's top-1 and top-2 when the explained class is the prediction). As the
        code (its ``reductionLayer`` is the softmax), the scores differentiated are the class probabilities."""
        _, module = resolve_layer(model, self.layer)
        x = inputs.detach().requires_grad_(True)
        with torch.enable_grad(), capture_output(module) as seen:
            probabilities = model(x).softmax(dim=1)
            (activations,) = seen
            others = probabilities.detach().scatter(1, target.view(-1, 1), -1.0).argmax(dim=1)
            weights, values = [], []
            for j, classes in enumerate((target, others)):
                score = probabilities.gather(1, classes.view(-1, 1)).squeeze(1)
                (grad,) = torch.autograd.grad(score.sum(), activations, retain_graph=j == 0)
                weights.append(grad.mean(dim=(2, 3)))
                values.append(score.detach())
        return activations.detach(), torch.stack(weights, dim=1), torch.stack(values, dim=1)
