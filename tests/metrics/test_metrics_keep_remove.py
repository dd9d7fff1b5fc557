"""KPM, KNM, KAM, RPM, RNM, RAM.

No library implements the DeepPrior-EG paper's variant exactly (shap's ``remove_mask`` starts from the full
input, the paper's RPM/RNM from the eligible features only; shap uses log-spaced integer counts and the
training mean), so the reference is a plain per-image loop written from the definitions in
``impactx.metrics.functional.keep_remove`` on a linear model (logit = b + sum of kept ``w_i x_i``), with the
AUC from ``sklearn.metrics.auc`` over fractions as in shap's benchmark plots.
"""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics
import torch
from metrics_helpers import batch, linear_model, tiny_cnn

from impactx.metrics.functional import VARIANTS, keep_remove_curve, trapezoid_auc


def reference_curve(weight, bias, image, target, attribution, variant, n_steps):
    x, a = image.flatten().double().numpy(), attribution.flatten().double().numpy()
    w, b = weight[target].double().numpy(), float(bias[target])
    sign = variant[1]
    score = {"p": a, "n": -a, "a": np.abs(a)}[sign]
    eligible = {"p": a > 0, "n": a < 0, "a": np.ones_like(a, dtype=bool)}[sign]
    order = [i for i in np.argsort(-score, kind="stable") if eligible[i]]
    n_features = a.size
    curve = []
    for j in range(n_steps + 1):
        k = min(j * n_features // n_steps, len(order))
        present = order[:k] if variant[0] == "k" else order[k:]
        kept = np.zeros(n_features, dtype=bool)
        kept[present] = True
        curve.append(b + float(w @ np.where(kept, x, 0.0)))
    return np.array(curve)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n_steps", [10, 7])
def test_matches_reference_from_definition(variant, n_steps):
    model = linear_model(1, 6, num_classes=3)
    images, targets, _ = batch(4, 1, 6, num_classes=3)
    w, b = model[1].weight.detach(), model[1].bias.detach()
    maps = (images.flatten(1) * w[targets]).view_as(images) + 0.05 * torch.randn(4, 1, 6, 6)
    curve = keep_remove_curve(model, images, targets, maps, variant=variant, n_steps=n_steps)
    for i in range(4):
        expected = reference_curve(w, b, images[i], int(targets[i]), maps[i], variant, n_steps)
        torch.testing.assert_close(curve[i].double(), torch.from_numpy(expected), atol=1e-5, rtol=0)
        auc = sklearn.metrics.auc(np.linspace(0, 1, n_steps + 1), expected)
        assert float(trapezoid_auc(curve[i])) == pytest.approx(auc, abs=1e-5)


def test_closed_form_end_points_with_exact_contributions():
    """With the map = exact contributions: KPM ends at b + sum of positives, KNM at b + sum of negatives,
    RPM/RNM/KAM... start/end at the eligible-only and fully masked logits."""
    model = linear_model(1, 6, num_classes=2)
    images, targets, _ = batch(3, 1, 6, num_classes=2)
    images = images - 0.5  # mixed-sign contributions
    w, b = model[1].weight.detach(), model[1].bias.detach()
    contrib = images.flatten(1) * w[targets]
    maps = contrib.view_as(images)
    pos, neg, bias = contrib.clamp(min=0).sum(1), contrib.clamp(max=0).sum(1), b[targets]
    c = {v: keep_remove_curve(model, images, targets, maps, variant=v, n_steps=5) for v in VARIANTS}
    for v in ("kpm", "knm", "kam"):
        torch.testing.assert_close(c[v][:, 0], bias)  # fully masked
    torch.testing.assert_close(c["kpm"][:, -1], bias + pos, atol=1e-5, rtol=0)
    torch.testing.assert_close(c["knm"][:, -1], bias + neg, atol=1e-5, rtol=0)
    torch.testing.assert_close(c["kam"][:, -1], bias + pos + neg, atol=1e-5, rtol=0)
    torch.testing.assert_close(c["rpm"][:, 0], bias + pos, atol=1e-5, rtol=0)
    torch.testing.assert_close(c["rnm"][:, 0], bias + neg, atol=1e-5, rtol=0)
    torch.testing.assert_close(c["ram"][:, 0], bias + pos + neg, atol=1e-5, rtol=0)
    for v in ("rpm", "rnm", "ram"):
        torch.testing.assert_close(c[v][:, -1], bias, atol=1e-6, rtol=0)
    # descending order: the first fifth of the features carries at least a fifth of the positive mass
    assert bool((c["kpm"][:, 1] >= bias + pos / 5 - 1e-6).all())


def test_masking_value_tensor_and_channels():
    model = tiny_cnn(3, 8)
    images, targets, maps = batch(2, 3, 8)
    mean = images.mean(dim=(0, 2, 3)).view(3, 1, 1)
    curve = keep_remove_curve(model, images, targets, maps, variant="kam", n_steps=4, perturbation={"value": mean})
    with torch.no_grad():
        masked = model(mean.expand(2, 3, 8, 8)).gather(1, targets.view(-1, 1)).squeeze(1)
        full = model(images).gather(1, targets.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(curve[:, 0], masked, atol=1e-5, rtol=0)
    torch.testing.assert_close(curve[:, -1], full, atol=1e-5, rtol=0)


def test_errors():
    model = tiny_cnn(1, 8)
    images, targets, maps = batch(2, 1, 8)
    with pytest.raises(ValueError, match="variant must be one of"):
        keep_remove_curve(model, images, targets, maps, variant="kxm")
    with pytest.raises(ValueError, match="exceeds the number of map entries"):
        keep_remove_curve(model, images, targets, maps, n_steps=65)
    with pytest.raises(ValueError, match="maps must have shape"):
        keep_remove_curve(model, images, targets, maps[..., :4])
