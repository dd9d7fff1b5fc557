"""IndexedDataset and the validation carve: the index is the position in the full split."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from impactx.data import IndexedDataset, carve_validation


def _toy(n: int = 20) -> TensorDataset:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    labels = torch.arange(n) % 4
    return TensorDataset(images, labels)


def test_items_carry_label_as_int_and_position():
    ds = IndexedDataset(_toy())
    image, label, index = ds[7]
    assert image.shape == (1, 2, 2) and image[0, 0, 0] == 7
    assert label == 3 and type(label) is int
    assert index == 7 and type(index) is int
    assert len(ds) == 20
    assert ds[-1][2] == 19
    with pytest.raises(IndexError):
        ds[20]


def test_transform_applies_to_image_only():
    ds = IndexedDataset(_toy(), transform=lambda x: x * 10)
    image, label, index = ds[3]
    assert image[0, 0, 0] == 30 and label == 3 and index == 3


def test_numpy_labels_become_int():
    class Pairs:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return np.zeros(2), np.int64(i + 1)

    assert [IndexedDataset(Pairs())[i][1] for i in range(3)] == [1, 2, 3]
    assert all(type(IndexedDataset(Pairs())[i][1]) is int for i in range(3))


def test_subset_keeps_index_into_the_full_split():
    indexed = IndexedDataset(_toy())
    positions = [15, 2, 9]
    sub = Subset(indexed, positions)
    for k, pos in enumerate(positions):
        image, _, index = sub[k]
        assert index == pos and image[0, 0, 0] == pos


def test_shuffled_loader_pairs_images_with_their_index():
    sub = Subset(IndexedDataset(_toy(50)), list(range(5, 45)))
    loader = DataLoader(sub, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(3))
    seen = []
    for images, labels, index in loader:
        assert index.dtype == torch.int64 and labels.dtype == torch.int64
        torch.testing.assert_close(images[:, 0, 0, 0], index.float())
        torch.testing.assert_close(labels, index % 4)
        seen += index.tolist()
    assert seen != sorted(seen)  # it was shuffled
    assert sorted(seen) == list(range(5, 45))


def test_carve_is_stratified_disjoint_and_seeded():
    targets = np.repeat(np.arange(5), 40)  # 200 items, 5 classes
    train, val = carve_validation(targets, 0.1, seed=0)
    assert len(val) == 20 and len(train) == 180
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(200))
    assert train == sorted(train) and val == sorted(val)
    assert np.bincount(targets[val]).tolist() == [4] * 5  # stratified
    assert carve_validation(targets, 0.1, seed=0) == (train, val)
    assert carve_validation(targets, 0.1, seed=1)[1] != val


def test_carve_zero_fraction_and_tiny_fallback():
    assert carve_validation([0, 1, 0, 1], 0.0, seed=0) == ([0, 1, 2, 3], [])
    # one item per class cannot be stratified: falls back to a plain seeded split
    train, val = carve_validation([0, 1, 2, 3, 4], 0.2, seed=0)
    assert len(val) == 1 and sorted(train + val) == list(range(5))
    with pytest.raises(ValueError, match="no training items"):
        carve_validation([0, 1], 0.99, seed=0)
