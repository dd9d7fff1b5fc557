"""A dataset wrapper whose items carry their own position in the full split.

Every batch in impactx is ``(image, label, index)``. The index is the item's position in the
*full underlying split* (e.g. the whole 50,000-image CIFAR-10 training set), so a map stored per
index joins to the right image under any shuffling, sampler, ``Subset`` or DDP shard.

Wrap first, carve afterwards: ``Subset(IndexedDataset(train), val_positions)`` yields items whose
index is still the position in ``train``, never the position inside the subset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


def as_label(label: Any) -> int:
    """Return a class label (python int, numpy integer or 0-d tensor) as a python ``int``."""
    if isinstance(label, torch.Tensor):
        if label.numel() != 1:
            raise ValueError(f"expected a scalar class label, got a tensor of shape {tuple(label.shape)}")
        return int(label.item())
    return int(label)


class IndexedDataset(Dataset):
    """Wrap an ``(image, label)`` dataset so each item is ``(image, label, index)``.

    Args:
        dataset: any map-style dataset whose items are ``(image, label)``.
        transform: optional callable applied to the image (e.g. augmentation + normalisation);
            lets the train and val carves of one split share the underlying data with
            different transforms.

    Item:
        ``image``: whatever ``transform`` returns (in impactx: ``[C,H,W]`` float32, normalised);
        ``label``: python ``int`` (collated to a ``[B]`` long tensor);
        ``index``: python ``int``, the position in ``dataset`` (collated to a ``[B]`` long tensor).
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any] | None = None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        index = int(index)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        image, label = self.dataset[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, as_label(label), index

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, dataset={type(self.dataset).__name__}, transform={self.transform})"
