"""Boundary-based integrated gradients, BIG (Wang, Fredrikson & Datta, 2022; survey section 3.3): IG from a nearby
point on the other side of the decision boundary instead of a fixed baseline.

The boundary point of each image is found by an untargeted projected gradient attack in an L-inf ball of
``radius``: ``x^{t+1} = clip_ball(x^t - step * sign(grad log p_y(x^t)))``, ``steps`` times, each image keeping the
first iterate whose prediction is no longer its class (the image itself, and so a zero map, when none is found
within the budget: the authors use an ensemble of attacks; one PGD keeps it simple and batched). Then
``BIG(x) = IG(x; baseline = x_boundary)`` with :class:`~impactx.attribution.ig.IntegratedGradients`' quadrature.
``boundary_points`` returns the points. Not differentiable through the attack.
"""

from __future__ import annotations

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.ig import quadrature
from impactx.attribution.paths import path_attribution
from impactx.attribution.registry import register
from impactx.core import Output, check_int, check_output, eval_mode

__all__ = ["BoundaryIG"]


@register("boundary_ig")
class BoundaryIG(Explainer):
    """BIG (module docstring). ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.

    Args:
        radius: the L-inf budget of the attack (inputs' units).
        steps: attack iterations; step: its step size (``None``: ``2.5 * radius / steps``).
        n_steps, method: IG's quadrature from the boundary point.
        output: the explained score of IG (``"logit"`` | ``"prob"`` | ``"log_prob"``).
        reduce_channels: sum over channels (``[B,1,H,W]``).
    """

    def __init__(self, radius: float = 0.5, steps: int = 20, step: float | None = None, n_steps: int = 32,
                 method: str = "gausslegendre", output: Output = "logit", reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        if isinstance(radius, bool) or not isinstance(radius, int | float) or not radius > 0:
            raise ValueError(f"radius must be a number > 0, got {radius!r}")
        check_output(output)
        quadrature(method, n_steps)
        self.radius = float(radius)
        self.steps = check_int("steps", steps)
        self.step = 2.5 * self.radius / self.steps if step is None else float(step)
        self.n_steps = n_steps
        self.method = method
        self.output = output

    def boundary_points(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[B,C,H,W]``: each image's first attack iterate classified as another class (the image if none)."""
        x = inputs.detach()
        found = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        point = x.clone()
        with eval_mode(model):
            for _ in range(self.steps):
                with torch.enable_grad():
                    point = point.detach().requires_grad_(True)
                    log_p = model(point).log_softmax(dim=1).gather(1, target[:, None]).sum()
                    (grad,) = torch.autograd.grad(log_p, point)
                point = (point.detach() - self.step * grad.sign())
                point = torch.minimum(torch.maximum(point, x - self.radius), x + self.radius)
                with torch.no_grad():
                    crossed = model(point).argmax(dim=1) != target
                new = crossed & ~done
                found = torch.where(new.view(-1, 1, 1, 1), point, found)
                done = done | crossed
                if bool(done.all()):
                    break
        return found

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        baselines = self.boundary_points(model, inputs, target)
        alphas, weights = quadrature(self.method, self.n_steps)
        batch = inputs.shape[0]
        return path_attribution(
            model, inputs, target,
            references=baselines.unsqueeze(1).expand(batch, self.n_steps, *inputs.shape[1:]),
            alphas=alphas.to(inputs).expand(batch, -1), weights=weights.to(inputs).expand(batch, -1),
            output=self.output,
        )
