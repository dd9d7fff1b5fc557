"""Data modules over torchvision's data sets: MNIST, CIFAR-10, CIFAR-100, STL-10.

Each reads the files torchvision expects under ``data_dir`` (downloading them in
``prepare_data`` when ``download=True``), carves ``val_fraction`` of the official training split
as validation under ``seed``, and serves items ``(image [C,H,W] float32 normalised, label, index)``.
Missing files (or a failed download) raise :class:`DatasetNotFoundError` saying which files go where.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from impactx.core import check_int
from impactx.data.base import DatasetNotFoundError, ImageDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "MNISTDataModule",
    "STL10DataModule",
    "TorchvisionDataModule",
]


class TorchvisionDataModule(ImageDataModule):
    """Shared loading, error reporting and transforms of the torchvision-backed modules.

    Subclasses set ``title`` (human name), ``subfolder`` (folder under ``data_dir`` torchvision
    reads), ``expected_files`` (inside it), ``archive_url``, ``crop_padding`` (``None``: no
    augmentation), and implement ``_open(split, download)`` returning the torchvision data set.
    """

    title: ClassVar[str]
    subfolder: ClassVar[str]
    expected_files: ClassVar[tuple[str, ...]]
    archive_url: ClassVar[str]
    crop_padding: ClassVar[int | None] = None

    def _open(self, split: str, download: bool) -> Any:
        raise NotImplementedError

    @staticmethod
    def _targets(dataset: Any) -> np.ndarray:
        return np.asarray(dataset.targets, dtype=np.int64)

    # ---------------------------------------------------------------- loading with clear errors
    def _folder(self) -> str:
        return os.path.join(os.path.abspath(self.data_dir), self.subfolder)

    def _missing_message(self, error: BaseException, downloading: bool) -> str:
        folder = self._folder()
        missing = [f for f in self.expected_files if not os.path.isfile(os.path.join(folder, f))]
        state = (
            f"missing: {', '.join(missing)}"
            if missing
            else "all present, so one is corrupted (checksum/format)"
        )
        lines = [
            f"{self.title} data set not found in data_dir='{os.path.abspath(self.data_dir)}'.",
            f"torchvision expects the folder '{folder}' with the files: {', '.join(self.expected_files)} ({state}).",
        ]
        if downloading:
            lines.append(
                f"The download failed ({type(error).__name__}: {error}); is there a network connection?"
            )
        else:
            lines.append(f"torchvision said: {error}")
        lines.append(
            f"To fix: pass download=True on a machine with internet access (prepare_data downloads and "
            f"extracts the official files there), or {self._copy_hint(folder)}."
        )
        return "\n".join(lines)

    def _copy_hint(self, folder: str) -> str:
        return f"copy the '{self.subfolder}' folder extracted from the official archive {self.archive_url} to '{folder}'"

    def _load(self, split: str, download: bool) -> Any:
        try:
            return self._open(split, download)
        except (RuntimeError, OSError) as error:
            if isinstance(error, DatasetNotFoundError):
                raise
            raise DatasetNotFoundError(self._missing_message(error, downloading=download)) from error

    def prepare_data(self) -> None:
        """Download and extract the data set to ``data_dir`` when ``download=True`` (one process only)."""
        if self.download:
            for split in ("train", "test"):
                self._load(split, download=True)

    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        dataset = self._load(split, download=False)
        return dataset, self._targets(dataset)

    # ---------------------------------------------------------------- transforms
    def _resize(self) -> list[Callable]:
        return []

    def _transform(self, augment: bool) -> Callable:
        from torchvision import transforms

        steps: list[Callable] = list(self._resize())
        if augment and self.crop_padding is not None:
            steps += [
                transforms.RandomCrop(self.image_size, padding=self.crop_padding),
                transforms.RandomHorizontalFlip(),
            ]
        steps += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        return transforms.Compose(steps)

    def _geometric_augmentation(self):
        """Random crop with ``crop_padding`` (black padding; 0 in the map) and a horizontal flip, on an image
        and its map together; ``None`` for data sets without augmentation (MNIST)."""
        if self.crop_padding is None:
            return None
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        fill = {tv_tensors.Image: self._blank_value(), tv_tensors.Mask: 0.0}
        return v2.Compose([
            v2.RandomCrop(self.image_size, padding=self.crop_padding, fill=fill),
            v2.RandomHorizontalFlip(),
        ])


class MNISTDataModule(TorchvisionDataModule):
    """MNIST handwritten digits (60,000 train / 10,000 test), 1x28x28, ten classes.

    Args:
        resize: optional square size to resize to (bilinear); ``None`` keeps the native 28.
        augment: accepted, but MNIST has no augmentation.
        Other args as in :class:`ImageDataModule`.

    Files: ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (gunzipped).
    Items: ``(image [1,S,S] float32 normalised, label int, index int)``, ``S = resize or 28``.
    """

    name = "mnist"
    title = "MNIST"
    num_classes = 10
    in_chans = 1
    image_size = 28
    mean = (0.1307,)
    std = (0.3081,)
    class_names = [str(i) for i in range(10)]
    subfolder = os.path.join("MNIST", "raw")
    expected_files = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    archive_url = "https://ossci-datasets.s3.amazonaws.com/mnist/"

    def _copy_hint(self, folder: str) -> str:
        files = ", ".join(f + ".gz" for f in self.expected_files)
        return f"download {files} from {self.archive_url}, gunzip them and put them in '{folder}'"

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = False,
        download: bool = False,
        resize: int | None = None,
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
        self.resize = None if resize is None else check_int("resize", resize, 1)
        self.image_size = self.resize or 28

    def _open(self, split: str, download: bool) -> Any:
        from torchvision.datasets import MNIST

        return MNIST(self.data_dir, train=split == "train", download=download)

    def _resize(self) -> list[Callable]:
        from torchvision import transforms

        if self.resize is None or self.resize == 28:
            return []
        return [transforms.Resize((self.resize, self.resize), antialias=True)]


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 (50,000 train / 10,000 test), 3x32x32, ten classes.

    ``augment=True``: random crop 32 with 4 px zero padding + horizontal flip on train items.
    Files: ``<data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.
    Items: ``(image [3,32,32] float32 normalised, label int, index int)``.
    """

    name = "cifar10"
    title = "CIFAR-10"
    num_classes = 10
    in_chans = 3
    image_size = 32
    # Per-channel mean/std over the 50,000 training images (std over all pixels).
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    subfolder = "cifar-10-batches-py"
    expected_files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
    archive_url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    crop_padding = 4

    def _open(self, split: str, download: bool) -> Any:
        from torchvision.datasets import CIFAR10

        return CIFAR10(self.data_dir, train=split == "train", download=download)


CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()


class CIFAR100DataModule(TorchvisionDataModule):
    """CIFAR-100 (50,000 train / 10,000 test), 3x32x32, 100 fine classes.

    ``augment=True``: random crop 32 with 4 px zero padding + horizontal flip on train items.
    Files: ``<data_dir>/cifar-100-python/{train, test, meta}``.
    Items: ``(image [3,32,32] float32 normalised, label int (fine label), index int)``.
    """

    name = "cifar100"
    title = "CIFAR-100"
    num_classes = 100
    in_chans = 3
    image_size = 32
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    class_names = list(CIFAR100_CLASSES)
    subfolder = "cifar-100-python"
    expected_files = ("train", "test", "meta")
    archive_url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    crop_padding = 4

    def _open(self, split: str, download: bool) -> Any:
        from torchvision.datasets import CIFAR100

        return CIFAR100(self.data_dir, train=split == "train", download=download)


class STL10DataModule(TorchvisionDataModule):
    """STL-10 labelled splits (5,000 train / 8,000 test), 3x96x96, ten classes.

    ``augment=True``: random crop 96 with 12 px zero padding + horizontal flip on train items.
    Files: ``<data_dir>/stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin,
    unlabeled_X.bin}`` (torchvision checks ``unlabeled_X.bin`` too, though only the labelled
    splits are used). Items: ``(image [3,96,96] float32 normalised, label int, index int)``.
    """

    name = "stl10"
    title = "STL-10"
    num_classes = 10
    in_chans = 3
    image_size = 96
    mean = (0.4467, 0.4398, 0.4066)
    std = (0.2603, 0.2566, 0.2713)
    class_names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    subfolder = "stl10_binary"
    expected_files = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin")
    archive_url = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
    crop_padding = 12

    def _open(self, split: str, download: bool) -> Any:
        from torchvision.datasets import STL10

        return STL10(self.data_dir, split=split, download=download)

    @staticmethod
    def _targets(dataset: Any) -> np.ndarray:
        return np.asarray(dataset.labels, dtype=np.int64)
