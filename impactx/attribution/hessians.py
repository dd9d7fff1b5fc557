"""Integrated Hessians (Janizek et al., 2021; survey section 3.3): feature interactions as IG of IG.

``Gamma_ij(x) = IG_j(IG_i)(x)``: the interaction of features ``i`` and ``j`` is the Integrated Gradients of the
function ``IG_i`` along the same straight path from ``x'``. With ``v = x - x'``, the path points ``p_k = x' + s_k v``
and the inner points ``q_kl = x' + s_k t_l v`` (``s``, ``t`` the ``n_steps`` nodes ``0, 1/(n-1), ..., 1``, as the
authors' ``path_explain``)::

    Gamma_ij = v_j * mean_k dIG_i(p_k)/dp_j,   IG_i(p) = mean_l (p_i - x'_i) g_i(x' + t_l (p - x'))
    dIG_i(p_k)/dp_j = mean_l [ delta_ij g_i(q_kl) + s_k t_l v_i H_ij(q_kl) ]

The full ``[B,C,H,W,C,H,W]`` tensor is too big for images, so this gives:

- the explainer ``integrated_hessians``: the per-feature interaction sums ``sum_j Gamma_ij`` ``[B,C,H,W]``, from
  Hessian-vector products ``H(q) v`` (one double backward per point, all points batched). By the interactions'
  completeness these sums approach IG of the same path (``sum_j Gamma_ij = IG_i`` in the limit);
- :func:`interaction_pairs`: ``Gamma_ij`` for the pairs asked for, ``[B, P]`` (one backward of ``g_i`` per distinct
  ``i`` and point).

The scores' second derivatives must exist: ReLU networks have ``H = 0`` almost everywhere (the interactions are
then the diagonal ``delta_ij`` term only); smooth activations (softplus, GELU, tanh) give real interactions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.ig import resolve_baseline
from impactx.attribution.registry import register
from impactx.core import Output, check_inputs, check_int, check_output, eval_mode, target_scores

__all__ = ["IntegratedHessians", "interaction_pairs"]


def _grid(batch: int, n: int, x: torch.Tensor, baseline: torch.Tensor):
    """Inner points ``q [B, n*n, C,H,W]`` and their ``s_k``, ``t_l`` ``[n*n]``."""
    nodes = torch.linspace(0, 1, n, dtype=x.dtype, device=x.device)
    s = nodes.repeat_interleave(n)
    t = nodes.repeat(n)
    v = (x - baseline).unsqueeze(1)
    q = baseline.unsqueeze(1) + (s * t).view(1, -1, 1, 1, 1) * v
    return q, s, t, v


def _score_and_grad(model: nn.Module, points: torch.Tensor, target: torch.Tensor, output: Output):
    points = points.detach().requires_grad_(True)
    scores = target_scores(model(points), target, output)
    (grads,) = torch.autograd.grad(scores.sum(), points, create_graph=True)
    return points, grads


@register("integrated_hessians")
class IntegratedHessians(Explainer):
    """Per-feature sums of the Integrated Hessians interactions (module docstring).
    ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.

    Args:
        n_steps: nodes per path (the outer and the inner path; ``n_steps**2`` points per image).
        baseline: ``"zeros"``, a number or a tensor broadcastable to the inputs.
        output: the explained score, ``"logit"`` | ``"prob"`` | ``"log_prob"``.
        internal_batch_size: points per double backward (``None``: all).
        reduce_channels: sum over channels (``[B,1,H,W]``).
    """

    def __init__(self, n_steps: int = 16, baseline: torch.Tensor | float | str = "zeros", output: Output = "logit",
                 internal_batch_size: int | None = None, reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        check_output(output)
        self.n_steps = check_int("n_steps", n_steps, minimum=2)
        self.baseline = baseline
        self.output = output
        self.internal_batch_size = internal_batch_size

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        x = inputs.detach()
        baseline = resolve_baseline(self.baseline, x)
        batch, n = x.shape[0], self.n_steps
        q, s, t, v = _grid(batch, n, x, baseline)
        flat = q.reshape(batch * n * n, *x.shape[1:])
        vs = v.expand(-1, n * n, -1, -1, -1).reshape_as(flat)
        labels = target.repeat_interleave(n * n)
        chunk = self.internal_batch_size or flat.shape[0]
        grads, hvps = [], []
        with torch.enable_grad():
            for start in range(0, flat.shape[0], chunk):
                points, g = _score_and_grad(model, flat[start:start + chunk], labels[start:start + chunk],
                                            self.output)
                (hv,) = torch.autograd.grad((g * vs[start:start + chunk]).sum(), points, allow_unused=True)
                grads.append(g.detach())
                hvps.append(torch.zeros_like(g) if hv is None else hv.detach())
        g = torch.cat(grads).view(batch, n * n, *x.shape[1:])
        hv = torch.cat(hvps).view(batch, n * n, *x.shape[1:])
        weight = (s * t).view(1, -1, 1, 1, 1)
        return (v * g + weight * v * hv).mean(dim=1)


def interaction_pairs(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor | int,
                      pairs: Sequence[tuple[int, int]], n_steps: int = 16,
                      baseline: torch.Tensor | float | str = "zeros", output: Output = "logit") -> torch.Tensor:
    """``Gamma_ij`` ``[B, P]`` for ``pairs`` of flat feature indices (into ``C*H*W``), module docstring."""
    check_output(output)
    n = check_int("n_steps", n_steps, minimum=2)
    target_t = check_inputs(inputs, target, getattr(model, "num_classes", None))
    x = inputs.detach()
    batch = x.shape[0]
    size = x[0].numel()
    pairs = [(int(i), int(j)) for i, j in pairs]
    if not pairs:
        raise ValueError("pairs is empty; give at least one (i, j) of flat feature indices")
    if any(not (0 <= i < size and 0 <= j < size) for i, j in pairs):
        raise ValueError(f"pairs must index the {size} features of an image, got {pairs}")
    baseline_t = resolve_baseline(baseline, x)
    q, s, t, v = _grid(batch, n, x, baseline_t)
    flat_v = v.reshape(batch, size)
    weight = (s * t).view(1, -1)
    with eval_mode(model), torch.enable_grad():
        points, g = _score_and_grad(model, q.reshape(batch * n * n, *x.shape[1:]), target_t.repeat_interleave(n * n),
                                    output)
        g = g.reshape(batch, n * n, size)  # reshape: a channels-last input gives channels-last gradients
        rows = {}
        for i in sorted({i for i, _ in pairs}):
            (h,) = torch.autograd.grad(g[:, :, i].sum(), points, retain_graph=True, allow_unused=True)
            rows[i] = torch.zeros_like(points).reshape(batch, n * n, size) if h is None else h.detach().reshape(
                batch, n * n, size)
    g = g.detach()
    # All pairs at once (a Python step per pair costs more than the Hessian rows for thousands of pairs).
    order = sorted(rows)
    hessian_rows = torch.stack([rows[i] for i in order], dim=2)  # [B, n*n, distinct i, C*H*W]
    first = torch.tensor([i for i, _ in pairs], device=x.device)
    second = torch.tensor([j for _, j in pairs], device=x.device)
    row_of = torch.tensor([order.index(i) for i, _ in pairs], device=x.device)
    g_first = g[:, :, first]  # [B, n*n, P]
    diagonal = torch.where(first == second, g_first, torch.zeros_like(g_first))
    inner = diagonal + weight.unsqueeze(2) * flat_v[:, first].unsqueeze(1) * hessian_rows[:, :, row_of, second]
    return flat_v[:, second] * inner.mean(dim=1)
