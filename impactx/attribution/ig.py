"""Integrated Gradients (Sundararajan et al., 2017) on one straight path per image.

    IG_i(x) = (x_i - x'_i) * int_0^1 d f(x' + a (x - x')) / d x_i  da
           ~= (x_i - x'_i) * sum_s w_s * d f(x' + a_s (x - x')) / d x_i

with quadrature nodes ``a_s`` and weights ``w_s`` from :func:`quadrature`. All steps of all images are
evaluated as one batch by :func:`impactx.attribution.paths.path_attribution`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.paths import path_attribution
from impactx.attribution.registry import register
from impactx.core import (
    Output,
    check_inputs,
    check_internal_batch_size,
    check_output,
    eval_mode,
    forward_scores,
)

Quadrature = Literal["riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre"]
QUADRATURES: tuple[str, ...] = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle",
                                "gausslegendre")


def quadrature(method: Quadrature, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alphas [n_steps]`` in ``[0, 1]`` and weights ``[n_steps]`` (float64) of ``method``.

    The definitions are captum's (``captum.attr._utils.approximation_methods``), so results agree with
    ``captum.attr.IntegratedGradients``:

    - ``"riemann_trapezoid"``: nodes ``linspace(0, 1, n)``, weights ``1/n`` with both end weights halved.
      Note: these weights sum to ``1 - 1/n`` (a true trapezoid rule on these nodes would use ``1/(n-1)``),
      so completeness holds only up to a relative ``1/n``; kept for agreement with captum.
    - ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``: nodes ``i/n``, ``(i+1)/n``, ``(i+1/2)/n``
      for ``i = 0..n-1``, weights ``1/n`` (sum 1).
    - ``"gausslegendre"``: Gauss-Legendre nodes and weights mapped from ``[-1, 1]`` to ``[0, 1]``
      (weights sum to 1; exact for polynomials of degree ``2n - 1`` along the path).
    """
    if method not in QUADRATURES:
        raise ValueError(f"method must be one of {QUADRATURES}, got {method!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__}")
    if method == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError(f"riemann_trapezoid needs n_steps >= 2, got {n_steps}")
        alphas = torch.linspace(0.0, 1.0, n_steps, dtype=torch.float64)
        weights = torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
        weights[0] /= 2
        weights[-1] /= 2
        return alphas, weights
    if n_steps < 1:
        raise ValueError(f"{method} needs n_steps >= 1, got {n_steps}")
    if method.startswith("riemann_"):
        offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        alphas = (torch.arange(n_steps, dtype=torch.float64) + offset) / n_steps
        return alphas, torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    nodes, w = np.polynomial.legendre.leggauss(n_steps)
    return torch.from_numpy(0.5 * (1.0 + nodes)), torch.from_numpy(0.5 * w)


def resolve_baseline(baseline: torch.Tensor | float | str, inputs: torch.Tensor) -> torch.Tensor:
    """``baseline`` (``"zeros"``, a number, or a tensor broadcastable to ``inputs [B,C,H,W]``) as a
    ``[B,C,H,W]`` tensor (possibly an expanded view) on the inputs' device and dtype."""
    if isinstance(baseline, str):
        if baseline != "zeros":
            raise ValueError(f"baseline must be 'zeros', a number or a tensor, got {baseline!r}")
        return torch.zeros((), dtype=inputs.dtype, device=inputs.device).expand_as(inputs)
    if isinstance(baseline, bool) or not isinstance(baseline, int | float | torch.Tensor):
        raise TypeError(f"baseline must be 'zeros', a number or a tensor, got {type(baseline).__name__}")
    b = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)
    try:
        shape = torch.broadcast_shapes(b.shape, inputs.shape)
    except RuntimeError:
        shape = None
    if shape != inputs.shape:
        raise ValueError(
            f"baseline of shape {list(b.shape)} does not broadcast to the inputs' shape {list(inputs.shape)}"
        )
    return b.expand_as(inputs)


@register("ig")
class IntegratedGradients(Explainer):
    """Integrated Gradients from one baseline.

    Args:
        n_steps: quadrature nodes per path.
        baseline: ``"zeros"``, a constant, or a tensor broadcastable to the inputs (``[C,H,W]``,
            ``[1,C,H,W]``, ``[B,C,H,W]``, ...).
        method: ``"gausslegendre"`` (default, as captum; weights sum to 1, so completeness holds) or
            ``"riemann_trapezoid"`` (captum's rule, short of completeness by ``1/n_steps``; see :func:`quadrature`).
        output: explained score: ``"logit"``, ``"prob"`` (softmax) or ``"log_prob"``.
        create_graph: keep the graph, so the attributions can be backpropagated to the model's parameters.
        internal_batch_size: at most this many path points per forward/backward (``None``: all at once).
        multiply_by_inputs: ``False``: the mean gradient along the path, without the factor ``(x - baseline)``
            (Captum's option).
        reduce_channels: sum the attributions over channels (``[B,1,H,W]``).

    ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``; :meth:`compute_convergence_delta` gives
    Captum's convergence delta of such a result.
    """

    def __init__(
        self,
        n_steps: int = 50,
        baseline: torch.Tensor | float | str = "zeros",
        method: Quadrature = "gausslegendre",
        output: Output = "logit",
        create_graph: bool = False,
        internal_batch_size: int | None = None,
        multiply_by_inputs: bool = True,
        reduce_channels: bool = False,
    ) -> None:
        super().__init__(reduce_channels=reduce_channels)
        quadrature(method, n_steps)  # validates both early
        check_output(output)
        check_internal_batch_size(internal_batch_size)
        self.n_steps = n_steps
        self.baseline = baseline
        self.method = method
        self.output = output
        self.create_graph = create_graph
        self.internal_batch_size = internal_batch_size
        self.multiply_by_inputs = bool(multiply_by_inputs)

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        baseline = resolve_baseline(self.baseline, inputs)
        alphas, weights = quadrature(self.method, self.n_steps)
        batch = inputs.shape[0]
        return path_attribution(
            model,
            inputs,
            target,
            references=baseline.unsqueeze(1).expand(batch, self.n_steps, *inputs.shape[1:]),
            alphas=alphas.to(inputs.device).expand(batch, -1),
            weights=weights.to(inputs.device).expand(batch, -1),
            output=self.output,
            create_graph=self.create_graph,
            internal_batch_size=self.internal_batch_size,
            multiply_by_inputs=self.multiply_by_inputs,
        )

    def compute_convergence_delta(self, model: nn.Module, attributions: torch.Tensor, inputs: torch.Tensor,
                                  target: torch.Tensor | int) -> torch.Tensor:
        """Captum's convergence delta ``[B]``: ``sum(attributions) - (f_t(x) - f_t(baseline))`` per image (how far
        the quadrature is from completeness; meaningful for ``multiply_by_inputs=True``)."""
        target_t = check_inputs(inputs, target, getattr(model, "num_classes", None))
        baseline = resolve_baseline(self.baseline, inputs)
        with eval_mode(model):
            gap = forward_scores(model, inputs, target_t, self.output) - forward_scores(model, baseline, target_t,
                                                                                         self.output)
        return attributions.flatten(1).sum(dim=1).to(gap.dtype) - gap
