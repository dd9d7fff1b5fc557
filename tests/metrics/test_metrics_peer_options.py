"""The peers' options on the older metrics: Quantus' ``abs`` and ``normalise``, and the random-order baseline.

``abs`` / ``normalise``: Quantus 0.6 ``RegionPerturbation`` (MoRF/LeRF), ``PixelFlipping`` (deletion),
``Sparseness`` and ``TopKIntersection`` (one point of the overlap curve) with the same option values. The maps
have negative entries of the largest magnitude, so ``abs`` changes the ranking and a ``normalise`` that divided by
the signed maximum would reverse it. Quantus' ``normalise`` divides all maps of a call by one common maximum;
where that changes a score (sparseness: ``eps`` is added after it), Quantus is called one image at a time.

Random order: no peer has it (Quantus' ``RandomLogit`` is another test), so it is checked by closed forms: on a
model that reads one feature only, the step at which the curve drops is that feature's rank, which must be uniform
over the images whatever the map says; on a linear model with its exact contributions as the map, MoRF lies below
every other order pointwise and LeRF above, so ``AOPC_morf >= AOPC_random >= AOPC_lerf`` image by image.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import quantus
import scipy.stats
import torch
from metrics_helpers import batch, linear_model, np32, tiny_cnn
from torch import nn

from impactx.metrics import KPM, DeletionAUC, MoRF, OverlapAUC, Sparseness
from impactx.metrics.functional import (
    Perturbation,
    aopc,
    deletion_curve,
    insertion_curve,
    keep_remove_curve,
    overlap_curve,
    region_perturbation_curve,
    sparseness,
)

OPTIONS = [(False, False), (True, False), (False, True), (True, True)]
ZERO = Perturbation("constant", value=0.0)


def _signed_maps(n: int, chans: int, size: int, seed: int = 3) -> torch.Tensor:
    """Maps whose largest magnitude is negative in every image (so ``abs`` and a signed-max division matter)."""
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, chans, size, size, generator=gen)
    maps[:, 0, 0, 0] = -10.0
    return maps


def _quantus_call(metric, model, images, targets, maps, **extra):
    return np.asarray(metric(model=model, x_batch=np32(images), y_batch=targets.numpy(), a_batch=np32(maps),
                             channel_first=True, device="cpu", **extra), dtype=np.float64)


# ---------------------------------------------------------------- abs and normalise against Quantus


@pytest.mark.parametrize(("abs_", "normalise"), OPTIONS)
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_options_match_quantus_region_perturbation(abs_, normalise, order):
    model = tiny_cnn(3)
    images, targets, _ = batch(4, 3)
    maps = _signed_maps(4, 3, 16)
    n = 8
    ours = region_perturbation_curve(model, images, targets, maps, order=order, patch_size=4, n_steps=n,
                                     perturbation=ZERO, abs=abs_, normalise=normalise)
    ref = _quantus_call(quantus.RegionPerturbation(patch_size=4, order=order, regions_evaluation=n, perturb_baseline=0.0,
                                                   abs=abs_, normalise=normalise, disable_warnings=True),
                        model, images, targets, maps, softmax=True)
    torch.testing.assert_close(ours[:, :1] - ours[:, 1:], torch.from_numpy(ref).float(), atol=1e-5, rtol=0)
    metric = MoRF(patch_size=4, n_steps=n, perturbation=ZERO, abs=abs_, normalise=normalise) if order == "morf" \
        else None
    if metric is not None:
        metric.update(model, images, targets, maps)
        torch.testing.assert_close(metric.compute()["curve"], ours.mean(dim=0))


@pytest.mark.parametrize(("abs_", "normalise"), OPTIONS)
def test_deletion_options_match_quantus_pixel_flipping(abs_, normalise):
    model = tiny_cnn(1)
    images, targets, _ = batch(4, 1)
    maps = _signed_maps(4, 1, 16)
    n = 16
    ours = deletion_curve(model, images, targets, maps, n_steps=n, abs=abs_, normalise=normalise)
    ref = _quantus_call(quantus.PixelFlipping(features_in_step=256 // n, perturb_baseline=0.0, abs=abs_,
                                              normalise=normalise, disable_warnings=True),
                        model, images, targets, maps, softmax=True)
    torch.testing.assert_close(ours[:, 1:], torch.from_numpy(ref).float(), atol=1e-5, rtol=0)
    metric = DeletionAUC(n_steps=n, abs=abs_, normalise=normalise)
    metric.update(model, images, targets, maps)
    torch.testing.assert_close(metric.compute()["curve"], ours.mean(dim=0))


def test_abs_ranks_by_magnitude_and_normalise_changes_no_curve():
    """Closed form: with ``abs`` the most negative entry is deleted first; ``normalise`` is a positive factor per
    image, which cannot change any ranking (insertion too)."""
    model = linear_model(1, 4, num_classes=2, bias=False)
    images, targets, _ = batch(2, 1, 4, num_classes=2)
    maps = _signed_maps(2, 1, 4)
    w = model[1].weight.detach()[targets]
    plain = deletion_curve(model, images, targets, maps, n_steps=16, output="logit")
    by_size = deletion_curve(model, images, targets, maps, n_steps=16, output="logit", abs=True)
    logit = (w * images.flatten(1)).sum(1)
    torch.testing.assert_close(by_size[:, 1], logit - w[:, 0] * images[:, 0, 0, 0])  # pixel (0, 0) goes first
    assert not torch.allclose(plain[:, 1], by_size[:, 1])
    for fn in (deletion_curve, insertion_curve):
        torch.testing.assert_close(fn(model, images, targets, maps, n_steps=16, normalise=True),
                                   fn(model, images, targets, maps, n_steps=16))


@pytest.mark.parametrize(("abs_", "normalise"), OPTIONS)
def test_sparseness_options_match_quantus_per_image(abs_, normalise):
    model = tiny_cnn(1)
    images, targets, _ = batch(4, 1)
    maps = 1e-3 * _signed_maps(4, 1, 16)  # small values: eps = 1e-7 weighs differently with and without normalise
    maps[1] = 0.0  # an all-zero map stays as it is under normalise (Quantus refuses it: scored 0 by hand)
    ref = [0.0 if i == 1 else
           _quantus_call(quantus.Sparseness(abs=abs_, normalise=normalise, disable_warnings=True),
                         model, images[i:i + 1], targets[i:i + 1], maps[i:i + 1])[0] for i in range(4)]
    ours = sparseness(maps, abs=abs_, normalise=normalise)
    # signed maps (abs=False) have sums near 0 and Gini values far from [0, 1]: float32 against float64, relative
    torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    if normalise:  # scale-free once normalised
        torch.testing.assert_close(sparseness(maps * 1e4, abs=abs_, normalise=True), ours, atol=1e-5, rtol=0)


def test_sparseness_metric_defaults_are_quantus():
    model = tiny_cnn(1)
    images, targets, _ = batch(3, 1)
    maps = 1e-3 * _signed_maps(3, 1, 16)
    metric = Sparseness()
    metric.update(maps)
    ref = [_quantus_call(quantus.Sparseness(disable_warnings=True), model, images[i:i + 1], targets[i:i + 1],
                         maps[i:i + 1])[0] for i in range(3)]
    assert float(metric.compute()) == pytest.approx(float(np.mean(ref)), abs=1e-6)
    assert float(metric.compute()) != pytest.approx(float(sparseness(maps).mean()), abs=1e-6)  # unnormalised differs
    with pytest.raises(TypeError, match="normalise must be a bool"):
        Sparseness(normalise="yes")


@pytest.mark.parametrize(("abs_", "normalise"), OPTIONS)
def test_overlap_points_match_quantus_top_k_intersection(abs_, normalise):
    """``Overlap(p)`` is Quantus' ``TopKIntersection`` at ``k = ceil(p |S|)``, for masks of one size ``|S|``."""
    model = tiny_cnn(1)
    images, targets, _ = batch(3, 1)
    maps = _signed_maps(3, 1, 16)
    masks = torch.zeros(3, 1, 16, 16)
    for i, (top, left) in enumerate([(0, 0), (5, 7), (9, 2)]):
        masks[i, 0, top:top + 5, left:left + 4] = 1  # |S| = 20
    n = 4
    ours = overlap_curve(maps, masks, n_steps=n, abs=abs_, normalise=normalise)
    for i in range(1, n + 1):
        k = math.ceil(i * 20 / n)
        ref = _quantus_call(quantus.TopKIntersection(k=k, abs=abs_, normalise=normalise, disable_warnings=True),
                            model, images, targets, maps, s_batch=np32(masks))
        torch.testing.assert_close(ours[:, i - 1], torch.from_numpy(ref).float(), atol=1e-6, rtol=0)
    metric = OverlapAUC(n_steps=n, abs=abs_, normalise=normalise)
    metric.update(maps, masks)
    torch.testing.assert_close(metric.compute()["curve"], ours.mean(dim=0))


