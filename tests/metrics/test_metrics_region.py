"""MoRF / LeRF region perturbation and AOPC.

Reference: Quantus 0.6 ``RegionPerturbation`` with the same perturbation (constant 0 baseline, non-overlapping
patches ranked by the summed map, ``order="morf"|"lerf"``). Quantus returns ``f(x) - f(x_k)`` for k = 1..n,
i.e. ``curve[:, :1] - curve[:, 1:]`` of ours; AOPC (Samek et al.) averages it over k = 0..n, so it equals
Quantus' row sum divided by ``n + 1``. Quantus' "uniform" baseline is one scalar per image and step, not
per-pixel noise, so the uniform replacement is checked against a hand-computed linear-model case instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import scipy.ndimage
import torch
from metrics_helpers import batch, linear_model, np32, tiny_cnn

from impactx.metrics.functional import (
    Perturbation,
    aopc,
    gaussian_blur,
    lerf_curve,
    morf_curve,
    region_perturbation_curve,
)


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("in_chans,map_chans", [(1, 1), (3, 3), (3, 1)])
def test_matches_quantus_region_perturbation(order, in_chans, map_chans):
    model = tiny_cnn(in_chans)
    images, targets, maps = batch(4, in_chans)
    maps = maps[:, :map_chans]
    n = 10
    ours = region_perturbation_curve(
        model, images, targets, maps, order=order, patch_size=4, n_steps=n, perturbation={"replacement": "constant", "value": 0.0}
    )
    metric = quantus.RegionPerturbation(
        patch_size=4,
        order=order,
        regions_evaluation=n,
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    ref = np.asarray(
        metric(
            model=model,
            x_batch=np32(images),
            y_batch=targets.numpy(),
            a_batch=np32(maps),
            channel_first=True,
            softmax=True,
            device="cpu",
        )
    )
    torch.testing.assert_close(ours[:, :1] - ours[:, 1:], torch.from_numpy(ref).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        aopc(ours), torch.from_numpy(ref.sum(axis=1) / (n + 1)).float(), atol=1e-5, rtol=0
    )


def test_uniform_noise_hand_computed_on_linear_model():
    """Logit of a linear model after replacing the top-k regions by the noise field U: w.(x*(1-M_k) + U*M_k)."""
    model = linear_model(1, 8, num_classes=2)
    images, targets, maps = batch(3, 1, 8, num_classes=2)
    curve = morf_curve(
        model,
        images,
        targets,
        maps,
        patch_size=4,
        perturbation=Perturbation("uniform", noise_range=(-1.0, 2.0), seed=7),
        output="logit",
    )
    noise = Perturbation("uniform", noise_range=(-1.0, 2.0), seed=7).fill(images)
    assert noise.min() >= -1.0 and noise.max() < 2.0 and noise.std() > 0.5
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    for b in range(3):  # the reference loops over images and steps explicitly
        sums = maps[b, 0].reshape(2, 4, 2, 4).sum(dim=(1, 3)).flatten()
        order = sorted(range(4), key=lambda r: -float(sums[r]))
        x = images[b].clone()
        expected = [float(weight[targets[b]] @ x.flatten() + bias[targets[b]])]
        for region in order:
            i, j = divmod(region, 2)
            x[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = noise[b, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
            expected.append(float(weight[targets[b]] @ x.flatten() + bias[targets[b]]))
        torch.testing.assert_close(curve[b], torch.tensor(expected), atol=1e-5, rtol=0)


def test_uniform_noise_depends_only_on_image_and_seed():
    model = tiny_cnn(1)
    images, targets, maps = batch(5, 1)
    full = morf_curve(model, images, targets, maps, patch_size=4, perturbation={"seed": 3})
    alone = morf_curve(model, images[2:3], targets[2:3], maps[2:3], patch_size=4, perturbation={"seed": 3})
    torch.testing.assert_close(full[2:3], alone)
    other_seed = morf_curve(model, images, targets, maps, patch_size=4, perturbation={"seed": 4})
    assert not torch.allclose(full, other_seed)
    # default noise range: each image's own [min, max]
    noise = Perturbation("uniform", seed=3).fill(images)
    assert bool((noise.amin(dim=(1, 2, 3)) >= images.amin(dim=(1, 2, 3))).all())
    assert bool((noise.amax(dim=(1, 2, 3)) <= images.amax(dim=(1, 2, 3))).all())


def test_blur_replacement_matches_scipy_gaussian_filter():
    images, _, _ = batch(2, 3, 16)
    ours = gaussian_blur(images.double(), 1.5)
    ref = scipy.ndimage.gaussian_filter(
        images.double().numpy(), sigma=(0, 0, 1.5, 1.5), mode="nearest", truncate=3.0
    )
    torch.testing.assert_close(ours, torch.from_numpy(ref), atol=1e-10, rtol=0)
    # replacement="blur" swaps in exactly that image, region by region
    model = linear_model(3, 16, num_classes=2)
    _, targets, maps = batch(2, 3, 16, num_classes=2)
    curve = morf_curve(
        model, images, targets, maps, patch_size=16, perturbation=Perturbation("blur", blur_sigma=1.5), output="logit"
    )
    with torch.no_grad():
        expected = model(gaussian_blur(images, 1.5)).gather(1, targets.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(curve[:, 1], expected, atol=1e-5, rtol=0)


def test_aopc_definition_and_lerf_is_reverse_order():
    curve = torch.tensor([[1.0, 0.5, 0.25, 0.0]])
    assert float(aopc(curve)) == pytest.approx((0 + 0.5 + 0.75 + 1.0) / 4)
    model = tiny_cnn(1)
    images, targets, maps = batch(2, 1)
    # LeRF of a map is MoRF of the negated map (no ties in random maps)
    lerf = lerf_curve(model, images, targets, maps, patch_size=4, perturbation={"replacement": "constant"})
    morf_neg = morf_curve(model, images, targets, -maps, patch_size=4, perturbation={"replacement": "constant"})
    torch.testing.assert_close(lerf, morf_neg)


def test_eval_mode_restored_and_no_gradients():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(256, 3)).train()
    images, targets, maps = batch(2, 1)
    first = morf_curve(model, images, targets, maps, patch_size=4, perturbation={"replacement": "constant"})
    second = morf_curve(model, images, targets, maps, patch_size=4, perturbation={"replacement": "constant"})
    torch.testing.assert_close(first, second)  # dropout was off
    assert model.training and model[1].training
    assert not first.requires_grad and model[2].weight.grad is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(patch_size=5), "must divide"),
        (dict(patch_size=32), "larger than the image"),
        (dict(patch_size=0), "positive int"),
        (dict(perturbation={"replacement": "zeros"}), "replacement must be one of"),
        (dict(patch_size=4, n_steps=17), "exceeds the number of regions"),
        (dict(order="middle"), "order must be"),
        (dict(output="softmax"), "output must be one of"),
        (dict(perturbation={"replacement": "uniform", "noise_range": (1.0, 0.0)}), "noise_range"),
        (dict(perturbation={"replace": "uniform"}), "unknown fields"),
        (dict(perturbation=Perturbation("constant", value=torch.zeros(2, 2))), "cannot be broadcast"),
    ],
)
def test_bad_options_raise(kwargs, match):
    model = tiny_cnn(1)
    images, targets, maps = batch(2, 1)
    with pytest.raises(ValueError, match=match):
        region_perturbation_curve(model, images, targets, maps, **kwargs)


def test_map_shape_mismatch_raises():
    model = tiny_cnn(1)
    images, targets, maps = batch(2, 1)
    with pytest.raises(ValueError, match="maps must have shape"):
        morf_curve(model, images, targets, maps[:, :, :8])
    with pytest.raises(ValueError, match="maps must have shape"):
        morf_curve(model, images, targets, maps[:1])
    with pytest.raises(ValueError, match="maps must have shape"):
        morf_curve(model, images, targets, maps.expand(2, 2, 16, 16))
