"""Important-direction gradient integration, IDGI (Yang et al., 2023; survey section 3.3), on the straight IG path.

With path points ``x_j = x' + (j / n) (x - x')``, ``j = 0..n``, gradients ``g_j = grad f(x_j)`` and score steps
``d_j = f(x_{j+1}) - f(x_j)``:

    IDGI(x) = sum_{j<n} (g_j * g_j / ||g_j||^2) * d_j

Each step's change of the score is given to the features along the gradient's direction only (the part of
``x_{j+1} - x_j`` orthogonal to the gradient cannot change the score to first order), so the map sums to
``f(x) - f(x')`` exactly, whatever ``n`` (completeness by construction). All ``B * (n + 1)`` points are scored
and differentiated as one batch (chunked by ``internal_batch_size``); ``create_graph`` keeps the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.gradients import in_layout_of
from impactx.attribution.ig import resolve_baseline
from impactx.attribution.registry import register
from impactx.core import Output, check_int, check_internal_batch_size, check_output, score_gradients

__all__ = ["IDGI"]


@register("idgi")
class IDGI(Explainer):
    """IDGI on the straight path (module docstring). ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.

    Args:
        n_steps: path segments (``n``; ``n + 1`` points are evaluated).
        baseline: ``"zeros"``, a number or a tensor broadcastable to the inputs.
        output: the explained score, ``"logit"`` | ``"prob"`` | ``"log_prob"``.
        create_graph: keep the graph to the parameters.
        internal_batch_size: path points per forward/backward (``None``: all).
        reduce_channels: sum over channels (``[B,1,H,W]``).
    """

    def __init__(self, n_steps: int = 50, baseline: torch.Tensor | float | str = "zeros", output: Output = "logit",
                 create_graph: bool = False, internal_batch_size: int | None = None,
                 reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        check_output(output)
        self.n_steps = check_int("n_steps", n_steps)
        self.baseline = baseline
        self.output = output
        self.create_graph = create_graph
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        x = inputs if self.create_graph else inputs.detach()
        baseline = resolve_baseline(self.baseline, x)
        n, batch = self.n_steps, inputs.shape[0]
        alphas = torch.arange(n + 1, dtype=x.dtype, device=x.device).div(n).view(1, -1, 1, 1, 1)
        points = (baseline.unsqueeze(1) + alphas * (x - baseline).unsqueeze(1)).reshape(batch * (n + 1), *x.shape[1:])
        points = in_layout_of(points, x)
        scores, grads = score_gradients(model, points, target.repeat_interleave(n + 1), output=self.output,
                                        create_graph=self.create_graph, internal_batch_size=self.internal_batch_size)
        scores = scores.view(batch, n + 1)
        grads = grads.view(batch, n + 1, *x.shape[1:])[:, :n]
        steps = (scores[:, 1:] - scores[:, :-1]).view(batch, n, 1, 1, 1)
        squared = grads * grads
        norms = squared.flatten(2).sum(dim=2).view(batch, n, 1, 1, 1)
        shares = torch.where(norms > 0, squared / torch.where(norms > 0, norms, torch.ones_like(norms)),
                             torch.zeros_like(squared))
        return (shares * steps).sum(dim=1)
