"""DeepPrior-EG: density fits against scipy / scikit-learn, the prior map, and EG's axioms from prior baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import multivariate_normal
from sklearn.mixture import BayesianGaussianMixture
from torch import nn

from impactx.attribution.deepprior import DeepPriorEG, prior_probability_map
from impactx.attribution.densities import GaussianDensity, MixtureDensity
from impactx.attribution.registry import available, create_explainer

DT = torch.float64


def small_cnn(seed: int = 0, scale: float = 1.0) -> nn.Sequential:
    """Two smooth convs (8x8 -> 4x4 feature map of 16 channels) and a linear head, float64."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Softplus(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Softplus(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 3),
    ).to(DT)
    with torch.no_grad():
        model[5].weight.mul_(scale)
    return model


def linear_cnn(seed: int = 0) -> nn.Sequential:
    """A conv net without nonlinearity: f is affine in x, so EG has a closed form."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).to(DT)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=DT)


def rows(feature_map: torch.Tensor) -> np.ndarray:
    """[B, C, h, w] -> [B*h*w, C] numpy, built independently of the module under test."""
    f = feature_map.detach().numpy()
    return np.moveaxis(f, 1, -1).reshape(-1, f.shape[1])


def reference_map(log_density: np.ndarray, batch: int, hw: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """exp(log p - max log p) per image, bilinearly upsampled: the prior map built from a reference density."""
    ld = torch.as_tensor(log_density).reshape(batch, 1, *hw)
    small = torch.exp(ld - ld.amax(dim=(2, 3), keepdim=True))
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- densities against references


def test_mgm_log_density_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    density = GaussianDensity.fit(torch.as_tensor(x), shrinkage=0.1)
    points = rng.normal(size=(50, 6)) * 2.0
    ours = density.log_prob(torch.as_tensor(points)).numpy()
    ref = multivariate_normal(density.mean.numpy(), density.covariance.numpy()).logpdf(points)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-9)
    # float32 evaluation (as on an accelerator) stays close
    ours32 = density.log_prob(torch.as_tensor(points, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(ours32, ref, rtol=1e-4, atol=1e-3)


def test_mgm_fit_is_eq12_eq13_with_shrinkage() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)) * np.array([1.0, 2.0, 0.5, 3.0, 1.0])
    raw = GaussianDensity.fit(torch.as_tensor(x), shrinkage=0.0)
    np.testing.assert_allclose(raw.mean.numpy(), x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(raw.covariance.numpy(), np.cov(x, rowvar=False), rtol=1e-12)  # 1/(N-1), Eq. 13
    shrunk = GaussianDensity.fit(torch.as_tensor(x), shrinkage=0.3)
    s = np.cov(x, rowvar=False)
    np.testing.assert_allclose(shrunk.covariance.numpy(), 0.7 * s + 0.3 * np.trace(s) / 5 * np.eye(5), rtol=1e-12)


def test_bgmm_log_density_matches_sklearn_score_samples() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(150, 4)) - 3.0, rng.normal(size=(150, 4)) * 0.5 + 2.0])
    bgmm = BayesianGaussianMixture(n_components=4, covariance_type="full", max_iter=300, random_state=0).fit(x)
    density = MixtureDensity.from_sklearn(bgmm)
    points = rng.normal(size=(80, 4)) * 3.0
    np.testing.assert_allclose(density.log_prob(torch.as_tensor(points)).numpy(), bgmm.score_samples(points),
                               rtol=1e-5, atol=1e-5)
    # the batched [B, h, w, C] layout gives the same per-point values
    grid = torch.as_tensor(points).reshape(2, 5, 8, 4)
    np.testing.assert_allclose(density.log_prob(grid).reshape(-1).numpy(), bgmm.score_samples(points), atol=1e-5)
    # fitting through MixtureDensity.fit is the same sklearn model
    fitted = MixtureDensity.fit(torch.as_tensor(x), n_components=4, seed=0, max_iter=300)
    np.testing.assert_allclose(fitted.log_prob(torch.as_tensor(points)).numpy(), bgmm.score_samples(points), atol=1e-5)


def test_shrinkage_keeps_covariance_invertible_with_fewer_pixels_than_channels() -> None:
    model = small_cnn()
    data = images(1, 3)[:, :, :4, :4]  # one image -> 2x2 = 4 pixels of C=16 channels
    explainer = DeepPriorEG(prior="mgm", layer="2", shrinkage=None).fit(model, data)
    assert explainer.num_fit_pixels == 4
    cov = explainer.density.covariance
    assert cov.shape == (16, 16)
    assert float(torch.linalg.eigvalsh(cov)[0]) > 0
    points = np.random.default_rng(3).normal(size=(10, 16))
    ref = multivariate_normal(explainer.density.mean.numpy(), cov.numpy()).logpdf(points)
    np.testing.assert_allclose(explainer.density.log_prob(torch.as_tensor(points)).numpy(), ref, rtol=1e-9)
    with pytest.raises(ValueError, match="singular"):
        DeepPriorEG(prior="mgm", layer="2", shrinkage=0.0).fit(model, data)


def test_features_are_fitted_per_pixel_over_channels() -> None:
    # The prior layer is a 1x1 conv, so each pixel's channel vector is W @ x[:, i, j] + b: its mean and
    # covariance over all pixels of all images are known in closed form from the data.
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=1).to(DT)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 5 * 7, 2)).to(DT)
    data = torch.randn(6, 2, 5, 7, dtype=DT)  # W=7 differs from C=3: fitting on the wrong axis changes shapes
    explainer = DeepPriorEG(prior="mgm", shrinkage=0.2, max_fit_pixels=10_000).fit(model, data)
    assert explainer.fitted_layer == "0"
    pix = data.permute(0, 2, 3, 1).reshape(-1, 2).numpy()  # [N*h*w, 2]
    feats = pix @ conv.weight.detach().reshape(3, 2).numpy().T + conv.bias.detach().numpy()
    assert explainer.num_fit_pixels == 6 * 5 * 7
    np.testing.assert_allclose(explainer.density.mean.numpy(), feats.mean(axis=0), rtol=1e-10)
    # (rank-2 features in 3 channels: the raw covariance is singular, hence the shrinkage)
    s = np.cov(feats, rowvar=False)
    np.testing.assert_allclose(explainer.density.covariance.numpy(), 0.8 * s + 0.2 * np.trace(s) / 3 * np.eye(3),
                               rtol=1e-10, atol=1e-12)


def test_fit_subsamples_to_max_fit_pixels_and_uses_the_last_conv_by_default() -> None:
    model = small_cnn()
    explainer = DeepPriorEG(prior="mgm", max_fit_pixels=50, internal_batch_size=3).fit(model, images(10, 4))
    assert explainer.fitted_layer == "2"  # the last Conv2d
    assert explainer.num_fit_pixels == 50  # of 10 * 4 * 4 = 160
    # chunking the hook passes does not change which pixels are kept
    other = DeepPriorEG(prior="mgm", max_fit_pixels=50, internal_batch_size=7).fit(model, images(10, 4))
    torch.testing.assert_close(other.density.mean, explainer.density.mean, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- prior map


@pytest.mark.parametrize("normalize", ["max", "sum"])
def test_prior_map_matches_reference_density(normalize: str) -> None:
    model, x = small_cnn(), images(3, 5)
    explainer = DeepPriorEG(prior="mgm", normalize=normalize).fit(model, images(20, 6))
    p = explainer.prior_map(model, x)
    assert p.shape == (3, 1, 8, 8)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    with torch.no_grad():
        fmap = model[:3](x)  # [3, 16, 4, 4]
    logpdf = multivariate_normal(explainer.density.mean.numpy(), explainer.density.covariance.numpy()).logpdf(rows(fmap))
    ld = torch.as_tensor(logpdf).reshape(3, 1, 4, 4)
    if normalize == "max":
        small = torch.exp(ld - ld.amax(dim=(2, 3), keepdim=True))
        assert torch.allclose(small.amax(dim=(2, 3)), torch.ones(3, 1, dtype=DT))
    else:
        dens = torch.exp(ld - ld.amax())
        small = dens / dens.sum(dim=(2, 3), keepdim=True)
    ref = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(p, ref, rtol=1e-8, atol=1e-10)


def test_prior_probability_map_rejects_unknown_normalisation() -> None:
    with pytest.raises(ValueError, match="normalize"):
        prior_probability_map(torch.zeros(1, 2, 2), (4, 4), normalize="softmax2")


# ---------------------------------------------------------------- attributions


def test_completeness_with_respect_to_prior_baselines() -> None:
    model, x, bg = small_cnn(scale=20.0), images(2, 7), images(1, 8)
    explainer = DeepPriorEG(prior="mgm", background=bg, n_samples=1000, seed=1).fit(model, images(20, 9))
    attr = explainer(model, x, 1)
    with torch.no_grad():
        fmap = model[:3](x)
        logpdf = multivariate_normal(explainer.density.mean.numpy(),
                                     explainer.density.covariance.numpy()).logpdf(rows(fmap))
        p_ref = reference_map(logpdf, 2, (4, 4), (8, 8))
        fx = model(x)[:, 1]
        f_prior = model(bg - p_ref)[:, 1]  # the prior baselines x' - p_prior(x), one per image
        f_plain = model(bg)[:, 1]
    total = attr.sum(dim=(1, 2, 3))
    tol = 0.01 * fx.abs()
    assert torch.all((total - (fx - f_prior)).abs() <= tol), (total, fx - f_prior, fx)
    # the prior shift matters here: plain EG's target f(x) - f(x') is not met
    assert torch.all((total - (fx - f_plain)).abs() > tol)


def test_affine_model_closed_form_with_bgmm_prior() -> None:
    # f affine => grad f is constant, so every sample gives exactly (x - (x' - p)) * grad f.
    model, x, bg = linear_cnn(), images(2, 10), images(1, 11)
    fit_data = images(15, 12)
    explainer = DeepPriorEG(prior="bgmm", n_components=3, background=bg, n_samples=8).fit(model, fit_data)
    attr = explainer(model, x, 2)
    with torch.no_grad():
        train_rows = rows(model[:1](fit_data))
        bgmm = BayesianGaussianMixture(n_components=3, covariance_type="full", max_iter=200, random_state=0)
        bgmm.fit(train_rows)
        p_ref = reference_map(bgmm.score_samples(rows(model[:1](x))), 2, (4, 4), (8, 8))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[:, 2].sum(), xg)
    expected = (x - (bg - p_ref)) * grad
    torch.testing.assert_close(attr, expected, rtol=1e-7, atol=1e-10)


def test_zero_prior_reduces_to_expected_gradients() -> None:
    # Paper Eqs. 20-21: with an uninformative prior (p_prior -> 0) DeepPrior-EG is EG. Checked against the
    # separate "eg" explainer, which draws its (reference, alpha) pairs from the same per-image keys.
    from impactx.attribution.eg import ExpectedGradients

    class ZeroPrior(DeepPriorEG):
        def prior_map(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
            return torch.zeros(inputs.shape[0], 1, *inputs.shape[2:], dtype=inputs.dtype)

    model, x, bg = small_cnn(), images(3, 30), images(7, 31)
    ours = ZeroPrior(background=bg, n_samples=16, seed=5)(model, x, 1)
    ref = ExpectedGradients(background=bg, n_samples=16, seed=5)(model, x, 1)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_batch_invariance_and_seed_determinism() -> None:
    model, x, bg = small_cnn(), images(4, 13), images(5, 14)
    explainer = DeepPriorEG(prior="mgm", background=bg, n_samples=16, seed=3, internal_batch_size=10)
    target = torch.tensor([0, 1, 2, 1])
    full = explainer(model, x, target)
    alone = explainer(model, x[2:3], target[2:3])
    torch.testing.assert_close(alone, full[2:3], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(explainer(model, x.flip(0), target.flip(0)), full.flip(0), rtol=1e-9, atol=1e-12)
    again = DeepPriorEG(prior="mgm", background=bg, n_samples=16, seed=3)(model, x, target)
    torch.testing.assert_close(again, full, rtol=1e-9, atol=1e-12)
    other_seed = DeepPriorEG(prior="mgm", background=bg, n_samples=16, seed=4)(model, x, target)
    assert not torch.allclose(other_seed, full)


def test_fit_is_cached_per_model_and_refit_for_another() -> None:
    model_a, model_b, bg = small_cnn(0), small_cnn(1), images(6, 15)
    explainer = DeepPriorEG(prior="mgm", background=bg, n_samples=4)
    assert explainer.density is None
    explainer(model_a, images(2, 16), 0)  # unfitted: fits on the background
    with torch.no_grad():
        bg_rows = rows(model_a[:3](bg))
    np.testing.assert_allclose(explainer.density.mean.numpy(), bg_rows.mean(axis=0), rtol=1e-10)
    first = explainer.density
    explainer(model_a, images(2, 17), 0)
    assert explainer.density is first  # cached
    explainer(model_b, images(2, 17), 0)
    assert explainer.density is not first and explainer.is_fitted_for(model_b)
    explainer.layer = "0"
    explainer(model_b, images(2, 17), 0)
    assert explainer.fitted_layer == "0" and explainer.density.num_channels == 8


def test_create_graph_gives_parameter_gradients() -> None:
    model, x, bg = small_cnn(), images(2, 18), images(3, 19)
    explainer = DeepPriorEG(prior="mgm", background=bg, n_samples=6, create_graph=True)
    attr = explainer(model, x, torch.tensor([0, 2]))
    assert attr.requires_grad
    attr.abs().sum().backward()
    for param in (model[0].weight, model[2].weight, model[5].weight):
        assert param.grad is not None and float(param.grad.abs().sum()) > 0


def test_registered_reduce_channels_and_model_state() -> None:
    assert "deepprior_eg" in available()
    model, x = small_cnn(), images(2, 20)
    model.train()
    explainer = create_explainer("deepprior_eg", prior="bgmm", n_components=2, background=images(4, 21),
                                 n_samples=4, reduce_channels=True)
    assert isinstance(explainer, DeepPriorEG)
    out = explainer(model, x, 1)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    assert model.training  # eval mode was restored


def test_background_none_uses_the_batch() -> None:
    """With no background the references and the density come from the explained batch: the same map as
    passing the batch as the background explicitly, and not the map of a zero background."""
    model, x, target = small_cnn(), images(3, 22), torch.tensor([0, 2, 1])
    out = DeepPriorEG(prior="mgm", n_samples=32, seed=2)(model, x, target)
    explicit = DeepPriorEG(prior="mgm", n_samples=32, seed=2)(model, x, target, background=x.clone())
    torch.testing.assert_close(out, explicit, rtol=1e-10, atol=1e-12)
    zeros = DeepPriorEG(prior="mgm", n_samples=32, seed=2)
    assert not torch.allclose(out, zeros(model, x, target, background=torch.zeros_like(x)))
    fitted = DeepPriorEG(prior="mgm", n_samples=4)
    fitted(model, x, 0)
    with torch.no_grad():
        batch_rows = rows(model[:3](x))
    np.testing.assert_allclose(fitted.density.mean.numpy(), batch_rows.mean(axis=0), rtol=1e-10)


def test_density_follows_the_weights() -> None:
    """A model trained further is refitted at its next call; the same weights in another object are not."""
    model, bg, x = small_cnn(0), images(6, 30), images(2, 31)
    explainer = DeepPriorEG(prior="mgm", background=bg, n_samples=4)
    explainer(model, x, 0)
    first = explainer.density
    copy = small_cnn(0)  # another object, the same weights
    explainer(copy, x, 0)
    assert explainer.density is first
    with torch.no_grad():  # what an optimiser step does: in place
        model[0].weight.add_(0.5)
    assert not explainer.is_fitted_for(model)
    explainer(model, x, 0)
    assert explainer.density is not first
    with torch.no_grad():
        bg_rows = rows(model[:3](bg))
    np.testing.assert_allclose(explainer.density.mean.numpy(), bg_rows.mean(axis=0), rtol=1e-10)
    assert not np.allclose(first.mean.numpy(), explainer.density.mean.numpy())


def test_max_background_keeps_a_subset() -> None:
    explainer = DeepPriorEG(background=images(10, 23), max_background=4)
    assert explainer.background.shape == (4, 3, 8, 8)


# ---------------------------------------------------------------- errors


def test_unknown_layer_name() -> None:
    with pytest.raises(ValueError, match="'conv9' is not a module"):
        DeepPriorEG(layer="conv9").fit(small_cnn(), images(2, 0))


def test_non_conv_layer() -> None:
    with pytest.raises(ValueError, match="'5' is a Linear, expected an nn.Conv2d"):
        DeepPriorEG(layer="5").fit(small_cnn(), images(2, 0))


def test_model_without_conv() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).to(DT)
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        DeepPriorEG().fit(model, images(2, 0))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"prior": "gmm"}, "prior must be one of"),
        ({"normalize": "l2"}, "normalize must be one of"),
        ({"n_samples": 0}, "n_samples must be a positive int"),
        ({"shrinkage": 1.5}, "shrinkage must lie in"),
        ({"output": "softmax"}, "output must be one of"),
        ({"background": torch.zeros(3, 8, 8)}, r"background must have shape \[N,C,H,W\]"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DeepPriorEG(**options)


def test_background_shape_mismatch() -> None:
    explainer = DeepPriorEG(background=torch.zeros(2, 3, 6, 6, dtype=DT))
    with pytest.raises(ValueError, match="background images have shape"):
        explainer(small_cnn(), images(2, 0), 0)


def test_maps_do_not_depend_on_earlier_calls() -> None:
    """The fit follows the call's data: background A then B gives B's maps, and with background=None every
    batch is explained under its own density, whatever was explained before."""
    model, x, a, b = small_cnn(), images(2, 50), images(5, 51), images(5, 52)
    explainer = DeepPriorEG(prior="mgm", n_samples=8)
    explainer(model, x, 0, background=a)
    torch.testing.assert_close(
        explainer(model, x, 0, background=b), DeepPriorEG(prior="mgm", n_samples=8)(model, x, 0, background=b)
    )
    first, second = images(3, 53), images(3, 54)
    batchwise = DeepPriorEG(prior="mgm", n_samples=8)
    batchwise(model, first, 0)
    torch.testing.assert_close(batchwise(model, second, 0), DeepPriorEG(prior="mgm", n_samples=8)(model, second, 0))
