"""The CAM family on a convolutional layer chosen by name: Grad-CAM, Grad-CAM++, guided Grad-CAM, Score-CAM.

With ``A [B,K,h,w]`` the layer's output (``layer``: a name in ``model.named_modules()``; ``None``: the last
``nn.Conv2d``) and ``g = d f_t / d A`` the gradient of the explained score:

- ``gradcam`` (Selvaraju et al., 2017): ``ReLU(sum_k mean_hw(g_k) A_k)`` (Captum ``LayerGradCam`` with
  ``relu_attributions=True``; pytorch-grad-cam ``GradCAM``).
- ``gradcam_pp`` (Chattopadhay et al., 2018, Eq. 19): weights ``sum_hw ReLU(g) * a``, with
  ``a = g^2 / (2 g^2 + sum_hw(A) g^3)`` where ``g != 0`` (0 elsewhere), as pytorch-grad-cam ``GradCAMPlusPlus``
  (first-order approximation: the gradients of an exponential score, as in the paper's derivation).
- ``guided_gradcam``: guided backprop ``[B,C,H,W]`` times the Grad-CAM map upsampled to the input (Captum
  ``GuidedGradCam``; ``interpolate_mode`` ``"nearest"`` by default there and here).
- ``scorecam`` (Wang et al., 2020), as pytorch-grad-cam ``ScoreCAM``: each channel upsampled to the input
  (bilinear, ``align_corners=True``), min-max scaled to ``[0, 1]``, the image masked by it and scored; the
  weights are the softmax over channels of those scores. (The paper's weights are the increase in the class
  probability over a baseline image; pytorch-grad-cam, the reference here, uses the raw logits and a softmax
  across channels, and so do we.) Forward passes only: ``needs_gradients = False``.

Each map is upsampled to the input (``interpolate_mode``, bilinear by default, ``align_corners=False``) and,
to keep the contract's ``[B,C,H,W]``, spread evenly over the ``C`` input channels (each holds ``map / C``, so the
channel sum, ``reduce_channels=True``, is the map). Everything is batched: one forward and one backward for the
gradient CAMs; Score-CAM scores all ``B * K`` masked images in chunks of ``internal_batch_size``.
``create_graph=True`` (Grad-CAM, Grad-CAM++) keeps the graph to the model's parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.gradients import guided_gradients
from impactx.attribution.registry import register
from impactx.core import Output, check_internal_batch_size, check_output, target_scores

__all__ = ["GradCam", "GradCamPlusPlus", "GuidedGradCam", "ScoreCam", "resolve_layer"]

INTERPOLATE_MODES = ("bilinear", "nearest", "bicubic")


def resolve_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``layer`` in ``model.named_modules()``; ``None``: the last ``nn.Conv2d``."""
    modules = dict(model.named_modules())
    convs = [name for name, module in modules.items() if isinstance(module, nn.Conv2d)]
    if layer is None:
        if not convs:
            raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer; name the layer to explain")
        layer = convs[-1]
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}; its Conv2d layers are {convs}")
    return layer, modules[layer]


