"""Single-gradient methods of the survey (gradient-attribution-survey.txt, section 3.1) and the noise wrappers.

- ``gradient``: the vanilla gradient ``d f_t / d x`` (Simonyan et al., 2014).
- ``saliency``: its absolute value ``|d f_t / d x|`` (Captum's ``Saliency(abs=True)``).
- ``input_x_gradient``: ``x * d f_t / d x`` (Shrikumar et al., 2016).
- ``guided_backprop``: the gradient with every ``nn.ReLU`` passing back only positive gradients where its input
  was positive (Springenberg et al., 2015), as Captum's ``GuidedBackprop``. Only ReLUs that are modules are
  guided (``F.relu`` inside a ``forward`` is invisible to hooks, as in Captum). Not differentiable: the guided
  backward is not a derivative of anything, so it has no ``create_graph``.
- ``smoothgrad``, ``smoothgrad_sq``, ``vargrad``: any registered gradient method averaged over noisy copies
  ``x + N(0, stdev^2)`` (Smilkov et al., 2017; Adebayo et al., 2018): the mean of its maps, the mean of their
  squares, or their variance (Captum's ``NoiseTunnel`` ``nt_type``). The noise comes from a generator seeded
  with each image's own key (:func:`impactx.core.image_keys`), so an image gets the same noise alone or in any
  batch, on any device.

All are one batched backward pass (the noise wrappers: one over all ``n_samples`` copies, chunked by
``internal_batch_size``); ``create_graph=True`` keeps the graph to the model's parameters (for a prior).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.registry import create_explainer, explainer_class, register
from impactx.core import (
    Output,
    check_int,
    check_internal_batch_size,
    check_output,
    image_normal,
    score_gradients,
)

__all__ = ["Gradient", "GuidedBackprop", "InputXGradient", "NoiseTunnel", "Saliency", "in_layout_of", "inner_explainer"]


class _GradientMethod(Explainer):
    """``d f_t / d x`` of the ``output`` score, combined with the inputs by :meth:`_combine`."""

    def __init__(self, output: Output = "logit", create_graph: bool = False, internal_batch_size: int | None = None,
                 reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        check_output(output)
        self.output = output
        self.create_graph = create_graph
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)

    def _combine(self, inputs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        points = inputs if self.create_graph else inputs.detach()
        _, grads = score_gradients(model, points, target, output=self.output, create_graph=self.create_graph,
                                   internal_batch_size=self.internal_batch_size)
        return self._combine(points, grads)


@register("gradient")
class Gradient(_GradientMethod):
    """The vanilla gradient ``d f_t / d x`` (signed). ``explainer(model, x [B,C,H,W], target [B]) -> [B,C,H,W]``.

    Args:
        output: the explained score, ``"logit"`` | ``"prob"`` | ``"log_prob"``.
        create_graph: keep the graph (the map can be backpropagated to the model's parameters).
        internal_batch_size: at most this many images per backward pass.
        reduce_channels: sum over channels (``[B,1,H,W]``).
    """


@register("saliency")
class Saliency(_GradientMethod):
    """``|d f_t / d x|`` (Simonyan et al., 2014; Captum ``Saliency``); options as :class:`Gradient`, plus
    ``abs=False`` for the signed gradient (Captum's option of the same name)."""

    def __init__(self, abs: bool = True, output: Output = "logit", create_graph: bool = False,  # noqa: A002
                 internal_batch_size: int | None = None, reduce_channels: bool = False) -> None:
        super().__init__(output, create_graph, internal_batch_size, reduce_channels)
        self.abs = bool(abs)

    def _combine(self, inputs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.abs() if self.abs else grads


@register("input_x_gradient")
class InputXGradient(_GradientMethod):
    """``x * d f_t / d x`` (Captum ``InputXGradient``); options as :class:`Gradient`."""

    def _combine(self, inputs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return inputs * grads


class _GuidedReLU(torch.autograd.Function):
    """Forward: identity on a ReLU's output. Backward: only positive gradients, only where the output is
    positive (the ReLU's own mask, ``output > 0`` iff ``input > 0``)."""

    @staticmethod
    def forward(ctx: Any, output: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(output)
        return output.view_as(output)  # a view, not a copy

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return grad.clamp(min=0) * (output > 0).to(grad.dtype)


def in_layout_of(points: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``points [N,C,H,W]`` (built from ``inputs [B,C,H,W]``, e.g. a path's points) in the inputs' memory format:
    channels-last inputs keep channels-last points. The layout is the caller's choice: it can change the model's
    speed by 2x either way (LeNet-5's convolutions run about twice as fast channels-last on a CPU, ResNet-18's
    slower), and the broadcasting that builds the points would otherwise always return the default layout."""
    if (points.ndim == 4 and inputs.ndim == 4 and not inputs.is_contiguous()
            and inputs.is_contiguous(memory_format=torch.channels_last)):
        return points.contiguous(memory_format=torch.channels_last)
    return points


def _guide(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return _GuidedReLU.apply(output)


def guided_gradients(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, output: Output = "logit",
                     internal_batch_size: int | None = None) -> torch.Tensor:
    """Guided-backprop gradients ``[B,C,H,W]`` of the ``output`` score of ``target`` (every ``nn.ReLU`` guided)."""
    handles = [m.register_forward_hook(_guide) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        _, grads = score_gradients(model, inputs.detach(), target, output=output,
                                   internal_batch_size=internal_batch_size)
    finally:
        for handle in handles:
            handle.remove()
    return grads


@register("guided_backprop")
class GuidedBackprop(Explainer):
    """Guided backpropagation (Springenberg et al., 2015; Captum ``GuidedBackprop``): the gradient of the
    ``output`` score with every ``nn.ReLU`` module's backward keeping only positive gradients. Not
    differentiable (no ``create_graph``). Options: ``output``, ``internal_batch_size``, ``reduce_channels``."""

    def __init__(self, output: Output = "logit", internal_batch_size: int | None = None,
                 reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        check_output(output)
        self.output = output
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        return guided_gradients(model, inputs, target, self.output, self.internal_batch_size)


# ------------------------------------------------------------------------------------------ noise
def inner_explainer(wrapper: str, method: str, options: dict[str, Any] | None, create_graph: bool = False,
                    input_noise_inside: bool = False) -> Explainer:
    """The method a wrapper (``wrapper``: its name, for errors) runs on copies of the input or the model: built from
    ``options``, refused when it takes a background, reduces channels (the wrapper does that after averaging) or,
    unless ``input_noise_inside``, is itself an input-noise wrapper; with ``create_graph``, built with
    ``create_graph=True`` (refused when it has none)."""
    options = dict(options or {})
    if options.get("reduce_channels"):
        raise ValueError(f"give reduce_channels to {wrapper}, not to its method (it sums after averaging)")
    cls = explainer_class(method)
    if cls.takes_background or (issubclass(cls, NoiseTunnel) and not input_noise_inside):
        raise ValueError(f"{method!r} cannot go inside {wrapper} (it takes a background or is a noise wrapper)")
    if create_graph:
        if "create_graph" not in inspect.signature(cls.__init__).parameters:
            raise ValueError(f"{method!r} is not differentiable (it has no create_graph option)")
        options["create_graph"] = True
    return create_explainer(method, **options)


NoiseKind = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]
NOISE_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")


class NoiseTunnel(Explainer):
    """A gradient method averaged over noisy copies of each image (Captum ``NoiseTunnel``).

    ``maps_s = method(model, x + stdev * eps_s, target)`` for ``s = 1..n_samples``, ``eps_s ~ N(0, I)``; the
    result is ``mean_s maps_s`` (``"smoothgrad"``), ``mean_s maps_s^2`` (``"smoothgrad_sq"``) or
    ``mean_s maps_s^2 - (mean_s maps_s)^2`` (``"vargrad"``, the population variance, as Captum).

    Args:
        method: a registered method computed on the noisy copies (``"saliency"``, ``"gradient"``,
            ``"input_x_gradient"``, ``"guided_backprop"``, ``"ig"``, ...); method_options: its options.
        n_samples: noisy copies per image (Captum's ``nt_samples``).
        stdev: the noise's standard deviation, in the units of the (normalised) inputs (Captum's ``stdevs``;
            the SmoothGrad paper uses 10-20% of the input range).
        kind: ``"smoothgrad"`` | ``"smoothgrad_sq"`` | ``"vargrad"``.
        seed: seeds the keyed noise.
        create_graph: build ``method`` with ``create_graph=True``, so the averaged map backpropagates to the
            model's parameters (for an attribution prior).
        internal_batch_size: at most this many noisy images per call of ``method``.
        reduce_channels: sum over channels (``[B,1,H,W]``), after the aggregation.
    """

    default_kind: NoiseKind = "smoothgrad"

    def __init__(self, method: str = "saliency", method_options: dict[str, Any] | None = None, n_samples: int = 16,
                 stdev: float = 0.15, kind: NoiseKind | None = None, seed: int | None = None,
                 create_graph: bool = False, internal_batch_size: int | None = None,
                 reduce_channels: bool = False) -> None:
        super().__init__(reduce_channels=reduce_channels)
        kind = kind or self.default_kind
        if kind not in NOISE_KINDS:
            raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
        if not isinstance(stdev, int | float) or isinstance(stdev, bool) or not stdev >= 0:
            raise ValueError(f"stdev must be a number >= 0, got {stdev!r}")
        self.method = method
        self.method_options = dict(method_options or {})
        self.create_graph = bool(create_graph)
        self.inner = inner_explainer("the noise wrapper", method, self.method_options, self.create_graph)
        self.n_samples = check_int("n_samples", n_samples)
        self.stdev = float(stdev)
        self.kind = kind
        self.seed = 0 if seed is None else int(seed)
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)
        self.needs_gradients = self.inner.needs_gradients  # type: ignore[misc]

    def noise(self, inputs: torch.Tensor) -> torch.Tensor:
        """The noise ``[B, n_samples, C, H, W]`` (already scaled by ``stdev``) added to ``inputs``."""
        return self.stdev * image_normal(inputs, self.n_samples, self.seed)

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   background: torch.Tensor | None) -> torch.Tensor:
        batch, samples = inputs.shape[0], self.n_samples
        noisy = (inputs.unsqueeze(1) + self.noise(inputs)).reshape(batch * samples, *inputs.shape[1:])
        targets = target.repeat_interleave(samples)
        chunk = self.internal_batch_size or noisy.shape[0]
        maps = torch.cat([self.inner(model, noisy[i:i + chunk], targets[i:i + chunk])
                          for i in range(0, noisy.shape[0], chunk)])
        maps = maps.view(batch, samples, *inputs.shape[1:])
        if self.kind == "smoothgrad":
            return maps.mean(dim=1)
        squares = (maps * maps).mean(dim=1)
        return squares if self.kind == "smoothgrad_sq" else squares - maps.mean(dim=1) ** 2


@register("smoothgrad")
class SmoothGrad(NoiseTunnel):
    """SmoothGrad: the mean of ``method``'s maps over noisy copies (:class:`NoiseTunnel`, ``kind="smoothgrad"``)."""


@register("smoothgrad_sq")
class SmoothGradSquared(NoiseTunnel):
    """SmoothGrad²: the mean of the squared maps (:class:`NoiseTunnel`, ``kind="smoothgrad_sq"``)."""

    default_kind: NoiseKind = "smoothgrad_sq"


@register("vargrad")
class VarGrad(NoiseTunnel):
    """VarGrad: the variance of the maps over noisy copies (:class:`NoiseTunnel`, ``kind="vargrad"``)."""

    default_kind: NoiseKind = "vargrad"
