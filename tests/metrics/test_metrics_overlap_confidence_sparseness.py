"""Overlap AUC, Average Drop / Increase in Confidence, Sparseness.

Overlap AUC and the Grad-CAM++ confidence metrics have no Quantus counterpart with the same definition
(Quantus' ``AUC`` localisation metric is a ROC AUC, not the weighted-IG paper's top-p overlap), so they are
checked against hand-computed cases. Sparseness is compared with Quantus 0.6 ``Sparseness`` configured with
``abs=True, normalise=False`` (its Gini index adds 1e-7 to every entry, as ours does by default).
"""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
from metrics_helpers import batch, np32, tiny_cnn
from torch import nn

from impactx.metrics.functional import (
    confidence_change,
    explanation_mask,
    overlap_auc,
    overlap_curve,
    sparseness,
)

# ---------------------------------------------------------------- overlap


def test_overlap_hand_computed():
    # 1x2x4 image, object S = {0, 1, 2, 3} (top row), |S| = 4; map ranks pixels 0, 4, 1, 5, 2, 6, 3, 7
    masks = torch.tensor([[[1, 1, 1, 1], [0, 0, 0, 0]]]).view(1, 1, 2, 4)
    ranking = [0, 4, 1, 5, 2, 6, 3, 7]
    maps = torch.zeros(8)
    maps[ranking] = torch.arange(8, 0, -1, dtype=torch.float32)
    maps = maps.view(1, 1, 2, 4)
    curve = overlap_curve(maps, masks, n_steps=4)
    # p = 1/4: T = {0} -> 1/1; p = 1/2: T = {0, 4} -> 1/2; p = 3/4: {0,4,1} -> 2/3; p = 1: {0,4,1,5} -> 2/4
    torch.testing.assert_close(curve, torch.tensor([[1.0, 0.5, 2 / 3, 0.5]]))
    assert float(overlap_auc(curve)) == pytest.approx((1 + 0.5 + 2 / 3 + 0.5) / 4)
    # channels are summed: the same map split over 3 channels gives the same curve
    torch.testing.assert_close(overlap_curve(maps.expand(1, 3, 2, 4) / 3, masks[:, 0], n_steps=4), curve)


def test_overlap_perfect_worst_and_empty_mask():
    masks = torch.zeros(3, 1, 6, 6)
    masks[:2, :, 1:4, 1:4] = 1  # image 2 has an empty mask
    noise = 0.01 * torch.rand(3, 1, 6, 6)
    best = overlap_curve(masks + noise, masks, n_steps=9)
    worst = overlap_curve(-masks + noise, masks, n_steps=9)
    torch.testing.assert_close(best[:2], torch.ones(2, 9))
    torch.testing.assert_close(worst[:2], torch.zeros(2, 9))  # 9 object pixels < 27 background pixels
    assert bool(torch.isnan(best[2]).all())


def test_overlap_errors():
    with pytest.raises(ValueError, match="masks must have shape"):
        overlap_curve(torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 5))
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        overlap_curve(torch.rand(2, 1, 4, 4), torch.ones(2, 4, 4), n_steps=0)


# ---------------------------------------------------------------- confidence


def test_confidence_hand_computed():
    """Model: logits = [s, 0] with s = sum of the image; map halves the image or keeps it."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]]))
    images = torch.tensor([[1.0, 1, 1, 1], [-1.0, -1, -1, -1], [1.0, 0, 0, 0]]).view(3, 1, 2, 2)
    targets = torch.tensor([0, 0, 1])
    maps = torch.tensor([[2.0, 2, 2, 2], [1.0, 1, 0, 0], [-5.0, -1, -1, -1]]).view(3, 1, 2, 2)
    drop, increase = confidence_change(model, images, targets, maps)
    sig = torch.sigmoid
    # image 0: E = 1 everywhere -> O = Y -> no drop, no increase
    # image 1: E = [1,1,0,0] -> s goes -4 -> -2: class 0 prob rises -> increase, no drop
    # image 2: no positive part -> E = 0 -> s = 0: class 1 prob sigmoid(-1) -> 0.5 rises
    y = torch.stack([sig(torch.tensor(4.0)), sig(torch.tensor(-4.0)), sig(torch.tensor(-1.0))])
    o = torch.stack([sig(torch.tensor(4.0)), sig(torch.tensor(-2.0)), torch.tensor(0.5)])
    torch.testing.assert_close(drop, 100 * (y - o).clamp(min=0) / y)
    torch.testing.assert_close(increase, torch.tensor([0.0, 100.0, 100.0]))
    # a drop: image 0, target 0, E = [1, 1, 0, 0] halves the sum: prob sigmoid(4) -> sigmoid(2)
    d, i = confidence_change(model, images[:1], torch.tensor([0]), maps[1:2])
    expected = 100 * (sig(torch.tensor(4.0)) - sig(torch.tensor(2.0))) / sig(torch.tensor(4.0))
    torch.testing.assert_close(d, expected.view(1))
    assert float(i) == 0.0


def test_explanation_mask_range():
    maps = torch.randn(4, 3, 5, 5)
    e = explanation_mask(maps)
    assert float(e.min()) == 0.0 and torch.allclose(e.flatten(1).amax(1), torch.ones(4))
    assert bool((explanation_mask(-maps.abs()) == 0).all())


# ---------------------------------------------------------------- sparseness


@pytest.mark.parametrize("chans", [1, 3])
def test_sparseness_matches_quantus(chans):
    model = tiny_cnn(chans)
    images, targets, maps = batch(5, chans)
    maps[0] = 0.0  # all-zero map
    maps[1] = torch.where(maps[1] > 1.5, maps[1], torch.zeros_like(maps[1]))  # sparse
    ref = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)(
        model=model,
        x_batch=np32(images),
        y_batch=targets.numpy(),
        a_batch=np32(maps),
        channel_first=True,
        device="cpu",
    )
    torch.testing.assert_close(
        sparseness(maps), torch.tensor(np.asarray(ref), dtype=torch.float32), atol=1e-5, rtol=0
    )


def test_sparseness_closed_form():
    d = 64
    one_hot = torch.zeros(1, 1, 8, 8)
    one_hot[0, 0, 3, 3] = -2.0
    assert float(sparseness(one_hot, eps=0.0)) == pytest.approx((d - 1) / d)
    assert float(sparseness(torch.full((1, 1, 8, 8), 0.3), eps=0.0)) == pytest.approx(0.0, abs=1e-6)
    # two equal spikes, against the formula written as an explicit loop
    two = torch.zeros(1, 64)
    two[0, [5, 9]] = 1.0
    a = np.sort(np.abs(two.numpy()[0]))
    g = sum((2 * (i + 1) - d - 1) * a[i] for i in range(d)) / (d * a.sum())
    assert float(sparseness(two, eps=0.0)) == pytest.approx(g)
