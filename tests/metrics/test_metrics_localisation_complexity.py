"""Localisation (pointing game, relevance mass and rank accuracy, attribution localisation) and complexity
(entropy, effective complexity) against Quantus 0.6 on the same maps and masks, plus closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quantus
import torch
from metrics_helpers import batch, np32, tiny_cnn

from impactx.metrics import (
    AttributionLocalisation,
    EffectiveComplexity,
    EntropyComplexity,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
)
from impactx.metrics.functional.complexity import effective_complexity, entropy_complexity
from impactx.metrics.functional.localisation import (
    attribution_localisation,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)


def _masks(n: int, size: int = 16, seed: int = 5) -> torch.Tensor:
    """Random rectangles ``[n,1,size,size]``; the last image's mask is empty (NaN in both libraries)."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n - 1):
        top, left = (int(v) for v in torch.randint(0, size // 2, (2,), generator=gen))
        h, w = (int(v) for v in torch.randint(2, size // 2, (2,), generator=gen))
        masks[i, 0, top:top + h, left:left + w] = 1
    return masks


def _quantus(metric, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    images, targets, _ = batch(maps.shape[0], 1)
    values = metric(model=tiny_cnn(1), x_batch=np32(images), y_batch=targets.numpy(), a_batch=np32(maps),
                    s_batch=np32(masks), channel_first=True, device="cpu")
    return torch.tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32)


CASES = [
    (pointing_game, quantus.PointingGame, {}),
    # PointingGame(weighted=True) crashes in Quantus 0.6 (it assigns [n,1] into hit[hit]); closed form below.
    (relevance_mass_accuracy, quantus.RelevanceMassAccuracy, {}),
    (relevance_rank_accuracy, quantus.RelevanceRankAccuracy, {}),
    (attribution_localisation, quantus.AttributionLocalisation, {}),
    (attribution_localisation, quantus.AttributionLocalisation, {"positive_attributions": True}),
]


@pytest.mark.parametrize(("ours", "theirs", "options"), CASES)
@pytest.mark.parametrize("abs_", [False, True])
@pytest.mark.parametrize("normalise", [False, True])
def test_localisation_equals_quantus(ours, theirs, options, abs_, normalise) -> None:
    if theirs is quantus.AttributionLocalisation and not abs_:
        pytest.skip("Quantus' AttributionLocalisation requires abs=True")
    _, _, maps = batch(6, 1)
    maps[2] = maps[2].abs()  # one all-positive map
    masks = _masks(6)
    expected = _quantus(theirs(abs=abs_, normalise=normalise, disable_warnings=True, **options), maps, masks)
    got = ours(maps, masks, abs=abs_, normalise=normalise, **options)
    assert torch.isnan(got[-1])
    if theirs is quantus.PointingGame:
        # Quantus writes its NaN for an empty mask into a boolean array, where it becomes True (a hit).
        assert float(expected[-1]) == 1.0
    else:
        assert torch.isnan(expected[-1])
    torch.testing.assert_close(got[:-1], expected[:-1], atol=1e-5, rtol=1e-5)


def test_localisation_closed_forms() -> None:
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 0, 0], maps[0, 0, 3, 3] = 3.0, 1.0
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :2] = 1
    assert float(pointing_game(maps, mask)) == 1.0 and float(pointing_game(maps, 1 - mask)) == 0.0
    assert float(pointing_game(maps, mask, weighted=True)) == pytest.approx(1 - 4 / 16)
    assert float(relevance_mass_accuracy(maps, mask)) == pytest.approx(0.75)
    # Top 4: (0,0) in, (3,3) out, then the zero ties in index order, (0,1) in and (0,2) out.
    assert float(relevance_rank_accuracy(maps, mask)) == pytest.approx(0.5)
    assert float(attribution_localisation(maps, mask, weighted=True)) == pytest.approx(0.75 * 4 / 16)


def test_three_channel_maps_are_summed_to_pixels() -> None:
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, :, 1, 1] = torch.tensor([1.0, 1.0, 1.0])
    maps[0, 0, 2, 2] = 2.5  # the largest single entry, but the pixel sum at (1, 1) is larger
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1, 1] = 1
    assert float(pointing_game(maps, mask)) == 1.0
    with pytest.raises(ValueError, match="do not fit"):
        pointing_game(maps, torch.zeros(1, 2, 4, 4))


def test_mask_metrics_skip_empty_masks_and_sync_as_sums() -> None:
    _, _, maps = batch(6, 1)
    masks = _masks(6)
    metric = RelevanceMassAccuracy()
    metric.update(maps[:3], masks[:3])
    metric.update(maps[3:], masks[3:])
    expected = relevance_mass_accuracy(maps, masks)[:-1].mean()
    torch.testing.assert_close(metric.compute(), expected)
    for cls in (PointingGame, RelevanceRankAccuracy, AttributionLocalisation):
        m = cls()
        m.update(maps, masks)
        assert math.isfinite(float(m.compute()))


@pytest.mark.parametrize("normalise", [False, True])
def test_complexity_equals_quantus(normalise) -> None:
    images, targets, maps = batch(5, 1)
    maps[0] = 0.0
    maps[0, 0, 3, 3] = 1.0  # one-hot: entropy 0
    # Quantus normalises everything it is given by the largest value of all of it; impactx each map by its
    # own (batch invariant): Quantus is called one image at a time.
    def per_image(metric) -> list[float]:
        return [metric(model=tiny_cnn(1), x_batch=np32(images[i:i + 1]), y_batch=targets[i:i + 1].numpy(),
                       a_batch=np32(maps[i:i + 1]), channel_first=True, device="cpu")[0] for i in range(len(maps))]

    expected = per_image(quantus.Complexity(normalise=normalise, disable_warnings=True))
    torch.testing.assert_close(entropy_complexity(maps, normalise), torch.tensor(expected, dtype=torch.float32),
                               atol=1e-4, rtol=1e-5)
    for eps in (1e-5, 0.5):
        expected = per_image(quantus.EffectiveComplexity(eps=eps, normalise=normalise, disable_warnings=True))
        torch.testing.assert_close(effective_complexity(maps, eps, normalise),
                                   torch.tensor(expected, dtype=torch.float32))


