"""impactx.priors: each penalty against a closed form or a numpy reference; option checks; gradients flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impactx.metrics import TotalVariation
from impactx.metrics.functional import standardise_per_image
from impactx.priors import AttributionPrior, outside_region, region_mask, sparsity, total_variation


def _tf_total_variation(maps: np.ndarray) -> np.ndarray:
    """tf.image.total_variation's definition on [B, C, H, W]: sum of absolute neighbour differences."""
    return np.abs(np.diff(maps, axis=2)).sum(axis=(1, 2, 3)) + np.abs(np.diff(maps, axis=3)).sum(axis=(1, 2, 3))


def _tf_standardise(maps: np.ndarray) -> np.ndarray:
    """tf.image.per_image_standardization: (x - mean) / max(std, 1/sqrt(N)) per image."""
    flat = maps.reshape(maps.shape[0], -1)
    std = np.maximum(flat.std(axis=1, keepdims=True), 1.0 / np.sqrt(flat.shape[1]))
    return ((flat - flat.mean(axis=1, keepdims=True)) / std).reshape(maps.shape)


def _gini(v: np.ndarray) -> float:
    a = np.sort(np.abs(v).ravel() + 1e-7)
    d = a.size
    i = np.arange(1, d + 1)
    return float(((2 * i - d - 1) * a).sum() / (d * a.sum()))


def test_total_variation_matches_the_tensorflow_definition() -> None:
    maps = torch.randn(3, 2, 5, 7, dtype=torch.float64)
    raw = _tf_total_variation(maps.numpy())
    assert float(total_variation(maps, standardise=False)) == pytest.approx(raw.mean())
    standardised = _tf_total_variation(_tf_standardise(maps.numpy()))
    assert float(total_variation(maps, standardise=True)) == pytest.approx(standardised.mean())
    np.testing.assert_allclose(standardise_per_image(maps).numpy(), _tf_standardise(maps.numpy()), rtol=1e-12)


def test_total_variation_closed_form_and_scale_invariance() -> None:
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 2:] = 2.0  # one vertical edge of height 4 and step 2
    assert float(total_variation(edge, standardise=False)) == pytest.approx(8.0)
    maps = torch.randn(2, 1, 6, 6)
    assert float(total_variation(5 * maps + 3, standardise=True)) == pytest.approx(
        float(total_variation(maps, standardise=True)), rel=1e-5)
    assert float(total_variation(torch.full((1, 1, 4, 4), 7.0), standardise=True)) == 0.0  # constant: finite, 0


def test_total_variation_metric_is_the_mean_over_images() -> None:
    maps = torch.randn(5, 1, 6, 6)
    metric = TotalVariation(standardise=False)
    metric.update(maps[:2])
    metric.update(maps[2:])
    assert float(metric.compute()) == pytest.approx(_tf_total_variation(maps.numpy()).mean(), rel=1e-5)


def test_sparsity_is_one_minus_gini_of_the_mean_absolute_attribution() -> None:
    maps = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    expected = 1.0 - _gini(np.abs(maps.numpy()).mean(axis=0))
    assert float(sparsity(maps)) == pytest.approx(expected, rel=1e-9)
    per_image = 1.0 - np.mean([_gini(m) for m in maps.numpy()])
    assert float(sparsity(maps, over="image")) == pytest.approx(per_image, rel=1e-9)
    one_hot = torch.zeros(2, 1, 4, 4)
    one_hot[:, 0, 1, 2] = 1.0
    assert float(sparsity(one_hot)) == pytest.approx(1.0 / 16, abs=1e-5)  # Gini (d-1)/d
    assert float(sparsity(torch.ones(2, 1, 4, 4))) == pytest.approx(1.0, abs=1e-6)


def test_outside_region_fraction_by_hand() -> None:
    target = torch.zeros(2, 1, 4, 4)
    target[..., :2] = 1.0  # left half marked
    phi = torch.zeros(2, 3, 4, 4)
    phi[0, :, :, 0] = 1.0  # all inside
    phi[1, 0, :, 0] = 1.0
    phi[1, 1, :, 3] = -3.0  # |.| 3x as much outside: fraction 0.75
    assert float(outside_region(phi, target)) == pytest.approx((0.0 + 0.75) / 2)
    soft = outside_region(phi[1:], torch.linspace(0, 1, 4).expand(1, 1, 4, 4), threshold=None)
    # soft region 0 at column 0, 1 at column 3: outside weight (1 - r) is 1 at column 0, 0 at column 3
    assert float(soft) == pytest.approx(1.0 / 4)


def test_region_mask_ignores_the_map_scale_and_an_empty_map_marks_nothing() -> None:
    target = torch.tensor([0.0, 0.2, 0.6, 1.0]).view(1, 1, 1, 4)
    assert region_mask(target * 50).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    assert region_mask(torch.zeros(1, 1, 2, 2)).sum() == 0


def test_penalties_are_differentiable() -> None:
    phi = torch.randn(3, 1, 6, 6, requires_grad=True)
    target = torch.rand(3, 1, 6, 6)
    for value in (total_variation(phi), sparsity(phi), outside_region(phi, target)):
        (grad,) = torch.autograd.grad(value, phi)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_prior_spec_checks_names_and_options() -> None:
    assert AttributionPrior("total_variation", {"standardise": False})(torch.ones(1, 1, 3, 3)) == 0
    with pytest.raises(ValueError, match="unknown prior 'smooth'.*total_variation"):
        AttributionPrior("smooth")
    with pytest.raises(ValueError, match=r"unknown options \['standardize'\]"):
        AttributionPrior("total_variation", {"standardize": True})
    with pytest.raises(ValueError, match="over must be 'batch' or 'image'"):
        AttributionPrior("sparsity", {"over": "pixel"})
    needs = AttributionPrior("outside_region")
    assert needs.needs_target_maps
    with pytest.raises(ValueError, match="needs target maps"):
        needs(torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        total_variation(torch.ones(3, 3))


def test_mask_store_joins_user_masks_to_training_items(tmp_path) -> None:
    from impactx.data import DigitsDataModule
    from impactx.maps import MapStoreError, mask_store

    data = DigitsDataModule(batch_size=8)
    n = len(data.map_dataset())
    masks = torch.zeros(n, 1, data.image_size, data.image_size)
    masks[torch.arange(n) % 2 == 0, :, :, : data.image_size // 2] = 1.0  # even items: left half
    folder = mask_store(data, masks, tmp_path)
    joined = DigitsDataModule(batch_size=8, maps=str(folder))
    joined.setup("fit")
    image, label, index, target = joined.dataset("train", augment=False)[3]
    torch.testing.assert_close(target, masks[index])
    with pytest.raises(MapStoreError, match=rf"\[{n}, 1, "):
        mask_store(data, masks[:5], tmp_path / "bad")
