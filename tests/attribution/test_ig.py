"""Integrated Gradients against captum and the completeness axiom."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from torch import nn

from impactx.attribution import attribute, create_explainer
from impactx.attribution.ig import IntegratedGradients, quadrature


def _assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gausslegendre"])
@pytest.mark.parametrize("model_name", ["tiny_cnn", "lenet5"])
def test_matches_captum(method, model_name, request, images):
    model = request.getfixturevalue(model_name)
    x = images(3, 1, 8, seed=5) if model_name == "tiny_cnn" else images(3, 1, 28, seed=5)
    target = torch.tensor([0, 2, 1])
    baseline = images(3, 1, x.shape[-1], seed=6) * 0.3
    for base in ("zeros", baseline):
        ours = create_explainer("ig", n_steps=16, method=method, baseline=base)(model, x, target)
        ref = CaptumIG(model).attribute(
            x, baselines=0.0 if isinstance(base, str) else base, target=target, n_steps=16, method=method
        )
        _assert_rel_close(ours, ref, 1e-4)


@pytest.mark.parametrize("output", ["prob", "log_prob"])
def test_output_matches_captum_on_softmax(output, tiny_cnn, tiny_images):
    target = torch.tensor([2, 0, 1, 2])
    ours = create_explainer("ig", n_steps=8, output=output, method="gausslegendre")(
        tiny_cnn, tiny_images, target
    )

    def wrapped(x):
        logits = tiny_cnn(x)
        return logits.softmax(1) if output == "prob" else logits.log_softmax(1)

    ref = CaptumIG(wrapped).attribute(tiny_images, target=target, n_steps=8, method="gausslegendre")
    _assert_rel_close(ours, ref, 1e-4)


def test_completeness_gausslegendre(lenet5, lenet_images):
    target = torch.tensor([3, 7, 1])
    baseline = torch.full_like(lenet_images, 0.1)
    phi = create_explainer("ig", n_steps=64, method="gausslegendre", baseline=baseline)(
        lenet5, lenet_images, target
    )
    with torch.no_grad():
        fx = lenet5(lenet_images).gather(1, target.view(-1, 1)).squeeze(1)
        fb = lenet5(baseline).gather(1, target.view(-1, 1)).squeeze(1)
    gap = (phi.sum(dim=(1, 2, 3)) - (fx - fb)).abs()
    assert (gap <= 0.01 * fx.abs()).all(), (gap, fx)


def test_trapezoid_completeness_follows_captum_weights(tiny_cnn, tiny_images):
    # captum's riemann_trapezoid weights sum to 1 - 1/n: the attributions add up to (1 - 1/n)(f(x) - f(x')).
    n = 100
    target = torch.tensor([0, 1, 2, 0])
    phi = attribute("ig", tiny_cnn, tiny_images, target, n_steps=n, method="riemann_trapezoid")
    with torch.no_grad():
        fx = tiny_cnn(tiny_images).gather(1, target.view(-1, 1)).squeeze(1)
        f0 = tiny_cnn(torch.zeros_like(tiny_images)).gather(1, target.view(-1, 1)).squeeze(1)
    expected = (1 - 1 / n) * (fx - f0)
    assert torch.allclose(phi.sum(dim=(1, 2, 3)), expected, rtol=0, atol=0.01 * fx.abs().min().item())


def test_quadrature_integrates_polynomials_exactly():
    alphas, weights = quadrature("gausslegendre", 4)
    for degree in range(8):  # 4 Gauss-Legendre nodes are exact up to degree 7
        assert torch.isclose(
            (weights * alphas**degree).sum(), torch.tensor(1 / (degree + 1), dtype=torch.float64)
        )


def test_internal_batch_size_and_int_target_give_same_result(tiny_cnn, tiny_images):
    full = attribute("ig", tiny_cnn, tiny_images, 1, n_steps=10)
    chunked = attribute(
        "ig", tiny_cnn, tiny_images, torch.ones(4, dtype=torch.long), n_steps=10, internal_batch_size=7
    )
    torch.testing.assert_close(full, chunked)


def test_reduce_channels_sums_channels(images, make_tiny_cnn):
    model = make_tiny_cnn(in_chans=3)
    x = images(2, 3, 8)
    full = attribute("ig", model, x, 0, n_steps=6)
    reduced = attribute("ig", model, x, 0, n_steps=6, reduce_channels=True)
    assert reduced.shape == (2, 1, 8, 8)
    torch.testing.assert_close(reduced, full.sum(dim=1, keepdim=True))


def test_create_graph_reaches_parameters(tiny_cnn, tiny_images):
    phi = attribute("ig", tiny_cnn, tiny_images, 0, n_steps=6, create_graph=True)
    (grad,) = torch.autograd.grad(phi.pow(2).sum(), tiny_cnn.body[0].weight)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize(
    "options, match",
    [
        ({"n_steps": 1, "method": "riemann_trapezoid"}, "n_steps >= 2"),
        ({"n_steps": 0, "method": "gausslegendre"}, "n_steps >= 1"),
        ({"method": "simpson"}, "method must be one of"),
        ({"output": "softmax"}, "output must be one of"),
        ({"internal_batch_size": 0}, "internal_batch_size"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        IntegratedGradients(**options)


def test_bad_baseline(tiny_cnn, tiny_images):
    with pytest.raises(ValueError, match="does not broadcast"):
        create_explainer("ig", baseline=torch.zeros(2, 1, 8, 8))(tiny_cnn, tiny_images, 0)
    with pytest.raises(ValueError, match="baseline must be"):
        create_explainer("ig", baseline="ones")(tiny_cnn, tiny_images, 0)


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
                                    "gausslegendre"])
@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_ig_rules_multiply_by_inputs_and_convergence_delta_equal_captum(method, multiply_by_inputs) -> None:
    """Captum's Riemann rules (left, right, middle, trapezoid) and Gauss-Legendre, with and without
    ``multiply_by_inputs``, and its ``return_convergence_delta``, on a smooth float64 network."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 64, 3))
    model = model.double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    baseline = 0.1 * torch.randn(1, 8, 8, dtype=torch.float64)
    expected, delta = CaptumIG(model, multiply_by_inputs=multiply_by_inputs).attribute(
        x, baselines=baseline.expand_as(x), target=target, n_steps=7, method=method, return_convergence_delta=True)
    ours = IntegratedGradients(n_steps=7, baseline=baseline, method=method, multiply_by_inputs=multiply_by_inputs)
    attributions = ours(model, x, target)
    # Captum builds the Riemann nodes in float32.
    tolerance = 1e-10 if method == "gausslegendre" else 1e-7
    torch.testing.assert_close(attributions, expected, atol=tolerance, rtol=tolerance)
    if multiply_by_inputs:
        torch.testing.assert_close(ours.compute_convergence_delta(model, attributions, x, target), delta,
                                   atol=tolerance, rtol=tolerance)
