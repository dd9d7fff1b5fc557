"""``ImageFolderDataModule``: any folder laid out as ``train/<class>/*`` and ``test/<class>/*``.

Images are read with torchvision's ``ImageFolder`` (PNG, JPEG, ... ; classes are the sorted
sub-folder names of ``train``), converted to RGB (or grey with ``in_chans=1``), resized to
``image_size`` x ``image_size`` and normalised with ``mean``/``std``: given, or computed per channel
from up to ``stats_samples`` images of the train carve (drawn under ``seed``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from impactx.core import check_int
from impactx.data.base import DatasetNotFoundError, ImageDataModule

__all__ = ["ImageFolderDataModule"]


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Open an image file as a PIL image in ``mode`` ("RGB" or "L")."""
    with open(path, "rb") as f:
        return Image.open(f).convert(mode)


class ImageFolderDataModule(ImageDataModule):
    """Image classification from a ``root`` folder with ``train/<class>/*`` and ``test/<class>/*``.

    Args:
        root: the folder holding ``train`` and ``test``.
        image_size: side of the square the images are resized to; ``None`` takes the size of the first
            training image (which must then be square).
        mean, std: per-channel normalisation (``in_chans`` values each); ``None`` computes them.
        stats_samples: at most this many train-carve images are read to compute mean/std.
        in_chans: 3 (RGB) or 1 (grey).
        augment: random crop with ``image_size // 8`` px padding + horizontal flip on train items.
        Other args as in :class:`ImageDataModule` (there is no download).

    Attributes ``num_classes`` and ``class_names`` come from the ``train`` sub-folders.
    Items: ``(image [in_chans,image_size,image_size] float32 normalised, label int, index int)``.
    """

    name = "imagefolder"

    def __init__(
        self,
        root: str,
        image_size: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        stats_samples: int = 1000,
        in_chans: int = 3,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = False,
        predict_split: str = "test",
        maps: str | None = None,
        map_normalisation: str = "max_abs",
    ) -> None:
        super().__init__(
            data_dir=root,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            seed=seed,
            augment=augment,
            download=False,
            predict_split=predict_split,
            maps=maps,
            map_normalisation=map_normalisation,
        )
        self.root = str(root)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans!r}")
        self.in_chans = in_chans
        self._image_size = None if image_size is None else check_int("image_size", image_size, 1)
        self.stats_samples = check_int("stats_samples", stats_samples, 1)
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
        self._stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        if mean is not None and std is not None:
            mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
            if len(mean) != in_chans or len(std) != in_chans:
                raise ValueError(
                    f"mean and std need {in_chans} values (in_chans), got mean={mean}, std={std}"
                )
            if min(std) <= 0:
                raise ValueError(f"std values must be > 0, got {std}")
            self._stats = (mean, std)
        self._classes: list[str] | None = None

    # ---------------------------------------------------------------- folder checks
    def _split_dir(self, split: str) -> str:
        return os.path.join(self.root, split)

    def _scan_classes(self, split: str) -> list[str]:
        root, folder = os.path.abspath(self.root), os.path.abspath(self._split_dir(split))
        hint = f"expected '{root}/train/<class>/<image>' and '{root}/test/<class>/<image>'"
        if not os.path.isdir(root):
            raise DatasetNotFoundError(f"image folder root '{root}' does not exist; {hint}")
        if not os.path.isdir(folder):
            raise DatasetNotFoundError(f"image folder '{root}' has no '{split}' sub-folder; {hint}")
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DatasetNotFoundError(f"image folder '{folder}' holds no class sub-folders; {hint}")
        return classes

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        """Sorted class folder names of ``train`` (torchvision ``ImageFolder`` order)."""
        if self._classes is None:
            self._classes = self._scan_classes("train")
        return list(self._classes)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.class_names)

    def preprocessing(self) -> str:
        """The transform, plus which files form the train split (a digest of their relative paths): a map
        store of another folder's images is refused."""
        import hashlib

        dataset, _ = self.full_split("train")
        root = os.path.abspath(self._split_dir("train"))
        names = "\n".join(os.path.relpath(path, root) for path, _ in getattr(dataset, "samples", []))
        return f"{super().preprocessing()}; train files: {hashlib.sha256(names.encode()).hexdigest()[:16]}"

    # ---------------------------------------------------------------- loading
    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        from torchvision.datasets import ImageFolder

        classes = self._scan_classes(split)
        if split == "test" and classes != self.class_names:
            raise ValueError(
                f"class folders of '{self._split_dir('test')}' {classes} differ from those of "
                f"'{self._split_dir('train')}' {self.class_names}"
            )
        try:
            dataset = ImageFolder(
                self._split_dir(split), loader=partial(load_image, mode="RGB" if self.in_chans == 3 else "L")
            )
        except FileNotFoundError as error:  # e.g. class folders without any image file
            raise DatasetNotFoundError(
                f"image folder '{os.path.abspath(self._split_dir(split))}': {error}"
            ) from error
        return dataset, np.asarray(dataset.targets, dtype=np.int64)

    @property
    def image_size(self) -> int:  # type: ignore[override]
        """Side of the square input; the first training image's size when not given."""
        if self._image_size is None:
            dataset, _ = self.full_split("train")
            path = dataset.samples[0][0]  # type: ignore[attr-defined]
            with Image.open(path) as image:
                width, height = image.size
            if width != height:
                raise ValueError(
                    f"image_size is needed: the first training image '{path}' is {width}x{height}, not square"
                )
            self._image_size = width
        return self._image_size

    # ---------------------------------------------------------------- normalisation
    def _compute_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        from torchvision import transforms

        dataset, _ = self.full_split("train")
        train_pos, _ = self.split_positions()
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(train_pos, size=min(self.stats_samples, len(train_pos)), replace=False)
        to_tensor = transforms.Compose(
            [transforms.Resize((self.image_size, self.image_size)), transforms.ToTensor()]
        )
        total = torch.zeros(self.in_chans, dtype=torch.float64)
        total_sq = torch.zeros(self.in_chans, dtype=torch.float64)
        count = 0
        for pos in sorted(chosen.tolist()):
            x = to_tensor(dataset[pos][0]).to(torch.float64).flatten(1)  # [C, H*W]
            total += x.sum(1)
            total_sq += (x * x).sum(1)
            count += x.shape[1]
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
        return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())

    @property
    def mean(self) -> tuple[float, ...]:  # type: ignore[override]
        """Per-channel mean, given or computed from up to ``stats_samples`` train-carve images."""
        if self._stats is None:
            self._stats = self._compute_stats()
        return self._stats[0]

    @property
    def std(self) -> tuple[float, ...]:  # type: ignore[override]
        """Per-channel std, given or computed from up to ``stats_samples`` train-carve images."""
        if self._stats is None:
            self._stats = self._compute_stats()
        return self._stats[1]

    def _transform(self, augment: bool) -> Callable:
        from torchvision import transforms

        size = self.image_size
        steps: list[Callable] = [transforms.Resize((size, size))]
        if augment:
            steps += [
                transforms.RandomCrop(size, padding=max(1, size // 8)),
                transforms.RandomHorizontalFlip(),
            ]
        steps += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        return transforms.Compose(steps)

    def _geometric_augmentation(self):
        """Random crop (padding ``size // 8``, black; 0 in the map) and a horizontal flip, on image and map."""
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        size = self.image_size
        fill = {tv_tensors.Image: self._blank_value(), tv_tensors.Mask: 0.0}
        return v2.Compose([v2.RandomCrop(size, padding=max(1, size // 8), fill=fill), v2.RandomHorizontalFlip()])
