"""``shap_partition``: shap's own ``PartitionExplainer`` with a blurring ``Image`` masker (the reference).

This is the attribution generator R of IMPACTX (Partition SHAP, 2000 evaluations; Sec. 4.2 of the
paper) run through the installed shap library, one image at a time. :mod:`impactx.attribution.partition.owen`
computes the same Owen values batched on the device and is tested against this module.

Conventions (shared with ``partition``):
- the explained function is the model's ``output`` score of the target class; ``"prob"`` (softmax,
  default) as IMPACTX, whose classifier is ``argmax(softmax(M(x)))`` and whose explanations are of those
  class probabilities; ``"logit"`` and ``"log_prob"`` are available;
- the masker blurs the tensors the model sees (the normalised inputs), with ``blur_kernel = (kh, kw)``,
  by default ``round(8 * H / 32) x round(8 * W / 32)`` (shap's ``blur(8,8)`` at 32x32); see
  :mod:`impactx.attribution.partition.blur`;
- ``batch_size`` is shap's: the masks evaluated per expansion round. It is part of the algorithm, not only
  a speed knob: shap pops ``ceil(batch_size / 2)`` nodes from its priority queue before it evaluates
  them and pushes their children, so it changes which nodes get expanded. Give both explainers the
  same value to get the same values (default 10, shap's own default for image maskers);
- ``seed``: shap breaks priority ties with ``np.random.randn``; the global numpy RNG is seeded with it
  for the call and restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.partition.blur import resolve_blur_kernel
from impactx.attribution.partition.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_EVALS,
    OwenOptionsMixin,
    OwenResult,
    check_partition_options,
)
from impactx.attribution.registry import register
from impactx.core import Output, target_scores


@contextlib.contextmanager
def _numpy_seed(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@torch.no_grad()
def shap_owen(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    max_evals: int = DEFAULT_MAX_EVALS,
    blur_kernel: int | tuple[int, int] | None = None,
    output: Output = "prob",
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int | None = 0,
) -> OwenResult:
    """shap's Partition explanation of ``inputs [B, C, H, W]`` for classes ``target [B]`` (long).

    ``target [B, T]``: shap explains the ``T`` classes of each image at once, as the outputs of a
    multi-output model (one queue per image, the budget shared); ``attributions [B, T, C, H, W]``.

    The model is called as it is (put it in eval mode first); returns an :class:`OwenResult` on the
    inputs' device, ``evals`` counting the rows shap passed to the model for each image.
    """
    import shap  # imported here: shap is slow to import and only this reference needs it

    check_partition_options(max_evals, batch_size, output)
    _, channels, height, width = inputs.shape
    kh, kw = resolve_blur_kernel(blur_kernel, height, width)
    images = inputs.detach().permute(0, 2, 3, 1).to("cpu", torch.float32).numpy()  # shap's masker wants HWC
    labels = target.view(images.shape[0], -1)  # [B, T]
    several = target.dim() == 2
    values, base_values, full_values, evals = [], [], [], []
    with _numpy_seed(seed):
        for i in range(images.shape[0]):
            count = [0]
            label = labels[i]

            def score(
                batch_hwc: np.ndarray, label: torch.Tensor = label, count: list[int] = count
            ) -> np.ndarray:
                count[0] += len(batch_hwc)
                # shap hands HWC arrays; the permuted view is channels-last in memory, which a model that
                # flattens with .view() cannot take, so the model gets a contiguous NCHW copy.
                x = torch.from_numpy(np.ascontiguousarray(batch_hwc)).permute(0, 3, 1, 2)
                x = x.to(device=inputs.device, dtype=inputs.dtype, memory_format=torch.contiguous_format)
                logits = model(x).repeat_interleave(len(label), dim=0)
                scores = target_scores(logits, label.repeat(len(x)), output).view(len(x), len(label))
                # one class: a single-output model for shap ([n]), several: a multi-output one ([n, T])
                return (scores if several else scores[:, 0]).cpu().double().numpy()

            # a fresh masker per image: shap caches the blurred image under id(x), which Python may reuse
            masker = shap.maskers.Image(f"blur({kw},{kh})", (height, width, channels))
            explainer = shap.explainers.PartitionExplainer(score, masker)
            explanation = explainer(
                images[i : i + 1], max_evals=max_evals, batch_size=batch_size, silent=True
            )
            values.append(
                np.asarray(explanation.values[0], dtype=np.float64).reshape(height, width, channels, -1)
            )
            base_values.append(np.asarray(explanation.base_values, dtype=np.float64).reshape(-1))
            full_values.append(np.asarray(score(images[i : i + 1])[0], dtype=np.float64).reshape(-1))
            count[0] -= 1  # the line above is not part of shap's budget
            evals.append(count[0])
    device = inputs.device
    # [B, H, W, C, T] -> [B, T, C, H, W]
    attributions = torch.from_numpy(np.stack(values)).permute(0, 4, 3, 1, 2).to(device, inputs.dtype)
    base_values, full_values = np.stack(base_values), np.stack(full_values)  # [B, T]
    if not several:
        attributions, base_values, full_values = attributions[:, 0], base_values[:, 0], full_values[:, 0]
    return OwenResult(
        attributions=attributions.contiguous(),
        base_values=torch.from_numpy(base_values).to(device),
        full_values=torch.from_numpy(full_values).to(device),
        evals=torch.tensor(evals, dtype=torch.int64, device=device),
    )


@register("shap_partition")
class ShapPartition(OwenOptionsMixin, Explainer):
    """Partition SHAP through the shap library (reference; a Python loop over images).

    Args:
        max_evals: shap's ``max_evals`` per image (default 2000, as IMPACTX).
        blur_kernel: ``(kh, kw)`` box of the blur masker, or an int; ``None``: ``round(8*H/32)``, ``round(8*W/32)``.
        output: ``"prob"`` (default), ``"logit"`` or ``"log_prob"`` score of the target class.
        batch_size: masks per expansion round (shap's ``batch_size``; it changes the expansion order).
        seed: seeds shap's random tie-breaks (``None``: use the global numpy RNG as it is).
        joint_targets: for ``target [B,T]``, ``True`` hands shap all ``T`` classes of an image at once (shap's
            multi-output explanation, one queue and budget shared); ``False`` (default): one shap run per
            (image, target) pair, row ``t`` equal to the call with ``target[:, t]``.
        reduce_channels: return ``[B, 1, H, W]`` (sum over channels).
    """

    needs_gradients = False

    def __init__(
        self,
        max_evals: int = DEFAULT_MAX_EVALS,
        blur_kernel: int | tuple[int, int] | None = None,
        output: Output = "prob",
        batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int | None = 0,
        joint_targets: bool = False,
        reduce_channels: bool = False,
    ) -> None:
        super().__init__(reduce_channels=reduce_channels)
        self._init_owen_options(max_evals, blur_kernel, output, batch_size, joint_targets)
        self.seed = seed

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        return shap_owen(model, inputs, target, seed=self.seed, **self._owen_options()).attributions
