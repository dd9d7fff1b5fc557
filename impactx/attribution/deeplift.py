"""DeepLIFT with the rescale rule (Shrikumar et al., 2017; survey section 3.2), as Captum's ``DeepLift``.

The images and their references run as one batch ``[x; x']``. Every elementwise nonlinearity module (``nn.ReLU``,
``nn.LeakyReLU``, ``nn.ELU``, ``nn.Sigmoid``, ``nn.Tanh``, ``nn.Softplus``, ``nn.SiLU``, ``nn.GELU``) passes back,
instead of its derivative, the multiplier ``(f(x) - f(x')) / (x - x')`` of its input difference (its derivative
where ``|x - x'| < 1e-10``); linear layers pass gradients as they are. The attribution is
``(x - x') * dF/dx`` with these multipliers, so it sums to ``F(x) - F(x')`` (summation-to-delta) for networks
of linear layers and such nonlinearities. Only nonlinearities that are modules are rescaled (``F.relu`` in a
``forward`` keeps its gradient, as in Captum). Deliberate difference: max pooling keeps its ordinary gradient
(Captum applies a rescale rule to it); on networks with ``nn.MaxPool2d`` the two differ. Batched (one
forward and one backward for all images); not differentiable (the multipliers' backward is custom).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.ig import resolve_baseline
from impactx.attribution.registry import register
from impactx.core import Output, check_output, target_scores

__all__ = ["DeepLift", "RESCALED"]

RESCALED = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.SiLU, nn.GELU)
EPS = 1e-10


class _Rescale(torch.autograd.Function):
    """Forward: the module's output. Backward: ``grad * delta_out / delta_in`` for both halves of the batch
    (the derivative ``local`` where the input difference is below ``EPS``)."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, outputs: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        half = inputs.shape[0] // 2
        delta_in = inputs[:half] - inputs[half:]
        delta_out = outputs[:half] - outputs[half:]
        multiplier = torch.where(delta_in.abs() < EPS, local[:half], delta_out / torch.where(
            delta_in.abs() < EPS, torch.ones_like(delta_in), delta_in))
        ctx.save_for_backward(torch.cat([multiplier, multiplier]))
        return outputs.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (multiplier,) = ctx.saved_tensors
        return grad * multiplier, None, None


def _local_derivative(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        # forward(), not __call__: the hooks must not run again; * 1.0: an in-place module must not write to x
        (grad,) = torch.autograd.grad(module.forward(x * 1.0).sum(), x)
    return grad


@register("deeplift")
class DeepLift(Explainer):
    """DeepLIFT, rescale rule (module docstring). ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.

    Args:
        baseline: ``"zeros"``, a number or a tensor broadcastable to the inputs (Captum's ``baselines``).
        output: the explained score, ``"logit"`` (as Captum) | ``"prob"`` | ``"log_prob"``.
        multiply_by_inputs: ``False``: the multipliers alone, without ``(x - x')`` (Captum's option).
        reduce_channels: sum over channels (``[B,1,H,W]``).
    """

    def __init__(self, baseline: torch.Tensor | float | str = "zeros", output: Output = "logit",
                 multiply_by_inputs: bool = True, reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        check_output(output)
        self.baseline = baseline
        self.output = output
        self.multiply_by_inputs = bool(multiply_by_inputs)

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        baseline = resolve_baseline(self.baseline, inputs)
        stashed: dict[int, torch.Tensor] = {}

        def before(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            # The module works on a copy, so an in-place op leaves the input (and its graph) as it was.
            stashed[id(module)] = args[0]
            return (args[0].clone(), *args[1:])

        def after(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            seen = stashed.pop(id(module))
            return _Rescale.apply(seen, output.detach(), _local_derivative(module, seen))

        handles = []
        for module in model.modules():
            if isinstance(module, RESCALED):
                handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
        try:
            with torch.enable_grad():
                both = torch.cat([inputs.detach(), baseline.detach()]).requires_grad_(True)
                scores = target_scores(model(both)[: inputs.shape[0]], target, self.output)
                (grads,) = torch.autograd.grad(scores.sum(), both)
        finally:
            for handle in handles:
                handle.remove()
        grads = grads[: inputs.shape[0]]
        return (inputs - baseline) * grads if self.multiply_by_inputs else grads
