"""Blur integrated gradients (Xu et al., 2020; survey section 3.3), as PAIR's ``saliency.core.BlurIG``.

The path runs from a fully blurred image (Gaussian of ``max_sigma``) to the image by shrinking the blur:
``sigma_i = i * max_sigma / steps`` (or ``sqrt(i * max_sigma / steps)``), and

    BlurIG(x) = - sum_{i<steps} (sigma_{i+1} - sigma_i) * d blur(x, sigma_i) / d sigma * grad f(blur(x, sigma_i))

with the derivative in ``sigma`` a forward difference of step ``grad_step``. The blur is
``scipy.ndimage.gaussian_filter`` over the two spatial axes with zero padding (``mode="constant"``) and a kernel
truncated at 4 sigma, as PAIR's, here in torch (a
product with a banded matrix per axis). All ``B * steps`` path points go through the model in chunks of
``internal_batch_size``; ``create_graph`` keeps the graph to the parameters. Deliberate difference: PAIR weighs
every point of a model batch by the sigma step of the batch's last point (the same when the steps are equal, not
with ``sqrt=True`` and ``batch_size > 1``); here each point has its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.gradients import in_layout_of
from impactx.attribution.registry import register
from impactx.core import Output, check_int, check_internal_batch_size, check_output, score_gradients

__all__ = ["BlurIG", "blur_matrix", "scipy_gaussian_blur"]


def scipy_gaussian_blur(images: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(x, [sigma, sigma], mode="constant")`` of each channel of ``images
    [B,C,H,W]`` (zero padding, radius ``int(truncate * sigma + 0.5)``); ``sigma == 0`` returns the images."""
    if sigma == 0:
        return images
    height, width = images.shape[-2:]
    rows = blur_matrix(float(sigma), height, truncate, images.dtype, images.device)
    columns = rows if width == height else blur_matrix(float(sigma), width, truncate, images.dtype, images.device)
    return rows @ images @ columns.T


def blur_matrix(sigma: float, size: int, truncate: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The zero-padded 1-D Gaussian filter along an axis of ``size`` pixels as a ``[size, size]`` matrix: row ``i``
    holds the normalised kernel (radius ``int(truncate * sigma + 0.5)``) centred on ``i``. A product with it costs
    ``size`` multiply-adds per pixel whatever the radius (PAIR's ``max_sigma=50`` has a 401-tap kernel, which a
    convolution over the padded image pays in full although taps past the image's edge only meet zeros)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    index = torch.arange(size, device=device)
    gap = index.view(1, -1) - index.view(-1, 1)
    inside = gap.abs() <= radius
    return torch.where(inside, kernel[(gap + radius).clamp(0, 2 * radius)], torch.zeros((), dtype=dtype, device=device))


@register("blur_ig")
class BlurIG(Explainer):
    """Blur IG (module docstring). ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.

    Args:
        max_sigma: the blur at the start of the path (PAIR: 50).
        steps: path points (PAIR: 100).
        grad_step: the step of the forward difference in sigma (PAIR: 0.01).
        sqrt: square-root spacing of the sigmas (PAIR's option).
        output: the explained score, ``"logit"`` | ``"prob"`` | ``"log_prob"``.
        create_graph: keep the graph to the parameters.
        internal_batch_size: path points per forward/backward (``None``: all).
        reduce_channels: sum over channels (``[B,1,H,W]``).
    """

    def __init__(self, max_sigma: float = 50.0, steps: int = 100, grad_step: float = 0.01, sqrt: bool = False,
                 output: Output = "logit", create_graph: bool = False, internal_batch_size: int | None = None,
                 reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        if isinstance(max_sigma, bool) or not isinstance(max_sigma, int | float) or not max_sigma > 0:
            raise ValueError(f"max_sigma must be a number > 0, got {max_sigma!r}")
        if isinstance(grad_step, bool) or not isinstance(grad_step, int | float) or not grad_step > 0:
            raise ValueError(f"grad_step must be a number > 0, got {grad_step!r}")
        check_output(output)
        self.max_sigma = float(max_sigma)
        self.steps = check_int("steps", steps)
        self.grad_step = float(grad_step)
        self.sqrt = bool(sqrt)
        self.output = output
        self.create_graph = create_graph
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)

    def sigmas(self) -> list[float]:
        """``steps + 1`` blur widths from 0 to ``max_sigma``."""
        values = [i * self.max_sigma / self.steps for i in range(self.steps + 1)]
        return [math.sqrt(v) for v in values] if self.sqrt else values

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        x = inputs if self.create_graph else inputs.detach()
        sigmas = self.sigmas()
        points, slopes = [], []
        for i in range(self.steps):
            blurred = scipy_gaussian_blur(x, sigmas[i])
            points.append(blurred)
            slopes.append((sigmas[i + 1] - sigmas[i]) * (scipy_gaussian_blur(x, sigmas[i] + self.grad_step) - blurred)
                          / self.grad_step)
        batch = inputs.shape[0]
        flat = torch.stack(points, dim=1).reshape(batch * self.steps, *inputs.shape[1:])
        flat = in_layout_of(flat, x)
        _, grads = score_gradients(model, flat, target.repeat_interleave(self.steps), output=self.output,
                                   create_graph=self.create_graph, internal_batch_size=self.internal_batch_size)
        grads = grads.view(batch, self.steps, *inputs.shape[1:])
        return -(torch.stack(slopes, dim=1) * grads).sum(dim=1)
