"""FullGrad (Srinivas & Fleuret, 2019; survey section 3.1), as pytorch-grad-cam's ``FullGrad``.

    FullGrad(x) = psi(|x * grad_x f|) + sum_{layers l} sum_{channels k} psi(|b_lk * grad_{z_l} f|_k)

over every ``nn.Conv2d`` with a bias and every ``nn.BatchNorm2d`` (whose bias is the effective
``beta - mu * gamma / sqrt(var + eps)`` in eval mode), ``z_l`` the layer's output. ``psi`` min-max scales each
channel map of each image to ``[0, 1]`` and resizes it bilinearly to the input (the paper rescales each map;
pytorch-grad-cam, the reference, each channel, and so do we); the input term keeps its ``C`` channels, each layer
term is summed over its channels, everything is summed and the result min-max scaled per image. One forward and
one backward for the whole batch; not differentiable (min-max scaling of every map). The map is spread over the
input channels as the CAMs' (``map / C`` each).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.cam import spread_over_channels
from impactx.attribution.registry import register
from impactx.core import Output, check_output, target_scores

__all__ = ["FullGrad", "bias_layers"]

_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The ``nn.Conv2d`` (with a bias) and ``nn.BatchNorm2d`` layers FullGrad reads, in registration order."""
    return [m for m in model.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None]


def effective_bias(layer: nn.Module) -> torch.Tensor:
    """The bias ``[K]`` a layer adds: a convolution's own, a BatchNorm's ``beta - mu * gamma / sqrt(var + eps)``."""
    if isinstance(layer, nn.BatchNorm2d):
        return (layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps)).detach()
    return layer.bias.detach()


def _scale(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each ``[h,w]`` map of ``maps [B,K,h,w]`` min-max scaled to ``[0, 1]`` (pytorch-grad-cam's
    ``scale_cam_image``: ``(m - min) / (1e-7 + max)`` after the shift), then resized bilinearly to ``size``."""
    flat = maps.flatten(2)
    shifted = maps - flat.amin(dim=2)[..., None, None]
    scaled = shifted / (_EPS + shifted.flatten(2).amax(dim=2)[..., None, None])
    if tuple(scaled.shape[-2:]) != tuple(size):
        scaled = F.interpolate(scaled, size=size, mode="bilinear", align_corners=False)
    return scaled


@register("fullgrad")
class FullGrad(Explainer):
    """FullGrad (module docstring). ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]`` (``map / C`` on
    each channel; ``reduce_channels=True`` gives the map ``[B,1,H,W]`` in ``[0, 1]``).

    Args:
        output: the explained score, ``"logit"`` (as pytorch-grad-cam) | ``"prob"`` | ``"log_prob"``.
        reduce_channels: the map as ``[B,1,H,W]``.
    """

    def __init__(self, output: Output = "logit", reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        check_output(output)
        self.output = output

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        layers = bias_layers(model)
        outputs: list[torch.Tensor] = []
        handles = [layer.register_forward_hook(lambda m, a, out: outputs.append(out)) for layer in layers]
        try:
            with torch.enable_grad():
                x = inputs.detach().requires_grad_(True)
                scores = target_scores(model(x), target, self.output)
                if len(outputs) != len(layers):
                    raise ValueError(f"FullGrad needs each bias layer to run once per forward; {len(layers)} layers "
                                     f"produced {len(outputs)} outputs")
                grads = torch.autograd.grad(scores.sum(), [x, *outputs])
        finally:
            for handle in handles:
                handle.remove()
        size = tuple(inputs.shape[-2:])
        total = _scale((grads[0] * x.detach()).abs(), size).sum(dim=1, keepdim=True)
        for layer, grad in zip(layers, grads[1:], strict=True):
            bias = effective_bias(layer).to(grad).view(1, -1, 1, 1)
            total = total + _scale((bias * grad).abs(), size).sum(dim=1, keepdim=True)
        return spread_over_channels(_scale(total, size), inputs)