@contextmanager
def capture_output(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The outputs of ``module`` during the body (one per call), kept attached to the graph."""
    seen: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: Any, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ValueError(f"the CAM layer must output [B,K,h,w], got {type(output).__name__} "
                             f"{list(getattr(output, 'shape', []))}")
        seen.append(output)

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def spread_over_channels(maps: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``maps [B,1,H,W]`` as ``[B,C,H,W]`` with ``maps / C`` on each channel (so the channel sum is ``maps``)."""
    channels = inputs.shape[1]
    return (maps / channels).expand(-1, channels, -1, -1)


class _LayerCam(Explainer):
    """What the CAMs share: the layer, the explained score, the upsampling."""

    def __init__(self, layer: str | None = None, output: Output = "logit", interpolate_mode: str = "bilinear",
                 reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        check_output(output)
        if interpolate_mode not in INTERPOLATE_MODES:
            raise ValueError(f"interpolate_mode must be one of {INTERPOLATE_MODES}, got {interpolate_mode!r}")
        self.layer = layer
        self.output = output
        self.interpolate_mode = interpolate_mode

    def upsample(self, cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``cams [B,1,h,w]`` at ``size`` (unchanged when the layer already has the input's resolution)."""
        if tuple(cams.shape[-2:]) == tuple(size):
            return cams
        align = False if self.interpolate_mode in ("bilinear", "bicubic") else None
        return F.interpolate(cams, size=size, mode=self.interpolate_mode, align_corners=align)

    def layer_cam(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The map at the layer's resolution ``[B,1,h,w]`` (model already in eval mode)."""
        raise NotImplementedError

    def layer_maps(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """Public, validated form of :meth:`layer_cam` (eval mode, restored): ``[B,1,h,w]``."""
        return self._run(lambda m, x, t, _: self.layer_cam(m, x, t), model, inputs, target, None)

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        cams = self.upsample(self.layer_cam(model, inputs, target), tuple(inputs.shape[-2:]))
        return spread_over_channels(cams, inputs)


class _GradientCam(_LayerCam):
    """A CAM from the layer's activations and the gradient of the score with respect to them."""

    def __init__(self, layer: str | None = None, output: Output = "logit", interpolate_mode: str = "bilinear",
                 create_graph: bool = False, reduce_channels: bool = False) -> None:
        super().__init__(layer, output, interpolate_mode, reduce_channels)
        self.create_graph = create_graph

    def activations_and_gradients(self, model: nn.Module, inputs: torch.Tensor,
                                  target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, module = resolve_layer(model, self.layer)
        # A detached copy that requires grad puts the layer's output in a graph even when no parameter does.
        x = inputs if self.create_graph else inputs.detach().requires_grad_(True)
        with torch.enable_grad(), capture_output(module) as seen:
            scores = target_scores(model(x), target, self.output)
            if len(seen) != 1:
                raise ValueError(f"layer {self.layer!r} ran {len(seen)} times in one forward; CAMs need one call")
            (activations,) = seen
            (grads,) = torch.autograd.grad(scores.sum(), activations, create_graph=self.create_graph)
        if not self.create_graph:
            activations = activations.detach()
        return activations, grads

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights ``[B,K]``."""
        raise NotImplementedError

    def layer_cam(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        activations, grads = self.activations_and_gradients(model, inputs, target)
        weights = self.weights(activations, grads)
        return F.relu((weights[:, :, None, None] * activations).sum(dim=1, keepdim=True))


@register("gradcam")
class GradCam(_GradientCam):
    """Grad-CAM: ``ReLU(sum_k mean_hw(d f_t / d A_k) A_k)`` upsampled to the input (module docstring).

    Args:
        layer: the convolutional layer by name (``None``: the last ``nn.Conv2d``).
        output: the explained score, ``"logit"`` (as Captum and pytorch-grad-cam) | ``"prob"`` | ``"log_prob"``.
        interpolate_mode: ``"bilinear"`` | ``"nearest"`` | ``"bicubic"`` upsampling to the input.
        create_graph: keep the graph to the model's parameters.
        reduce_channels: the map as ``[B,1,H,W]`` (otherwise ``[B,C,H,W]``, ``map / C`` on each channel).
    """

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3))


@register("gradcam_pp")
class GradCamPlusPlus(_GradientCam):
    """Grad-CAM++ (Eq. 19 of Chattopadhay et al., as pytorch-grad-cam); options as :class:`GradCam`."""

    eps = 1e-6

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        squared = grads * grads
        sums = activations.sum(dim=(2, 3), keepdim=True)
        alpha = squared / (2 * squared + sums * squared * grads + self.eps)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (F.relu(grads) * alpha).sum(dim=(2, 3))


@register("guided_gradcam")
class GuidedGradCam(GradCam):
    """Guided Grad-CAM: guided backprop ``[B,C,H,W]`` times the upsampled Grad-CAM map (Captum
    ``GuidedGradCam``; ``interpolate_mode="nearest"`` by default, as there). Not differentiable (guided backprop);
    options ``layer``, ``output``, ``interpolate_mode``, ``reduce_channels``."""

    def __init__(self, layer: str | None = None, output: Output = "logit", interpolate_mode: str = "nearest",
                 reduce_channels: bool = False) -> None:
        super().__init__(layer, output, interpolate_mode, create_graph=False, reduce_channels=reduce_channels)

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        cams = self.upsample(self.layer_cam(model, inputs, target), tuple(inputs.shape[-2:]))
        return guided_gradients(model, inputs, target, self.output) * cams


@register("scorecam")
class ScoreCam(_LayerCam):
    """Score-CAM (module docstring; as pytorch-grad-cam ``ScoreCAM``). Forward passes only.

    Args:
        layer, output, interpolate_mode, reduce_channels: as :class:`GradCam` (``interpolate_mode`` upsamples
            the final map; the channel masks are always bilinear with ``align_corners=True``, as the reference).
        internal_batch_size: masked images per forward pass (``None``: 256).
    """

    needs_gradients = False
    mask_eps = 1e-8

    def __init__(self, layer: str | None = None, output: Output = "logit", interpolate_mode: str = "bilinear",
                 internal_batch_size: int | None = None, reduce_channels: bool = False) -> None:
        super().__init__(layer, output, interpolate_mode, reduce_channels)
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)

    @torch.no_grad()
    def layer_cam(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, module = resolve_layer(model, self.layer)
        with capture_output(module) as seen:
            model(inputs)
        activations = seen[0]
        batch, channels = activations.shape[:2]
        masks = F.interpolate(activations, size=inputs.shape[-2:], mode="bilinear", align_corners=True)
        flat = masks.flatten(2)
        lo, hi = flat.min(dim=2).values[:, :, None, None], flat.max(dim=2).values[:, :, None, None]
        masks = ((masks - lo) / (hi - lo + self.mask_eps)).flatten(0, 1).unsqueeze(1)  # [B*K,1,H,W]
        image_of = torch.arange(batch, device=inputs.device).repeat_interleave(channels)
        targets = target.repeat_interleave(channels)
        chunk = self.internal_batch_size or 256
        # Each chunk's masked images are built as it is scored: all B*K at once (8192 images for 16 ResNet
        # inputs) would be a tensor far outside the cache, written once and read once.
        scores = torch.cat([
            target_scores(model(inputs[image_of[i:i + chunk]] * masks[i:i + chunk]), targets[i:i + chunk],
                          self.output)
            for i in range(0, masks.shape[0], chunk)]).view(batch, channels)
        weights = scores.softmax(dim=1)
        return F.relu((weights[:, :, None, None] * activations).sum(dim=1, keepdim=True))
