"""Max-sensitivity, model-parameter randomisation and accuracy under noise.

Max-sensitivity: Quantus 0.6 ``MaxSensitivity`` (Frobenius norms, difference similarity, normalised by
``||phi(x)||``) draws its noise from NumPy's global RNG; here it is given a ``perturb_func`` that adds our
own draws (:func:`uniform_ball_noise`) in order, so both see the same perturbed inputs and must agree.
Randomisation: no Quantus match (its ``MPRT`` reseeds every layer with the same seed and compares per
batch); the Spearman part is checked against ``scipy.stats.spearmanr`` on independently rebuilt randomised
models, plus Adebayo et al.'s model-independent-explainer case (similarity stays 1).
Noise accuracy: a loop over levels with the public noise draw, and the noise's distribution (KS test).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import quantus
import scipy.stats
import torch
from metrics_helpers import batch, np32, saliency, tiny_cnn
from torch import nn

from impactx.metrics.functional import (
    cascading_randomisation,
    gaussian_noise,
    map_ssim,
    max_sensitivity,
    model_randomisation,
    noise_accuracy_curve,
    randomisable_layers,
    spearman_correlation,
    uniform_ball_noise,
)

# ---------------------------------------------------------------- max-sensitivity


@pytest.mark.parametrize("relative", [True, False])
def test_max_sensitivity_matches_quantus_with_shared_noise(relative):
    model = tiny_cnn(1, 8)
    images, targets, _ = batch(3, 1, 8)
    radius, n = 0.1, 4
    maps = saliency(model, images, targets)
    ours = max_sensitivity(
        model,
        images,
        targets,
        saliency,
        maps,
        radius=radius,
        n_samples=n,
        seed=5,
        relative=relative,
        internal_batch_size=5,
    )
    noise = uniform_ball_noise(images, radius, n, seed=5).reshape(n, 3, -1).numpy()
    assert np.abs(noise).max() <= radius and noise.std() > radius / 3
    draws = iter(range(n))

    def perturb(arr, indices, **kwargs):
        return arr + noise[next(draws)]

    def explain(model, inputs, targets, **kwargs):
        return saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    kwargs = {} if relative else {"norm_denominator": lambda a: np.ones(a.shape[0])}
    metric = quantus.MaxSensitivity(
        nr_samples=n, perturb_func=perturb, normalise=False, abs=False, disable_warnings=True, **kwargs
    )
    ref = metric(
        model=model,
        x_batch=np32(images),
        y_batch=targets.numpy(),
        a_batch=np32(maps),
        explain_func=explain,
        channel_first=True,
        device="cpu",
    )
    torch.testing.assert_close(ours, torch.tensor(np.asarray(ref), dtype=torch.float32), atol=1e-5, rtol=1e-5)
    # computing phi(x) inside gives the same
    torch.testing.assert_close(
        max_sensitivity(
            model, images, targets, saliency, radius=radius, n_samples=n, seed=5, relative=relative
        ),
        ours,
        atol=1e-6,
        rtol=1e-5,
    )


def test_ball_noise_is_batch_invariant_and_explainer_errors():
    images, targets, _ = batch(4, 1, 8)
    full = uniform_ball_noise(images, 0.2, 3, seed=1)
    torch.testing.assert_close(full[:, 1:2], uniform_ball_noise(images[1:2], 0.2, 3, seed=1))
    assert not torch.allclose(full[0], full[1])
    model = tiny_cnn(1, 8)
    with pytest.raises(ValueError, match="radius must be"):
        max_sensitivity(model, images, targets, saliency, radius=0.0)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        max_sensitivity(model, images, targets, saliency, n_samples=0)
    with pytest.raises(TypeError, match="explainer must be a callable"):
        max_sensitivity(model, images, targets, "ig")
    with pytest.raises(RuntimeError, match="same map shape"):
        max_sensitivity(model, images, targets, lambda m, x, y: x[:, :, :4], maps=images, n_samples=1)


# ---------------------------------------------------------------- randomisation


def test_spearman_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 1, 6, 6), generator=gen).float()  # many ties
    b = a + torch.randint(0, 3, (4, 1, 6, 6), generator=gen).float()
    ours = spearman_correlation(a, b)
    for i in range(4):
        ref = scipy.stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert float(ours[i]) == pytest.approx(ref, abs=1e-6)


def _reference_randomised(model, seed):
    """Rebuild the cascade from its documented rule: layers with own parameters and reset_parameters,
    reverse registration order, layer l re-initialised under torch.manual_seed(seed + l)."""
    clone = copy.deepcopy(model)
    names = [
        n
        for n, m in reversed(list(clone.named_modules()))
        if hasattr(m, "reset_parameters") and len(list(m.parameters(recurse=False)))
    ]
    modules = dict(clone.named_modules())
    for step, name in enumerate(names):
        torch.manual_seed(seed + step)
        modules[name].reset_parameters()
        yield name, copy.deepcopy(clone)


def test_randomisation_curve_matches_scipy_reference_and_leaves_model_alone():
    model = tiny_cnn(1, 8)
    model.train()  # must come back in train mode
    images, targets, _ = batch(3, 1, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    curve, names = model_randomisation(model, images, targets, saliency, seed=3, internal_batch_size=2)
    assert names == ["fc", "conv"] == randomisable_layers(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.training and torch.equal(rng, torch.get_rng_state())
    with torch.no_grad():
        original = saliency(model.eval(), images, targets).abs()
    model.train()
    saved_rng = torch.get_rng_state()
    for step, (name, randomised) in enumerate(_reference_randomised(model, 3)):
        assert name == names[step]
        changed = saliency(randomised.eval(), images, targets).abs()
        for i in range(3):
            ref = scipy.stats.spearmanr(original[i].flatten().numpy(), changed[i].flatten().numpy()).statistic
            assert float(curve[i, step]) == pytest.approx(ref, abs=1e-5)
    torch.set_rng_state(saved_rng)
    assert float(curve[:, -1].abs().mean()) < 0.9  # the fully randomised model's maps are different


@pytest.mark.parametrize("similarity", ["spearman", "ssim"])
def test_model_independent_explainer_stays_similar(similarity):
    model = tiny_cnn(1, 16)
    images, targets, _ = batch(2, 1, 16)
    curve, _ = model_randomisation(model, images, targets, lambda m, x, y: x * 2 + 1, similarity=similarity)
    torch.testing.assert_close(curve, torch.ones(2, 2), atol=1e-5, rtol=0)
    if similarity == "ssim":
        other = map_ssim(images, torch.rand(2, 1, 16, 16))
        assert bool((other < 0.5).all())


def test_cascade_copies_are_reproducible():
    model = tiny_cnn(1, 8)
    first = [copy.deepcopy(m.state_dict()) for _, m in cascading_randomisation(model, seed=1)]
    second = [copy.deepcopy(m.state_dict()) for _, m in cascading_randomisation(model, seed=1)]
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(first[0]["fc.weight"], model.state_dict()["fc.weight"])
    assert torch.equal(first[0]["conv.weight"], model.state_dict()["conv.weight"])  # top first


def test_randomisation_errors():
    images, targets, _ = batch(2, 1, 8)
    with pytest.raises(ValueError, match="no layer with parameters"):
        model_randomisation(nn.Flatten(), images, targets, saliency)
    with pytest.raises(ValueError, match="similarity must be one of"):
        model_randomisation(tiny_cnn(1, 8), images, targets, saliency, similarity="kendall")


# ---------------------------------------------------------------- accuracy under noise


def test_noise_accuracy_matches_loop_over_levels():
    model = tiny_cnn(1, 8)
    images, _, _ = batch(6, 1, 8)
    with torch.no_grad():
        targets = model(images).argmax(1)
    targets[0] = (targets[0] + 1) % 3  # one wrong at level 0
    levels = [0.0, 0.3, 1.0, 3.0]
    curve = noise_accuracy_curve(model, images, targets, levels, seed=2, internal_batch_size=7)
    z = gaussian_noise(images, seed=2)
    for j, sigma in enumerate(levels):
        with torch.no_grad():
            expected = (model(images + sigma * z).argmax(1) == targets).float()
        torch.testing.assert_close(curve[:, j], expected)
    assert curve[:, 0].tolist() == [0.0] + [1.0] * 5
    clamped = noise_accuracy_curve(model, images, targets, [1.0], seed=2, clamp=(0.0, 1.0))
    with torch.no_grad():
        expected = (model((images + z).clamp(0, 1)).argmax(1) == targets).float()
    torch.testing.assert_close(clamped[:, 0], expected)


def test_gaussian_noise_is_standard_normal_and_batch_invariant():
    images = torch.rand(4, 1, 64, 64)
    z = gaussian_noise(images, seed=0)
    assert scipy.stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    torch.testing.assert_close(gaussian_noise(images[2:3], seed=0), z[2:3])
    assert not torch.equal(gaussian_noise(images, seed=1), z)


@pytest.mark.parametrize(
    "levels,match",
    [
        ([], "at least one level"),
        ([0.1, -0.2], "finite numbers >= 0"),
        ([float("nan")], "finite numbers"),
        (torch.zeros(2, 2), "must be 1-D"),
        ("0.1", "sequence of numbers"),
        ([True], "finite numbers"),
    ],
)
def test_bad_noise_levels(levels, match):
    images, targets, _ = batch(2, 1, 8)
    with pytest.raises(ValueError, match=match):
        noise_accuracy_curve(tiny_cnn(1, 8), images, targets, levels)


def _replay(noise: np.ndarray):
    """A Quantus ``perturb_func`` adding ``noise[0]``, ``noise[1]``, ... on successive calls."""
    draws = iter(range(len(noise)))

    def perturb(arr, indices, **kwargs):
        return arr + noise[next(draws)]

    return perturb


@pytest.mark.parametrize("nan_on_change", [False, True])
def test_avg_and_max_sensitivity_match_quantus_with_shared_noise_and_changed_predictions(nan_on_change):
    """AvgSensitivity (and MaxSensitivity) on draws large enough to change some predictions, with Quantus'
    ``return_nan_when_prediction_changes`` on and off, against Quantus fed the same noise."""
    from impactx.metrics import AvgSensitivity
    from impactx.metrics.functional import avg_sensitivity

    model = tiny_cnn(1, 8)
    images, targets, _ = batch(4, 1, 8)
    radius, n = 1.5, 5
    maps = saliency(model, images, targets)
    noise = uniform_ball_noise(images, radius, n, seed=2).reshape(n, 4, -1).numpy()
    with torch.no_grad():
        changed = [(model(images + torch.as_tensor(noise[j]).view_as(images)).argmax(1) != model(images).argmax(1))
                   for j in range(n)]
    assert any(bool(c.any()) for c in changed) and not all(bool(c.all()) for c in changed)

    def explain(model, inputs, targets, **kwargs):
        return saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    for ours_fn, theirs in ((avg_sensitivity, quantus.AvgSensitivity), (max_sensitivity, quantus.MaxSensitivity)):
        perturb = _replay(noise)

        metric = theirs(nr_samples=n, perturb_func=perturb, normalise=False, abs=False, disable_warnings=True,
                        return_nan_when_prediction_changes=nan_on_change)
        ref = metric(model=model, x_batch=np32(images), y_batch=targets.numpy(), a_batch=np32(maps),
                     explain_func=explain, channel_first=True, device="cpu")
        ours = ours_fn(model, images, targets, saliency, maps, radius=radius, n_samples=n, seed=2,
                       return_nan_when_prediction_changes=nan_on_change)
        torch.testing.assert_close(ours, torch.tensor(np.asarray(ref), dtype=torch.float32), atol=1e-5, rtol=1e-5,
                                   equal_nan=True)
    avg = AvgSensitivity(saliency, radius=radius, n_samples=n, seed=2, return_nan_when_prediction_changes=nan_on_change)
    avg.update(model, images, targets, maps)
    expected = avg_sensitivity(model, images, targets, saliency, maps, radius=radius, n_samples=n, seed=2,
                               return_nan_when_prediction_changes=nan_on_change)
    kept = expected[~torch.isnan(expected)]  # with the option on, the images with a changed copy are left out
    assert float(avg.compute()) == pytest.approx(float(kept.mean()), rel=1e-6, nan_ok=True)


@pytest.mark.parametrize("abs_", [False, True])
@pytest.mark.parametrize("similarity", ["pearson", "spearman"])
def test_random_logit_matches_quantus_on_its_classes(similarity, abs_):
    """Quantus draws the other class with numpy's generator; the same classes, given to impactx, give the same
    similarities (Quantus' Pearson and Spearman similarity functions)."""
    from impactx.metrics import RandomLogit
    from impactx.metrics.functional import random_logit

    model = tiny_cnn(1, 8, num_classes=5)
    images, _, _ = batch(6, 1, 8, num_classes=5)
    targets = model(images).argmax(dim=1)
    maps = saliency(model, images, targets)
    np.random.seed(3)
    positions = np.random.randint(0, 4, 6)
    others = torch.tensor([[c for c in range(5) if c != int(t)][p] for t, p in zip(targets, positions, strict=True)])

    def explain(model, inputs, targets, **kwargs):
        return saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    func = {"pearson": quantus.similarity_func.correlation_pearson,
            "spearman": quantus.similarity_func.correlation_spearman}[similarity]
    ref = quantus.RandomLogit(num_classes=5, seed=3, similarity_func=func, normalise=False, abs=abs_,
                              disable_warnings=True)(
        model=model, x_batch=np32(images), y_batch=targets.numpy(), a_batch=np32(maps), explain_func=explain,
        channel_first=True, device="cpu")
    ours = random_logit(model, images, targets, saliency, maps, others=others, similarity=similarity, abs=abs_)
    torch.testing.assert_close(ours, torch.tensor(np.asarray(ref), dtype=torch.float32), atol=1e-5, rtol=1e-5)
    signed = random_logit(model, images, targets, saliency, maps, others=others, similarity=similarity)
    assert abs_ != bool(torch.allclose(ours, signed))
    drawn = random_logit(model, images, targets, saliency, maps, similarity=similarity, seed=1, abs=abs_)
    alone = random_logit(model, images[2:3], targets[2:3], saliency, similarity=similarity, seed=1, abs=abs_)
    torch.testing.assert_close(alone, drawn[2:3])  # the drawn class is the image's own
    metric = RandomLogit(saliency, similarity=similarity, seed=1, abs=abs_)
    metric.update(model, images, targets)
    assert float(metric.compute()) == pytest.approx(float(drawn.mean()), rel=1e-5)


def test_pearson_similarity_matches_scipy():
    from impactx.metrics.functional import pearson_correlation

    a, b = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    expected = [scipy.stats.pearsonr(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(4)]
    torch.testing.assert_close(pearson_correlation(a, b), torch.tensor(expected, dtype=torch.float32), atol=1e-5,
                               rtol=1e-5)


def test_local_lipschitz_estimate_matches_quantus_with_shared_noise():
    from impactx.metrics import LocalLipschitzEstimate
    from impactx.metrics.functional import lipschitz_noise, local_lipschitz_estimate

    model = tiny_cnn(1, 8)
    images, targets, _ = batch(3, 1, 8)
    n, std = 6, 0.1
    maps = saliency(model, images, targets)
    noise = lipschitz_noise(images, std, n, seed=4)
    assert abs(float(noise.std()) - std) < 0.01 and abs(float(noise.mean())) < 0.01

    def explain(model, inputs, targets, **kwargs):
        return saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    ref = quantus.LocalLipschitzEstimate(nr_samples=n, perturb_func=_replay(noise.reshape(n, 3, -1).numpy()),
                                         normalise=False, abs=False, disable_warnings=True)(
        model=model, x_batch=np32(images), y_batch=targets.numpy(), a_batch=np32(maps), explain_func=explain,
        channel_first=True, device="cpu")
    ours = local_lipschitz_estimate(model, images, targets, saliency, maps, std=std, n_samples=n, seed=4,
                                    internal_batch_size=5, normalise=False)
    torch.testing.assert_close(ours, torch.tensor(np.asarray(ref), dtype=torch.float32), atol=1e-5, rtol=1e-4)
    metric = LocalLipschitzEstimate(saliency, std=std, n_samples=n, seed=4, normalise=False)
    metric.update(model, images, targets)
    assert float(metric.compute()) == pytest.approx(float(ours.mean()), rel=1e-5)


def test_layer_orders_randomise_the_layers_they_name():
    """top_down cascades from the output, bottom_up from the input, independent re-initialises one layer at a time;
    a layer gets the same random weights in every order."""
    from impactx.metrics.functional.randomisation import cascading_randomisation, randomisable_layers

    model = tiny_cnn(1, 8)
    names = randomisable_layers(model)
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    def changed(copy_):
        return sorted({k.rsplit(".", 1)[0] for k, v in copy_.state_dict().items() if not torch.equal(v, trained[k])})

    seen = {order: [(name, changed(m)) for name, m in cascading_randomisation(model, 3, order)]
            for order in ("top_down", "bottom_up", "independent")}
    assert [n for n, _ in seen["top_down"]] == names and [n for n, _ in seen["bottom_up"]] == names[::-1]
    assert [c for _, c in seen["top_down"]] == [sorted(names[:i + 1]) for i in range(len(names))]
    assert [c for _, c in seen["bottom_up"]] == [sorted(names[::-1][:i + 1]) for i in range(len(names))]
    assert [c for _, c in seen["independent"]] == [[n] for n in names]
    weights = {order: {name: dict(m.named_modules())[name].weight.clone()
                       for name, m in cascading_randomisation(model, 3, order)} for order in ("top_down", "independent")}
    assert all(torch.equal(weights["top_down"][n], weights["independent"][n]) for n in names)
    with pytest.raises(ValueError, match="layer_order"):
        next(cascading_randomisation(model, 0, "sideways"))


@pytest.mark.parametrize("name", ["max", "avg", "lipschitz"])
def test_sensitivity_metrics_check_their_arguments_at_construction(name):
    """The three share one set of checks; each names its own noise size (``radius`` or ``std``)."""
    from impactx.metrics import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity
    from impactx.metrics.functional import local_lipschitz_estimate

    cls, noise = {"max": (MaxSensitivity, "radius"), "avg": (AvgSensitivity, "radius"),
                  "lipschitz": (LocalLipschitzEstimate, "std")}[name]
    with pytest.raises(TypeError, match="explainer must be a callable"):
        cls("ig")
    with pytest.raises(ValueError, match=f"{noise} must be a finite number > 0, got 0"):
        cls(saliency, **{noise: 0})
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        cls(saliency, n_samples=0)
    with pytest.raises(ValueError, match="internal_batch_size"):
        cls(saliency, internal_batch_size=-1)
    images, targets, _ = batch(2, 1, 8)
    with pytest.raises(ValueError, match="std must be a finite number > 0, got -1"):
        local_lipschitz_estimate(tiny_cnn(1, 8), images, targets, saliency, std=-1)


@pytest.mark.parametrize(("abs_", "normalise"), [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("name", ["max", "avg", "lipschitz"])
def test_sensitivity_abs_and_normalise_match_quantus_per_image(name, abs_, normalise):
    """Quantus' ``abs`` and ``normalise`` on phi(x) and every phi(x + d). Quantus normalises a whole batch of maps by
    one maximum, here each map by its own: the two agree image by image, so Quantus gets one image per call."""
    from impactx.metrics import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity
    from impactx.metrics.functional import avg_sensitivity, lipschitz_noise, local_lipschitz_estimate

    ours_fn, cls, theirs, size, noise_fn = {
        "max": (max_sensitivity, MaxSensitivity, quantus.MaxSensitivity, "radius", uniform_ball_noise),
        "avg": (avg_sensitivity, AvgSensitivity, quantus.AvgSensitivity, "radius", uniform_ball_noise),
        "lipschitz": (local_lipschitz_estimate, LocalLipschitzEstimate, quantus.LocalLipschitzEstimate, "std",
                      lipschitz_noise),
    }[name]
    model = tiny_cnn(1, 8)
    images, targets, _ = batch(3, 1, 8)
    n = 4
    maps = saliency(model, images, targets)
    noise = noise_fn(images, 0.1, n, seed=6).reshape(n, 3, -1).numpy()

    def explain(model, inputs, targets, **kwargs):
        return saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    ref = []
    for i in range(3):
        metric = theirs(nr_samples=n, perturb_func=_replay(noise[:, i:i + 1]), abs=abs_, normalise=normalise,
                        disable_warnings=True)
        ref.append(metric(model=model, x_batch=np32(images[i:i + 1]), y_batch=targets[i:i + 1].numpy(),
                          a_batch=np32(maps[i:i + 1]), explain_func=explain, channel_first=True, device="cpu")[0])
    options = {size: 0.1, "n_samples": n, "seed": 6, "abs": abs_, "normalise": normalise}
    ours = ours_fn(model, images, targets, saliency, maps, **options)
    torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float32), atol=1e-5, rtol=1e-4)
    plain = ours_fn(model, images, targets, saliency, maps, **{**options, "abs": False, "normalise": False})
    assert not torch.allclose(ours, plain)  # the options do change the score
    metric = cls(saliency, **options)
    metric.update(model, images, targets, maps)
    assert float(metric.compute()) == pytest.approx(float(ours.mean()), rel=1e-5)
