"""Several targets per call (``target [B,T]`` -> ``[B,T,C,H,W]``) against references: shap's multi-output
PartitionExplainer, Captum on the repeated batch with one target per row, and closed forms on a linear model.
(That row ``t`` equals the single-target call, for every registered method, is in ``test_contract.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
import shap
import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Saliency as CaptumSaliency
from test_partition import (  # batch-invariant float64 models shap and impactx agree on
    CountingModel,
    RowwiseNet,
)
from torch import nn

from impactx.attribution import attribute, create_explainer
from impactx.attribution.partition import Partition


class LinearNet(nn.Module):
    """``f(x) = W x.flatten() + b`` in float64: the input gradient of class ``t`` is ``W[t]`` everywhere."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        features = shape[0] * shape[1] * shape[2]
        self.weight = nn.Parameter(torch.randn(num_classes, features, generator=gen, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(num_classes, generator=gen, dtype=torch.float64))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double() @ self.weight.T + self.bias


# --- closed forms --------------------------------------------------------------------------------------------


def test_gradient_methods_on_a_linear_model_give_each_class_its_row_of_w():
    shape = (2, 4, 4)
    model = LinearNet(shape)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    every_class = torch.arange(4).expand(3, 4)
    w = model.weight.detach().view(1, 4, *shape)  # [1, T, C, H, W]: row t is W[t]
    torch.testing.assert_close(attribute("gradient", model, x, every_class), w.expand(3, -1, -1, -1, -1))
    torch.testing.assert_close(attribute("saliency", model, x, every_class), w.abs().expand(3, -1, -1, -1, -1))
    torch.testing.assert_close(attribute("input_x_gradient", model, x, every_class), x.unsqueeze(1) * w)
    # IG from zeros on a linear model is x * W[t] (Gauss-Legendre weights sum to one)
    torch.testing.assert_close(attribute("ig", model, x, every_class, n_steps=3), x.unsqueeze(1) * w)
    summed = attribute("ig", model, x, [2, 0], n_steps=3, reduce_channels=True)
    torch.testing.assert_close(summed, (x.unsqueeze(1) * w[:, [2, 0]]).sum(dim=2, keepdim=True))


# --- Captum: one target per row of the repeated batch ---------------------------------------------------------


def test_ig_and_saliency_match_captum_on_the_repeated_batch(tiny_cnn, tiny_images):
    target = torch.tensor([[0, 2], [1, 1], [2, 0], [0, 1]])
    repeated = tiny_images.repeat_interleave(2, dim=0)  # image b's targets contiguous: row 2b + t
    rows = target.reshape(-1)
    ours = attribute("ig", tiny_cnn, tiny_images, target, n_steps=16)
    ref = CaptumIG(tiny_cnn).attribute(repeated, baselines=0.0, target=rows, n_steps=16, method="gausslegendre")
    torch.testing.assert_close(ours.reshape(repeated.shape), ref, rtol=1e-9, atol=1e-12)
    ours = attribute("saliency", tiny_cnn, tiny_images, target)
    ref = CaptumSaliency(tiny_cnn).attribute(repeated, target=rows, abs=True)
    torch.testing.assert_close(ours.reshape(repeated.shape), ref, rtol=1e-9, atol=1e-12)


def test_several_targets_keep_the_graph_for_a_loss(tiny_cnn, tiny_images):
    """With create_graph a [B,T] map is differentiable in the weights: its loss's gradient is the sum of the
    single-target losses' gradients."""
    target = torch.tensor([[0, 2], [1, 1], [2, 0], [0, 1]])
    explainer = create_explainer("ig", n_steps=4, create_graph=True)
    params = list(tiny_cnn.parameters())  # the last bias has no part in an input gradient: zeros

    def grads(loss: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(loss, params, materialize_grads=True)

    several = grads(explainer(tiny_cnn, tiny_images, target).square().sum())
    singles = [grads(explainer(tiny_cnn, tiny_images, target[:, t]).square().sum()) for t in range(2)]
    assert any(g.abs().sum() > 0 for g in several)
    for got, *parts in zip(several, *singles, strict=True):
        torch.testing.assert_close(got, sum(parts), rtol=1e-9, atol=1e-12)


# --- shap: every class at once -------------------------------------------------------------------------------


def _shap_multi_output(model: nn.Module, x: torch.Tensor, outputs: list[int] | None, max_evals: int,
                       batch_size: int, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """shap's PartitionExplainer on a model returning every class probability: values ``[B, T, C, H, W]``
    and base values ``[B, T]`` for ``outputs`` (``None``: all classes)."""

    def probabilities(batch_hwc: np.ndarray) -> np.ndarray:
        nchw = torch.from_numpy(np.ascontiguousarray(batch_hwc)).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            return model(nchw).softmax(dim=1).numpy()

    _, channels, height, width = x.shape
    images = x.permute(0, 2, 3, 1).numpy()
    values, bases = [], []
    np.random.seed(0)  # shap breaks exact priority ties with np.random.randn
    for i in range(len(images)):  # a fresh masker per image: shap caches the blur under id(image)
        masker = shap.maskers.Image(f"blur({kernel},{kernel})", (height, width, channels))
        explanation = shap.explainers.PartitionExplainer(probabilities, masker)(
            images[i : i + 1], max_evals=max_evals, batch_size=batch_size, outputs=outputs, silent=True
        )
        values.append(np.asarray(explanation.values[0]).reshape(height, width, channels, -1))
        bases.append(np.asarray(explanation.base_values).reshape(-1))
    return np.stack(values).transpose(0, 4, 3, 1, 2), np.stack(bases)


@pytest.mark.parametrize(
    ("shape", "max_evals", "batch_size"),
    [((3, 8, 8), 300, 10), ((1, 6, 5), 120, 4), ((2, 4, 4), 500, 10)],  # the last outlasts the tree
)
def test_joint_partition_is_shaps_multi_output_partition(shape, max_evals, batch_size):
    model = RowwiseNet(shape[0] * shape[1] * shape[2])
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(5))
    explainer = Partition(max_evals=max_evals, batch_size=batch_size, blur_kernel=2, joint_targets=True)
    every_class = torch.arange(5).expand(3, 5)
    ref, _ = _shap_multi_output(model, x, None, max_evals, batch_size, kernel=2)
    torch.testing.assert_close(explainer(model, x, every_class), torch.from_numpy(ref).float(), rtol=0, atol=1e-6)
    ref, _ = _shap_multi_output(model, x, [3, 1], max_evals, batch_size, kernel=2)
    torch.testing.assert_close(explainer(model, x, [3, 1]), torch.from_numpy(ref).float(), rtol=0, atol=1e-6)


def test_joint_partition_shares_one_budget_and_keeps_efficiency():
    shape = (3, 8, 8)
    model = CountingModel(RowwiseNet(shape[0] * shape[1] * shape[2]))
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(6))
    every_class = torch.arange(5).expand(2, 5)
    joint = Partition(max_evals=200, blur_kernel=2, joint_targets=True)(model, x, every_class)
    assert model.rows == 2 * 200  # every masked image read for all 5 classes
    model.rows = 0
    apart = Partition(max_evals=200, blur_kernel=2)(model, x, every_class)
    assert model.rows == 2 * 5 * 200
    # efficiency, per class: the map sums to p_t(x) - p_t(blurred x)
    from impactx.attribution.partition.blur import box_blur

    with torch.no_grad():
        gap = model(x).softmax(1) - model(box_blur(x, (2, 2))).softmax(1)
    torch.testing.assert_close(joint.sum(dim=(2, 3, 4)).double(), gap, rtol=0, atol=1e-5)
    torch.testing.assert_close(apart.sum(dim=(2, 3, 4)).double(), gap, rtol=0, atol=1e-5)
    # the order of expansions is shared, so the classes' maps are not those of five separate runs
    assert not torch.allclose(joint, apart, atol=1e-4)