def test_complexity_closed_forms_and_classes() -> None:
    uniform = torch.full((2, 1, 4, 4), 0.5)
    torch.testing.assert_close(entropy_complexity(uniform), torch.full((2,), math.log(16)))
    metric = EntropyComplexity()
    metric.update(uniform)
    assert float(metric.compute()) == pytest.approx(math.log(16), rel=1e-5)
    effective = EffectiveComplexity(eps=0.1)
    effective.update(torch.tensor([[0.0, 0.05, 0.2, -1.0]]))
    assert float(effective.compute()) == 2.0  # normalised by 1.0: |0.2| and |-1| exceed 0.1
    with pytest.raises(ValueError, match="eps"):
        EffectiveComplexity(eps=-1.0)


def test_completeness_gap_separates_complete_from_incomplete_methods() -> None:
    """IG from the same baseline closes the gap (to its quadrature error); the plain gradient does not; on a model
    without bias, input x gradient is exactly complete from zero."""
    from impactx.attribution import attribute
    from impactx.metrics import Completeness
    from impactx.metrics.functional.axiomatic import completeness_gap

    model = tiny_cnn(1).double()
    images, _, _ = batch(4, 1)
    images = images.double()
    targets = model(images).argmax(dim=1)
    ig = attribute("ig", model, images, targets, n_steps=64)
    with torch.no_grad():
        gap = model(images).gather(1, targets[:, None])[:, 0] - model(torch.zeros_like(images)).gather(
            1, targets[:, None])[:, 0]
    expected = (ig.flatten(1).sum(dim=1) - gap).abs()
    torch.testing.assert_close(completeness_gap(model, images, targets, ig), expected)
    assert float(completeness_gap(model, images, targets, ig, relative=True).max()) < 1e-3
    gradient = attribute("gradient", model, images, targets)
    assert float(completeness_gap(model, images, targets, gradient, relative=True).mean()) > 0.5
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 3, bias=False)).double()
    ixg = attribute("input_x_gradient", linear, images, torch.tensor([0, 1, 2, 0]))
    assert float(completeness_gap(linear, images, torch.tensor([0, 1, 2, 0]), ixg).max()) < 1e-12
    metric = Completeness(relative=True)
    metric.update(model, images, targets, ig)
    assert float(metric.compute()) < 1e-3


def test_non_sensitivity_equals_quantus() -> None:
    """Quantus NonSensitivity (one feature per step, "black" baseline = each image's minimum) on maps where some
    features have no attribution; normalise=False on both (Quantus normalises over the whole call)."""
    from impactx.metrics import NonSensitivity
    from impactx.metrics.functional.axiomatic import non_sensitivity

    model = tiny_cnn(1, 8)
    images, targets, maps = batch(3, 1, 8)
    maps = torch.where(maps.abs() > 0.8, maps, torch.zeros_like(maps))  # many attribution-free features
    expected = quantus.NonSensitivity(eps=1e-3, abs=True, normalise=False, disable_warnings=True)(
        model=model, x_batch=np32(images), y_batch=targets.numpy(), a_batch=np32(maps), channel_first=True,
        device="cpu", softmax=True)
    ours = non_sensitivity(model, images, targets, maps, eps=1e-3, output="prob", internal_batch_size=50)
    torch.testing.assert_close(ours, torch.tensor(np.asarray(expected), dtype=torch.float32))
    assert 0 < float(ours.min()) < 64
    metric = NonSensitivity(eps=1e-3, output="prob")
    metric.update(model, images, targets, maps)
    assert float(metric.compute()) == pytest.approx(float(ours.mean()))
    grouped = non_sensitivity(model, images, targets, maps, eps=1e-3, output="prob", features_in_step=4)
    assert grouped.shape == (3,) and float(grouped.max()) <= 16


def test_input_invariance_separates_gradients_from_input_times_gradient() -> None:
    """Kindermans et al.: under a compensated input shift the gradient is unchanged, input x gradient and IG from a
    fixed zero baseline are not (closed forms: the shifted input x gradient differs by exactly c * gradient)."""
    from impactx.attribution import create_explainer
    from impactx.metrics import InputInvariance
    from impactx.metrics.functional.axiomatic import ShiftedInput, input_invariance

    model = tiny_cnn(1).double()
    images, targets, _ = batch(3, 1)
    images = images.double()
    gradient, ixg = create_explainer("gradient"), create_explainer("input_x_gradient")
    assert float(input_invariance(model, images, targets, gradient).max()) < 1e-12
    grads = gradient(model, images, targets)
    expected = (-1.0 * grads).flatten(1).norm(dim=1) / ixg(model, images, targets).flatten(1).norm(dim=1)
    torch.testing.assert_close(input_invariance(model, images, targets, ixg), expected)
    assert float(input_invariance(model, images, targets, create_explainer("ig", n_steps=16)).min()) > 0.05
    with torch.no_grad():
        torch.testing.assert_close(ShiftedInput(model, -1.0)(images - 1.0), model(images))
    metric = InputInvariance(gradient)
    metric.update(model, images, targets)
    assert float(metric.compute()) < 1e-12
