"""Path attributions, the one computation behind IG, EG, weighted IG and DeepPrior-EG.

    phi(x) = sum_s w_s * (x - r_s) * grad_x f(r_s + alpha_s (x - r_s))

for references ``r_s``, positions ``alpha_s`` along each straight path and weights ``w_s`` (quadrature
weights for IG, ``1/S`` for EG's Monte-Carlo estimate). All points of all images are evaluated as one
flat batch, chunked by ``internal_batch_size``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from impactx.core import Output, score_gradients


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
    multiply_by_inputs: bool = True,
    endpoints: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted path attribution.

    Args:
        inputs: ``[B, C, H, W]``.
        target: ``[B]`` long.
        references: ``[B, S, C, H, W]``; an expanded view with stride 0 along ``S`` (one reference per
            image, as in IG) lets the gradients be weight-summed before the single product with ``x - r``.
        alphas: ``[B, S]`` positions in ``[0, 1]`` along each path.
        weights: ``[B, S]`` weights of the samples.
        create_graph: keep the graph so the result can be backpropagated to the model's parameters.
        internal_batch_size: at most this many path points per forward/backward pass (``None``: all).
            Points are built block by block (whole images, or slices of one image's samples), so memory
            is bounded by the block, not by ``B * S``.
        multiply_by_inputs: ``False`` leaves out the factor ``(x - r_s)``: the weighted mean gradient along the
            paths (Captum's ``multiply_by_inputs=False``, a "local" attribution).
        endpoints: ``[B, S, C, H, W]`` per-sample ends of the paths instead of ``inputs`` (GradientShap's noisy
            copies ``x + eps_s``): ``phi = sum_s w_s (e_s - r_s) grad f(r_s + alpha_s (e_s - r_s))``.

    Returns:
        ``[B, C, H, W]`` attributions.
    """
    if not create_graph:
        # Without create_graph the result is a plain tensor: no path back to the inputs through (x - r).
        inputs, references = inputs.detach(), references.detach()
        endpoints = None if endpoints is None else endpoints.detach()
    batch, samples = alphas.shape
    chunk = batch * samples if not internal_batch_size else max(1, int(internal_batch_size))
    shared_reference = endpoints is None and (samples == 1 or references.stride(1) == 0)
    steps_per_block = math.ceil(samples / math.ceil(samples / chunk))
    images_per_block = max(1, chunk // samples)
    dtype = inputs.dtype
    blocks = []
    for i in range(0, batch, images_per_block):
        rows = slice(i, i + images_per_block)
        x = inputs[rows].unsqueeze(1)  # [n, 1, C, H, W]
        n = x.shape[0]
        total = None
        for j in range(0, samples, steps_per_block):
            cols = slice(j, j + steps_per_block)
            ref = references[rows, cols]  # [n, s, C, H, W]
            delta = (x if endpoints is None else endpoints[rows, cols]) - ref
            a = alphas[rows, cols].to(dtype).reshape(n, -1, 1, 1, 1)
            w = weights[rows, cols].to(dtype).reshape(n, -1, 1, 1, 1)
            s = a.shape[1]
            points = (ref + a * delta).reshape(n * s, *inputs.shape[1:])
            _, grads = score_gradients(
                model, points, target[rows].repeat_interleave(s), output=output, create_graph=create_graph
            )
            grads = grads.view(n, s, *inputs.shape[1:])
            if shared_reference or not multiply_by_inputs:
                part = (w * grads).sum(dim=1)  # multiplied by (x - r) once, below (or not at all)
            else:
                part = (w * delta * grads).sum(dim=1)
            total = part if total is None else total + part
        if shared_reference and multiply_by_inputs:
            total = total * (inputs[rows] - references[rows, 0])
        blocks.append(total)
    return torch.cat(blocks)
