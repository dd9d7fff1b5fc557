"""The digits-on-a-canvas data module: masks that cover the pasted digit, fixed canvases, stated normalisation."""

from __future__ import annotations

import pytest
import torch

from impactx.data import CanvasDigitsDataModule, DigitsDataModule


def test_normalisation_constants_are_the_data_statistics() -> None:
    dm = CanvasDigitsDataModule()
    train, test = dm._canvas_split("train")[0], dm._canvas_split("test")[0]
    pixels = torch.cat([train, test])
    assert float(pixels.mean()) == pytest.approx(dm.mean[0], abs=5e-4)
    assert float(pixels.std()) == pytest.approx(dm.std[0], abs=5e-4)


def test_masks_cover_the_digit_and_nothing_else() -> None:
    """Where the mask is off, the image is texture (<= texture); the brightest ink lies inside the mask."""
    dm = CanvasDigitsDataModule(texture=0.4)
    canvas, labels, ink, box = dm._canvas_split("test")
    assert (canvas[~box] <= 0.4 + 1e-6).all()
    inside = torch.where(ink, canvas, torch.zeros_like(canvas)).flatten(1).amax(dim=1)
    assert (inside > 0.6).all() and float(inside.mean()) > 0.9  # the strokes reach 1 before downscaling
    assert (ink <= box).all() and 0.02 < ink.float().mean() < box.float().mean() == pytest.approx(0.25)
    # The same labels, in the same order, as the plain digits' test split.
    digits = DigitsDataModule()
    assert torch.equal(labels, torch.tensor([int(digits.dataset("test")[i][1]) for i in range(len(labels))]))


def test_items_and_masks_by_index_are_fixed() -> None:
    first, again = CanvasDigitsDataModule(), CanvasDigitsDataModule()
    image, label, index = first.dataset("val")[5]
    assert torch.equal(image, again.dataset("val")[5][0])
    mask = first.masks("val", torch.tensor([index]))
    assert mask.shape == (1, 1, 32, 32) and mask.dtype == torch.bool and mask.any()
    assert torch.equal(mask, first.masks("train", torch.tensor([index])))  # val indexes the full train split
    assert not torch.equal(first.dataset("test")[0][0], CanvasDigitsDataModule(seed=1).dataset("test")[0][0])


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="augmentation"):
        CanvasDigitsDataModule(augment=True)
    with pytest.raises(ValueError, match="mask"):
        CanvasDigitsDataModule(mask="outline")
    with pytest.raises(ValueError, match="digit_size"):
        CanvasDigitsDataModule(digit_size=40)
