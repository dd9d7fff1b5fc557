"""Deletion / insertion curves and AUC.

Reference: Quantus 0.6 ``PixelFlipping`` with ``perturb_baseline=0.0`` (the paper's ``x o M``) and
``features_in_step = P / N``: it returns the probability after each of the ``N`` steps, i.e. our columns
1..N. A ``[B,1,H,W]`` map ranks pixels; Quantus broadcasts it over channels, so its ties come in groups of
``C`` that a step of ``C * H * W / N`` entries never splits, and the two agree. Closed form: for a linear
model and the exact contributions ``w_y * x`` as the map, deleting the top k leaves logit
``b + total - cumsum_k`` and inserting them gives ``b + cumsum_k``.
"""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
from metrics_helpers import batch, linear_model, np32, tiny_cnn

from impactx.metrics.functional import (
    Perturbation,
    deletion_curve,
    feature_counts,
    insertion_curve,
    riemann_auc,
)


# Quantus needs features_in_step to divide H * W; 3x12x12 with 9 steps flips 48 entries (16 pixels) a step.
@pytest.mark.parametrize("in_chans,size,map_chans,n", [(1, 16, 1, 16), (3, 12, 3, 9), (3, 12, 1, 9)])
def test_matches_quantus_pixel_flipping(in_chans, size, map_chans, n):
    model = tiny_cnn(in_chans, size)
    images, targets, maps = batch(4, in_chans, size)
    maps = maps[:, :map_chans]
    ours = deletion_curve(model, images, targets, maps, n_steps=n)
    step = in_chans * size * size // n
    metric = quantus.PixelFlipping(
        features_in_step=step, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
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
    torch.testing.assert_close(ours[:, 1:], torch.from_numpy(ref).float(), atol=1e-5, rtol=0)
    with torch.no_grad():
        full = model(images).softmax(1).gather(1, targets.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(ours[:, 0], full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_steps", [8, 64, 10])
def test_linear_model_closed_form(n_steps):
    model = linear_model(1, 8, num_classes=2)
    images, targets, _ = batch(3, 1, 8, num_classes=2)
    w, b = model[1].weight.detach(), model[1].bias.detach()
    contributions = images.flatten(1) * w[targets]
    maps = contributions.view(3, 1, 8, 8)
    deletion = deletion_curve(model, images, targets, maps, n_steps=n_steps, output="logit")
    insertion = insertion_curve(model, images, targets, maps, n_steps=n_steps, output="logit")
    ranked = torch.sort(contributions, dim=1, descending=True).values
    cumsum = torch.cat([torch.zeros(3, 1), ranked.cumsum(dim=1)], dim=1)  # cumsum[:, k] = top-k total
    k = [int(np.floor(i * 64 / n_steps)) for i in range(n_steps + 1)]
    torch.testing.assert_close(deletion, b[targets, None] + cumsum[:, -1:] - cumsum[:, k], atol=1e-5, rtol=0)
    torch.testing.assert_close(insertion, b[targets, None] + cumsum[:, k], atol=1e-5, rtol=0)
    # probabilities: the fully deleted image leaves only the bias
    prob = deletion_curve(model, images, targets, maps, n_steps=n_steps)
    torch.testing.assert_close(prob[:, -1], torch.softmax(b, 0)[targets], atol=1e-6, rtol=0)


def test_riemann_auc_and_counts():
    curve = torch.tensor([[1.0, 0.8, 0.4, 0.0]])
    assert float(riemann_auc(curve)) == pytest.approx((0.8 + 0.4 + 0.0) / 3)
    assert feature_counts(10, 4, torch.device("cpu")).tolist() == [0, 2, 5, 7, 10]
    with pytest.raises(ValueError, match="N\\+1 >= 2"):
        riemann_auc(torch.ones(3, 1))


def test_insertion_starts_blank_and_ends_at_image():
    model = tiny_cnn(3)
    images, targets, maps = batch(2, 3)
    curve = insertion_curve(model, images, targets, maps, n_steps=8, perturbation=Perturbation("blur", blur_sigma=2.0))
    from impactx.metrics.functional import gaussian_blur

    with torch.no_grad():
        blurred = model(gaussian_blur(images, 2.0)).softmax(1).gather(1, targets.view(-1, 1)).squeeze(1)
        full = model(images).softmax(1).gather(1, targets.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(curve[:, 0], blurred, atol=1e-6, rtol=0)
    torch.testing.assert_close(curve[:, -1], full, atol=1e-6, rtol=0)


def test_chunking_does_not_change_the_curve():
    model = tiny_cnn(1)
    images, targets, maps = batch(3, 1)
    whole = deletion_curve(model, images, targets, maps, n_steps=16, internal_batch_size=None)
    chunked = deletion_curve(model, images, targets, maps, n_steps=16, internal_batch_size=5)
    torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=0)


def test_errors():
    model = tiny_cnn(1)
    images, targets, maps = batch(2, 1)
    with pytest.raises(ValueError, match="exceeds the number of map entries"):
        deletion_curve(model, images, targets, maps, n_steps=257)
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        insertion_curve(model, images, targets, maps, n_steps=0)
    with pytest.raises(ValueError, match="replacement must be one of"):
        deletion_curve(model, images, targets, maps, perturbation={"replacement": "black"})
    with pytest.raises(ValueError, match="maps must have shape"):
        deletion_curve(model, images, targets, maps.transpose(2, 3)[:, :, :8])
    with pytest.raises(ValueError, match="target has 3 entries"):
        deletion_curve(model, images, torch.tensor([0, 1, 2]), maps)
    with pytest.raises(ValueError, match="model has 3 outputs"):
        deletion_curve(model, images, torch.tensor([0, 3]), maps)
