"""DigitsDataModule: the embedded default data set (sklearn digits, 1x32x32)."""

import numpy as np
import pytest
import torch

from impactx.data import DigitsDataModule
from impactx.data.digits import load_digits_tensors


def _indices(dm: DigitsDataModule, split: str) -> list[int]:
    return (
        [int(i) for i in dm.dataset(split).indices]
        if split != "test"
        else list(range(len(dm.dataset("test"))))
    )


def _labels(dm: DigitsDataModule, split: str) -> np.ndarray:
    if split == "test":
        return dm.full_split("test")[1]
    return dm.full_split("train")[1][_indices(dm, split)]


@pytest.fixture(scope="module")
def dm() -> DigitsDataModule:
    module = DigitsDataModule(batch_size=64, seed=0)
    module.setup()
    return module


def test_sizes_and_shapes(dm):
    sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == 360 and sizes["val"] == 144 and sizes["train"] == 1293
    image, label, index = dm.dataset("val")[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert type(label) is int and type(index) is int
    assert (dm.num_classes, dm.in_chans, dm.image_size, dm.name) == (10, 1, 32, "digits")
    assert dm.class_names == [str(i) for i in range(10)]


def test_every_class_in_every_split(dm):
    for split in ("train", "val", "test"):
        counts = np.bincount(_labels(dm, split), minlength=10)
        assert (counts > 0).all(), (split, counts)
    # stratified: class shares of the test split follow those of all images
    all_counts = np.bincount(load_digits_tensors()[1].numpy())
    test_counts = np.bincount(_labels(dm, "test"), minlength=10)
    assert np.abs(test_counts - 0.2 * all_counts).max() <= 1


def test_train_and_val_never_share_an_index(dm):
    train, val = set(_indices(dm, "train")), set(_indices(dm, "val"))
    assert train.isdisjoint(val)
    assert train | val == set(range(len(dm.full_split("train")[0])))


def test_deterministic_under_seed_and_different_under_another():
    a, b, c = (DigitsDataModule(seed=s) for s in (0, 0, 1))
    assert a.split_positions() == b.split_positions()
    np.testing.assert_array_equal(a.test_positions()[1], b.test_positions()[1])
    assert not np.array_equal(a.test_positions()[1], c.test_positions()[1])
    assert a.split_positions()[1] != c.split_positions()[1]


def test_item_joins_to_the_source_image(dm):
    images, labels = load_digits_tensors()
    train_pos, test_pos = dm.test_positions()
    mean, std = dm.mean[0], dm.std[0]
    for split, source in (("val", train_pos), ("train", train_pos), ("test", test_pos)):
        image, label, index = dm.dataset(split)[5]
        original = source[index]  # position in load_digits order
        torch.testing.assert_close(image * std + mean, images[original], atol=1e-6, rtol=0)
        assert label == labels[original]


def test_shuffled_train_loader_keeps_image_index_pairs(dm):
    full_images = dm.full_split("train")[0].tensors[0]
    images, labels, index = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 32, 32) and labels.dtype == index.dtype == torch.int64
    torch.testing.assert_close(images, full_images[index])
    assert index.tolist() != sorted(index.tolist())


def test_loaders_cover_each_split_once(dm):
    for split, loader in (
        ("val", dm.val_dataloader()),
        ("test", dm.test_dataloader()),
        ("test", dm.predict_dataloader()),
    ):
        index = torch.cat([batch[2] for batch in loader])
        assert index.tolist() == _indices(dm, split)  # unshuffled, in index order
    n_train = sum(len(b[2]) for b in dm.train_dataloader())
    assert n_train == len(dm.dataset("train"))  # drop_last=False


def test_normalisation_constants_match_the_data():
    images, _ = load_digits_tensors()
    assert images.shape == (1797, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert abs(images.mean().item() - DigitsDataModule.mean[0]) < 1e-4
    assert abs(images.std().item() - DigitsDataModule.std[0]) < 1e-4


def test_augment_changes_train_items_only():
    plain, aug = DigitsDataModule(seed=0), DigitsDataModule(seed=0, augment=True)
    torch.manual_seed(0)
    differs = [not torch.equal(plain.dataset("train")[i][0], aug.dataset("train")[i][0]) for i in range(10)]
    assert any(differs)
    for i in range(5):
        torch.testing.assert_close(plain.dataset("val")[i][0], aug.dataset("val")[i][0])
    image = aug.dataset("train")[0][0]
    assert image.shape == (1, 32, 32) and torch.isfinite(image).all()
    # blank border stays blank (fill value = normalised 0)
    background = -DigitsDataModule.mean[0] / DigitsDataModule.std[0]
    assert torch.isclose(image[0, 0, 0], torch.tensor(background), atol=1e-4)


def test_val_fraction_zero_gives_an_empty_val_split():
    dm = DigitsDataModule(val_fraction=0.0)
    assert len(dm.dataset("val")) == 0 and len(dm.dataset("train")) == 1797 - 360


@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.1, "a"])
def test_bad_test_fraction(test_fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        DigitsDataModule(test_fraction=test_fraction)
