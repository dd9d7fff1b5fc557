"""Path attributions, the one computation behind IG, EG, weighted IG and DeepPrior-EG.

    phi(x) = sum_s w_s * (x - r_s) * grad_x f(r_s + alpha_s (x - r_s))

for references ``r_s``, positions ``alpha_s`` along each straight path and weights ``w_s`` (quadrature
weights for IG, ``1/S`` for EG's Monte-Carlo estimate). All points of all images are evaluated as one
flat batch, chunked by ``internal_batch_size``.
"""

from __future__ import annotations

import torch
from torch import nn

from impactx.attribution.common import Output, score_gradients


def path_attribution(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    references: torch.Tensor,
    alphas: torch.Tensor,
    weights: torch.Tensor,
    output: Output = "logit",
    create_graph: bool = False,
    internal_batch_size: int | None = None,
) -> torch.Tensor:
    """Weighted path attribution.

    Args:
        inputs: ``[B, C, H, W]``.
        target: ``[B]`` long.
        references: ``[B, S, C, H, W]`` (may be an expanded view). All ``B*S`` path points are built up
            front; ``internal_batch_size`` bounds the model's activations, which dominate memory on real models.
        alphas: ``[B, S]`` positions in ``[0, 1]`` along each path.
        weights: ``[B, S]`` weights of the samples.
        create_graph: keep the graph so the result can be backpropagated to the model's parameters.

    Returns:
        ``[B, C, H, W]`` attributions.
    """
    batch, samples = alphas.shape
    delta = inputs.unsqueeze(1) - references  # [B, S, C, H, W]
    a = alphas.to(inputs.dtype).view(batch, samples, 1, 1, 1)
    points = (references + a * delta).reshape(batch * samples, *inputs.shape[1:])
    _, grads = score_gradients(
        model,
        points,
        target.repeat_interleave(samples),
        output=output,
        create_graph=create_graph,
        internal_batch_size=internal_batch_size,
    )
    w = weights.to(inputs.dtype).view(batch, samples, 1, 1, 1)
    return (w * delta * grads.view_as(delta)).sum(dim=1)
