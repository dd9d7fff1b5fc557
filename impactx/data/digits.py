"""``DigitsDataModule``: scikit-learn's bundled handwritten digits, the embedded default data set.

1,797 real 8x8 grey images (values 0..16, ten classes), scaled to [0, 1], resized to 32x32
(bilinear, ``align_corners=False``, no antialias) and normalised; everything lives in memory as
tensors, so nothing is downloaded or read from ``data_dir``.

Splits under ``seed``: a stratified test split of ``test_fraction`` of all images, then a
stratified validation carve of ``val_fraction`` of the rest. The full train split is the non-test
images in their original ``load_digits`` order (item ``index`` = position in that list); the test
split likewise.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from impactx.data.base import ImageDataModule, check_fraction

__all__ = ["DigitsDataModule", "load_digits_tensors"]

DIGITS_SIZE = 32
# Mean and std of all 1,797 images after scaling to [0, 1] and resizing to 32x32 (computed once
# with ``load_digits_tensors()``: mean 0.30526, std 0.32363; checked in tests/data/test_digits.py).
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3236,)


@lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as ``(images [1797,1,32,32] float32 in [0,1], labels [1797] int64)``, unnormalised."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # [N,1,8,8]
    images = F.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return images.contiguous(), labels


class DigitsDataModule(ImageDataModule):
    """Handwritten digits (sklearn), 1x32x32, ten classes, held in memory.

    Args:
        test_fraction: stratified share of all 1,797 images held out as test, in ``(0, 1)``.
        augment: random affine (rotation <= 10 degrees, shift <= 2 px, scale 0.9..1.1) on train items.
        data_dir, download: accepted for a uniform interface and ignored (the data are embedded).
        Other args as in :class:`ImageDataModule`.

    Items: ``(image [1,32,32] float32 normalised, label int, index int)``.
    """

    name = "digits"
    num_classes = 10
    in_chans = 1
    image_size = DIGITS_SIZE
    mean = DIGITS_MEAN
    std = DIGITS_STD
    class_names = [str(i) for i in range(10)]

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = False,
        download: bool = False,
        test_fraction: float = 0.2,
        predict_split: str = "test",
        maps: str | None = None,
        map_normalisation: str = "max_abs",
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            seed=seed,
            augment=augment,
            download=download,
            predict_split=predict_split,
            maps=maps,
            map_normalisation=map_normalisation,
        )
        self.test_fraction = check_fraction("test_fraction", test_fraction, allow_zero=False)

    def preprocessing(self) -> str:
        """Which digits form the train split (``test_fraction``, ``seed``) and how they were made 32x32."""
        return (
            f"{super().preprocessing()}; load_digits / 16, bilinear 8->{DIGITS_SIZE} (align_corners=False), "
            f"normalised; train split: test_fraction={self.test_fraction}, seed={self.seed}"
        )

    def test_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted positions in ``load_digits`` order of the (full train, test) splits, fixed by ``seed``."""
        from sklearn.model_selection import train_test_split

        _, labels = load_digits_tensors()
        positions = np.arange(len(labels))
        train_pos, test_pos = train_test_split(
            positions, test_size=self.test_fraction, stratify=labels.numpy(), random_state=self.seed
        )
        return np.sort(train_pos), np.sort(test_pos)

    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        images, labels = load_digits_tensors()
        train_pos, test_pos = self.test_positions()
        pos = torch.as_tensor(train_pos if split == "train" else test_pos)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        split_images = (images[pos] - mean) / std
        split_labels = labels[pos]
        return TensorDataset(split_images, split_labels), split_labels.numpy()

    def _transform(self, augment: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if not augment:
            return None  # images are stored normalised already
        from torchvision import transforms

        return transforms.RandomAffine(degrees=10, translate=(2 / 32, 2 / 32), scale=(0.9, 1.1), fill=self._blank_value()[0])

    def _geometric_augmentation(self):
        """The same random affine, on an image and its map together (the map filled with 0)."""
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        fill = {tv_tensors.Image: self._blank_value()[0], tv_tensors.Mask: 0.0}
        return v2.RandomAffine(degrees=10, translate=(2 / 32, 2 / 32), scale=(0.9, 1.1), fill=fill)
