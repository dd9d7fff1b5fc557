"""impactx data modules: one interface, batches ``(image [B,C,H,W], label [B], index [B])``.

>>> from impactx.data import create_datamodule
>>> dm = create_datamodule("digits", batch_size=32)
>>> dm.num_classes, dm.in_chans, dm.image_size
(10, 1, 32)
"""

from __future__ import annotations

from typing import Any

from impactx.data.base import SPLITS, DatasetNotFoundError, ImageDataModule, carve_validation
from impactx.data.canvas import CanvasDigitsDataModule
from impactx.data.digits import DigitsDataModule
from impactx.data.imagefolder import ImageFolderDataModule
from impactx.data.indexed import IndexedDataset
from impactx.data.torchvision_sets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    MNISTDataModule,
    STL10DataModule,
    TorchvisionDataModule,
)

__all__ = [
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "CanvasDigitsDataModule",
    "DATAMODULES",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "IndexedDataset",
    "MNISTDataModule",
    "SPLITS",
    "STL10DataModule",
    "TorchvisionDataModule",
    "carve_validation",
    "create_datamodule",
]

DATAMODULES: dict[str, type[ImageDataModule]] = {
    "digits": DigitsDataModule,
    "digits_canvas": CanvasDigitsDataModule,
    "mnist": MNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "stl10": STL10DataModule,
    "imagefolder": ImageFolderDataModule,
}


def create_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """Build the data module registered as ``name`` (case-insensitive) with ``kwargs``."""
    key = str(name).lower()
    if key not in DATAMODULES:
        raise ValueError(f"unknown data module {name!r}; known: {', '.join(sorted(DATAMODULES))}")
    return DATAMODULES[key](**kwargs)