def test_bad_flags_are_refused_early():
    with pytest.raises(TypeError, match="abs must be a bool, got 'no'"):
        MoRF(abs="no")
    with pytest.raises(TypeError, match="abs must be a bool"):
        deletion_curve(tiny_cnn(1), *batch(2, 1), abs=1)
    with pytest.raises(TypeError, match="normalise must be a bool"):
        OverlapAUC(normalise=1)
    with pytest.raises(TypeError, match="random_baseline must be a bool"):
        DeletionAUC(random_baseline="yes")


# ---------------------------------------------------------------- random-order baseline


def _one_feature_model(size: int, feature: int) -> nn.Module:
    """Logit 0 = the input's value at flat index ``feature`` (logit 1 = 0): the curve drops when it is removed."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0, feature] = 1.0
    return model


def test_random_order_is_uniform_and_ignores_the_map():
    """Deletion in a random order: the drop step is the feature's rank, uniform over 0..P-1 across images, whatever
    the map (here one that ranks the feature first)."""
    size, feature, n_images = 4, 5, 800
    model = _one_feature_model(size, feature)
    images = 1.0 + torch.rand(n_images, 1, size, size, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(n_images, dtype=torch.long)
    maps = torch.zeros(n_images, 1, size, size)
    maps.view(n_images, -1)[:, feature] = 1.0
    kwargs = dict(n_steps=size * size, output="logit")
    ranked = deletion_curve(model, images, targets, maps, **kwargs)
    assert bool((ranked[:, 1:] == 0).all())  # the map's order deletes it first
    curve = deletion_curve(model, images, targets, maps, random_order=True, **kwargs)
    rank = (curve[:, 1:] != 0).sum(dim=1)  # features deleted before it
    counts = torch.bincount(rank, minlength=size * size).numpy()
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    torch.testing.assert_close(deletion_curve(model, images, targets, -maps, random_order=True, **kwargs), curve)
    # keyed on each image and the perturbation's seed: the same alone, another order under another seed
    torch.testing.assert_close(
        deletion_curve(model, images[7:8], targets[7:8], maps[7:8], random_order=True, **kwargs), curve[7:8])
    other = deletion_curve(model, images, targets, maps, random_order=True,
                           perturbation=Perturbation("constant", seed=1), **kwargs)
    assert not torch.equal(other, curve)


def test_random_region_order_is_uniform_over_regions():
    size, patch, n_images = 8, 2, 800
    model = _one_feature_model(size, 2 * size + 5)  # pixel (2, 5): region (1, 2) of the 4x4 grid, index 6
    images = 1.0 + torch.rand(n_images, 1, size, size, generator=torch.Generator().manual_seed(1))
    targets = torch.zeros(n_images, dtype=torch.long)
    maps = torch.rand(n_images, 1, size, size)
    curves = {order: region_perturbation_curve(model, images, targets, maps, order=order, patch_size=patch,
                                               perturbation=ZERO, output="logit", random_order=True)
              for order in ("morf", "lerf")}
    torch.testing.assert_close(curves["morf"], curves["lerf"])
    rank = (curves["morf"][:, 1:] != 0).sum(dim=1)
    assert scipy.stats.chisquare(torch.bincount(rank, minlength=16).numpy()).pvalue > 1e-3


def test_random_baseline_sits_between_morf_and_lerf_on_a_linear_model():
    """Exact contributions of a linear model: deleting the top-k regions gives the lowest logit any k regions can
    give, the bottom-k the highest; a random order lies in between, image by image."""
    model = linear_model(1, 8, num_classes=3)
    images, targets, _ = batch(6, 1, 8)
    maps = (images.flatten(1) * model[1].weight.detach()[targets]).view_as(images)
    options = dict(patch_size=2, perturbation=ZERO, output="logit")
    morf = aopc(region_perturbation_curve(model, images, targets, maps, order="morf", **options))
    lerf = aopc(region_perturbation_curve(model, images, targets, maps, order="lerf", **options))
    random = aopc(region_perturbation_curve(model, images, targets, maps, random_order=True, **options))
    assert bool((morf >= random - 1e-6).all()) and bool((random >= lerf - 1e-6).all())
    assert bool((morf > random + 1e-3).any()) and bool((random > lerf + 1e-3).any())


def test_metric_random_baseline_reports_the_chance_curve():
    model = tiny_cnn(1)
    images, targets, maps = batch(5, 1)
    metric = MoRF(patch_size=4, n_steps=8, random_baseline=True)
    for rows in (slice(0, 2), slice(2, 5)):
        metric.update(model, images[rows], targets[rows], maps[rows])
    out = metric.compute()
    expected = region_perturbation_curve(model, images, targets, maps, patch_size=4, n_steps=8,
                                         perturbation=Perturbation("uniform"), random_order=True).mean(dim=0)
    torch.testing.assert_close(out["random_curve"], expected)
    torch.testing.assert_close(out["random_aopc"], aopc(expected))
    plain = MoRF(patch_size=4, n_steps=8)
    plain.update(model, images, targets, maps)
    assert set(plain.compute()) == {"curve", "aopc"}
    torch.testing.assert_close(plain.compute()["aopc"], out["aopc"])


def test_keep_remove_random_order_keeps_the_eligible_features():
    """KPM in a random order keeps the same positive features: the curve starts and ends where KPM does, and on a
    linear model with exact contributions, keeping the largest first is never below a random order."""
    model = linear_model(1, 8, num_classes=3, bias=False)
    images, targets, _ = batch(4, 1, 8)
    maps = (images.flatten(1) * model[1].weight.detach()[targets]).view_as(images)
    ranked = keep_remove_curve(model, images, targets, maps, variant="kpm", n_steps=16)
    random = keep_remove_curve(model, images, targets, maps, variant="kpm", n_steps=16, random_order=True)
    torch.testing.assert_close(random[:, [0, -1]], ranked[:, [0, -1]])
    assert bool((ranked >= random - 1e-5).all()) and bool((ranked > random + 1e-3).any())
    metric = KPM(n_steps=16, random_baseline=True)
    metric.update(model, images, targets, maps)
    torch.testing.assert_close(metric.compute()["random_curve"], random.mean(dim=0))


def test_evaluation_suite_logs_the_random_baseline_summary():
    """``{morf: {random_baseline: true}}`` in an evaluation config: the chance AOPC becomes one more scalar."""
    from callbacks.suite import METRICS, check_metrics, to_result

    options = check_metrics({"morf": {"random_baseline": True, "abs": True}})["morf"]
    metric = METRICS["morf"].cls(**options)
    model = tiny_cnn(1)
    images, targets, maps = batch(3, 1)
    metric.update(model, images, targets, maps)
    result = to_result(METRICS["morf"], metric, metric.compute())
    assert set(result.scalars) == {"aopc", "random_aopc"}
    assert all(v.dim() == 0 for v in result.scalars.values()) and result.curve.shape == (17,)
