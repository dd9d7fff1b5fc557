"""Expected Gradients: the defining formula, completeness in expectation, double backward, backgrounds."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from impactx.attribution import attribute, create_explainer
from impactx.attribution.background import materialise_background
from impactx.attribution.eg import ExpectedGradients


def _scores(model, x, target):
    with torch.no_grad():
        return model(x).gather(1, target.view(-1, 1)).squeeze(1)


def test_matches_defining_formula(tiny_cnn, tiny_images, tiny_background):
    """EG == 1/S sum_s (x - r_s) * grad f(r_s + a_s (x - r_s)) for the explainer's own draws, computed
    point by point with plain autograd."""
    target = torch.tensor([0, 1, 2, 1])
    explainer = ExpectedGradients(background=tiny_background, n_samples=6, seed=3)
    phi = explainer(tiny_cnn, tiny_images, target)
    indices, alphas = explainer.draw(tiny_images, len(tiny_background), seed=3)
    expected = torch.zeros_like(tiny_images)
    for b in range(tiny_images.shape[0]):
        for s in range(6):
            r = tiny_background[indices[b, s]]
            point = (r + float(alphas[b, s]) * (tiny_images[b] - r)).unsqueeze(0).requires_grad_(True)
            (grad,) = torch.autograd.grad(tiny_cnn(point)[0, target[b]], point)
            expected[b] += (tiny_images[b] - r) * grad[0] / 6
    torch.testing.assert_close(phi, expected, rtol=1e-10, atol=1e-12)


def test_draws_are_uniform(tiny_images):
    indices, alphas = ExpectedGradients(n_samples=4000).draw(tiny_images, 5, seed=0)
    counts = torch.bincount(indices.flatten(), minlength=5).double() / indices.numel()
    assert torch.allclose(counts, torch.full((5,), 0.2, dtype=torch.float64), atol=0.02)
    assert 0 <= alphas.min() and alphas.max() < 1 and abs(alphas.mean().item() - 0.5) < 0.02


def test_completeness_single_reference(tiny_cnn, tiny_images, tiny_background):
    """With one background image EG is a Monte-Carlo IG: sum EG -> f(x) - f(r)."""
    target = torch.tensor([0, 1, 2, 0])
    ref = tiny_background[:1]
    phi = attribute("eg", tiny_cnn, tiny_images, target, background=ref, n_samples=4000, seed=0)
    fx = _scores(tiny_cnn, tiny_images, target)
    expected = fx - _scores(tiny_cnn, ref.expand_as(tiny_images), target)
    assert ((phi.sum(dim=(1, 2, 3)) - expected).abs() <= 0.01 * fx.abs()).all()


def test_completeness_over_drawn_references(tiny_cnn, tiny_images, tiny_background):
    """sum EG -> f(x) - mean_s f(r_s) over the references actually drawn."""
    target = torch.tensor([0, 1, 2, 0])
    explainer = ExpectedGradients(background=tiny_background, n_samples=4000, seed=0)
    phi = explainer(tiny_cnn, tiny_images, target)
    indices, _ = explainer.draw(tiny_images, len(tiny_background), seed=0)
    background_scores = tiny_cnn(tiny_background).detach()[:, target].T  # [B, N]
    fx = _scores(tiny_cnn, tiny_images, target)
    expected = fx - background_scores.gather(1, indices).mean(dim=1)
    assert ((phi.sum(dim=(1, 2, 3)) - expected).abs() <= 0.01 * fx.abs()).all()


def test_create_graph_matches_finite_differences(make_tiny_cnn, images):
    """d/dtheta of a penalty on EG attributions, by double backward, equals central finite differences."""
    model = make_tiny_cnn(size=6, seed=4)
    x, background = images(2, 1, 6, seed=7), images(5, 1, 6, seed=8)
    target = torch.tensor([1, 2])

    def penalty(phi):
        tv = (phi[..., 1:, :] - phi[..., :-1, :]).abs().sum() + (phi[..., 1:] - phi[..., :-1]).abs().sum()
        return tv + 10 * phi.pow(2).sum()

    def loss(create_graph):
        explainer = ExpectedGradients(background=background, n_samples=8, seed=11, create_graph=create_graph)
        return penalty(explainer(model, x, target))

    params = list(model.parameters())
    # The output bias does not enter input gradients: its gradient is None here and ~0 by differences.
    grads = torch.autograd.grad(loss(True), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    gen = torch.Generator().manual_seed(0)
    h = 1e-6
    for param, grad in zip(params, grads, strict=True):
        for flat in torch.randperm(param.numel(), generator=gen)[:3].tolist():
            with torch.no_grad():
                view = param.view(-1)
                original = view[flat].item()
                view[flat] = original + h
                up = loss(False).item()
                view[flat] = original - h
                down = loss(False).item()
                view[flat] = original
            fd = (up - down) / (2 * h)
            assert abs(grad.reshape(-1)[flat].item() - fd) <= 1e-5 * max(1.0, abs(fd)), (param.shape, flat)


def test_create_graph_loss_backward_fills_parameter_grads(tiny_cnn, tiny_images, tiny_background):
    phi = attribute(
        "eg", tiny_cnn, tiny_images, 0, background=tiny_background, n_samples=4, create_graph=True
    )
    phi.pow(2).sum().backward()
    output_bias = tiny_cnn.body[-1].bias  # does not enter input gradients
    assert output_bias.grad is None
    assert all(p.grad.abs().sum() > 0 for p in tiny_cnn.parameters() if p is not output_bias)


class _IndexedImages(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 3, i


class _DataModuleLike:
    def __init__(self, images):
        self.images = images
        self.requested: list[str] = []

    def dataset(self, split):
        self.requested.append(split)
        return _IndexedImages(self.images)


def test_background_from_dataset_and_datamodule(tiny_background):
    dm = _DataModuleLike(tiny_background)
    first = ExpectedGradients(background=dm, split="val", max_background=5, seed=1).background
    again = ExpectedGradients(background=_IndexedImages(tiny_background), max_background=5, seed=1).background
    assert dm.requested == ["val"]
    assert first.shape == (5, 1, 8, 8)
    torch.testing.assert_close(first, again)
    # every materialised image is one of the dataset's, and they are distinct
    matches = (first.flatten(1)[:, None] == tiny_background.flatten(1)[None]).all(dim=2)
    assert (matches.sum(dim=1) == 1).all() and matches.any(dim=0).sum() == 5
    other = materialise_background(dm, max_background=5, seed=2)
    assert not torch.equal(first, other)


def test_background_at_construction_or_per_call(tiny_cnn, tiny_images, tiny_background):
    explainer = ExpectedGradients(n_samples=5, seed=0)
    with pytest.raises(ValueError, match="needs a background"):
        explainer(tiny_cnn, tiny_images, 0)
    per_call = explainer(tiny_cnn, tiny_images, 0, background=tiny_background)
    fixed = ExpectedGradients(background=tiny_background, n_samples=5, seed=0)
    configured = fixed(tiny_cnn, tiny_images, 0)
    torch.testing.assert_close(per_call, configured)
    other = tiny_background.flip(0) * 0.5
    overridden = fixed(tiny_cnn, tiny_images, 0, background=other)
    torch.testing.assert_close(
        overridden, ExpectedGradients(background=other, n_samples=5, seed=0)(tiny_cnn, tiny_images, 0)
    )
    assert not torch.allclose(overridden, configured)
    torch.testing.assert_close(fixed(tiny_cnn, tiny_images, 0), configured)  # the override was for one call
    assert explainer.background is None and torch.equal(fixed.background, tiny_background)
    with pytest.raises(AttributeError):
        fixed.background = other  # never changed between calls


def test_explainers_without_background_refuse_one(tiny_cnn, tiny_images, tiny_background):
    with pytest.raises(TypeError, match="takes no background"):
        create_explainer("ig", n_steps=4)(tiny_cnn, tiny_images, 0, background=tiny_background)


def test_unseeded_calls_follow_torch_global_seed(tiny_cnn, tiny_images, tiny_background):
    explainer = ExpectedGradients(background=tiny_background, n_samples=3, seed=None)
    torch.manual_seed(5)
    a = explainer(tiny_cnn, tiny_images, 0)
    b = explainer(tiny_cnn, tiny_images, 0)
    torch.manual_seed(5)
    c = explainer(tiny_cnn, tiny_images, 0)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_draws_on_cpu_and_cuda(tiny_cnn, tiny_images, tiny_background):
    explainer = ExpectedGradients(background=tiny_background, n_samples=16, seed=2)
    cpu = explainer(tiny_cnn, tiny_images, 1)
    cuda = explainer(tiny_cnn.cuda(), tiny_images.cuda(), 1)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-9, atol=1e-12)


def test_background_errors(tiny_cnn, tiny_images):
    with pytest.raises(ValueError, match=r"background images have shape \[1, 6, 6\]"):
        ExpectedGradients(background=torch.zeros(3, 1, 6, 6, dtype=torch.float64))(tiny_cnn, tiny_images, 0)
    with pytest.raises(ValueError, match=r"shape \[N,C,H,W\]"):
        ExpectedGradients(background=torch.zeros(1, 8, 8))
    with pytest.raises(TypeError, match="floating point"):
        ExpectedGradients(background=torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="background must be"):
        create_explainer("eg", background=object())(tiny_cnn, tiny_images, 0)
    with pytest.raises(ValueError, match="n_samples"):
        ExpectedGradients(n_samples=0)


def test_callable_background_is_the_tensor_it_returns(tiny_cnn, tiny_images, tiny_background) -> None:
    """Captum's callable ``baselines``: a zero-argument callable giving the background tensor."""
    from impactx.attribution import attribute

    target = torch.tensor([0, 1, 2, 0])
    expected = attribute("eg", tiny_cnn, tiny_images, target, background=tiny_background, n_samples=8, seed=1)
    got = attribute("eg", tiny_cnn, tiny_images, target, background=lambda: tiny_background, n_samples=8, seed=1)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    with pytest.raises(TypeError, match="callable must return"):
        attribute("eg", tiny_cnn, tiny_images, target, background=lambda: "images", n_samples=8)


