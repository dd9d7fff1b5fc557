"""Adversarial gradient integration, AGI (Pan et al., 2021; survey section 3.3; code: pd90506/AGI).

For each false class ``k`` (``n_classes`` of them, evenly spaced over the classes as the authors' ``selected_ids``,
the prediction skipped), a path of signed-gradient ascent on ``p_k``::

    x^0 = x,   x^{t+1} = clamp(x^t + eps * sign(grad p_k(x^t))),   until the model predicts k or t = max_iter

and the attribution of the explained class ``y`` integrates its probability's gradient along the way::

    AGI(x) = sum_k sum_t - grad p_y(x^t) * (x^{t+1} - x^t)

Deliberate difference from the authors' code: there, every step restarts from the original image
(``perturbed_image = image + delta`` with ``image`` the input), so the "path" never leaves one ``eps`` step around
``x``; here the steps accumulate, as the paper's Algorithm 1 writes. All ``B * n_classes`` paths run as one batch
(each path stops on its own: finished ones stay where they are). Not differentiable (sign steps).
"""

from __future__ import annotations

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.registry import register
from impactx.core import check_int

__all__ = ["AGI", "false_classes"]


def false_classes(num_classes: int, n_classes: int) -> list[int]:
    """The classes AGI walks towards: ``range(0, K - 1, K // n)`` (the authors' ``selected_ids``), at most ``n``."""
    step = max(1, num_classes // n_classes)
    return list(range(0, num_classes - 1, step))[:n_classes] if num_classes > 1 else []


@register("agi")
class AGI(Explainer):
    """AGI (module docstring). ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.

    Args:
        eps: the step size (authors: 0.05, on pixels in [0, 1]).
        max_iter: steps per path (authors: 50).
        n_classes: false classes walked towards (authors' ``topk``: 20).
        clamp: ``(low, high)`` bounds of the inputs (the authors clamp pixels to [0, 1]; ``None``: no clamp).
        reduce_channels: sum over channels (``[B,1,H,W]``).
    """

    def __init__(self, eps: float = 0.05, max_iter: int = 50, n_classes: int = 20,
                 clamp: tuple[float, float] | None = None, reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        if clamp is not None and (len(clamp) != 2 or not clamp[0] < clamp[1]):
            raise ValueError(f"clamp must be (low, high) with low < high, got {clamp!r}")
        self.eps = float(eps)
        self.max_iter = check_int("max_iter", max_iter)
        self.n_classes = check_int("n_classes", n_classes)
        self.clamp = None if clamp is None else (float(clamp[0]), float(clamp[1]))

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            logits = model(inputs)
        num_classes = logits.shape[1]
        predicted = logits.argmax(dim=1)
        classes = torch.tensor(false_classes(num_classes, self.n_classes), device=inputs.device)
        batch, k = inputs.shape[0], classes.shape[0]
        image_of = torch.arange(batch, device=inputs.device).repeat_interleave(k)
        towards = classes.repeat(batch)
        active = towards != predicted[image_of]  # the prediction itself is not attacked
        labels = target[image_of]
        x = inputs.detach()[image_of].clone()
        total = torch.zeros_like(x)
        for _ in range(self.max_iter):
            # Only the paths still walking go through the model: a batch would otherwise pay every iteration for
            # the paths that reached their class early.
            rows = active.nonzero().flatten()
            if rows.numel() == 0:
                break
            here, aim = x[rows], towards[rows]
            with torch.enable_grad():
                point = here.detach().requires_grad_(True)
                out = model(point)
                probabilities = out.softmax(dim=1)
                walking = out.argmax(dim=1) != aim
                (grad_adv,) = torch.autograd.grad(probabilities.gather(1, aim[:, None]).sum(), point,
                                                  retain_graph=True)
                (grad_lab,) = torch.autograd.grad(probabilities.gather(1, labels[rows, None]).sum(), point)
            step = here + self.eps * grad_adv.sign()
            if self.clamp is not None:
                step = step.clamp(*self.clamp)
            move = torch.where(walking.view(-1, 1, 1, 1), step - here, torch.zeros_like(here))
            total[rows] = total[rows] - grad_lab * move
            x[rows] = here + move
            active[rows] = walking
        return total.view(batch, k, *inputs.shape[1:]).sum(dim=1)