def test_gradient_shap_noise_follows_its_definition(tiny_cnn, tiny_images, tiny_background) -> None:
    """With ``stdevs``, each sample's path ends at its noisy copy: ``mean_s (e_s - r_s) grad f(r_s + a_s (e_s - r_s))``
    with ``e_s = x + noise_s``, written here as a loop over the explainer's draws; ``stdevs=0`` is plain EG."""
    from impactx.attribution import create_explainer
    from impactx.attribution.eg import draw_references

    target = torch.tensor([0, 1, 2, 0])
    shap = create_explainer("eg", background=tiny_background, n_samples=5, seed=2, stdevs=0.3)
    got = shap(tiny_cnn, tiny_images, target)
    indices, alphas = draw_references(tiny_images, tiny_background.shape[0], 5, 2)
    noise = shap.input_noise(tiny_images, 2)
    assert 0.25 < float(noise.std()) < 0.35
    for b in range(4):
        total = torch.zeros_like(tiny_images[b])
        for s in range(5):
            ref = tiny_background[indices[b, s]]
            end = tiny_images[b] + noise[b, s]
            point = (ref + alphas[b, s] * (end - ref)).unsqueeze(0).requires_grad_(True)
            (grad,) = torch.autograd.grad(tiny_cnn(point)[0, target[b]], point)
            total += (end - ref) * grad[0] / 5
        torch.testing.assert_close(got[b], total, atol=1e-12, rtol=1e-9)
    plain = create_explainer("eg", background=tiny_background, n_samples=5, seed=2)
    torch.testing.assert_close(create_explainer("eg", background=tiny_background, n_samples=5, seed=2, stdevs=0)(
        tiny_cnn, tiny_images, target), plain(tiny_cnn, tiny_images, target), atol=0, rtol=0)
