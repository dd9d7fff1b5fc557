"""``ImageDataModule``: the one interface every impactx data module follows.

A data module loads two *full splits*, ``"train"`` and ``"test"``, carves a validation part out of
the train split under ``seed`` (stratified by class where the class counts allow it), and serves
three indexed splits, ``"train" | "val" | "test"``, whose items are ``(image, label, index)``:

- ``image``: ``[C,H,W]`` float32, normalised with ``mean``/``std`` (``C = in_chans``, ``H = W = image_size``);
- ``label``: int in ``[0, num_classes)``;
- ``index``: position in the full underlying split (train and val share the train split's
  positions and never the same one; test has its own).

Any split can be read with or without the training augmentation: ``dataset(split, augment=None)``
(``None``: the split's default, i.e. ``"train"`` augments iff the module's ``augment`` is on and
``"val"``/``"test"`` never do). ``predict_dataloader`` serves ``predict_split`` (``"test"`` by default,
``"train"`` for a map pass over the training items) in index order and never augments.

Subclasses implement ``_load_split(split)`` (and, where they need them, ``_transform(augment)`` and
``prepare_data``) and set the class attributes ``name``, ``num_classes``, ``in_chans``,
``image_size``, ``mean``, ``std``, ``class_names``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset

from impactx.core import check_int
from impactx.data.indexed import IndexedDataset
from impactx.data.with_maps import WithMaps
from impactx.maps.key import MAP_SPLIT
from impactx.maps.store import NORMALISATIONS, MapStore, MapStoreError

__all__ = ["DatasetNotFoundError", "ImageDataModule", "SPLITS", "carve_validation", "check_split"]

SPLITS = ("train", "val", "test")


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set are missing (or corrupted) and could not be downloaded."""


# ---------------------------------------------------------------------------------- validation
def check_split(name: str, value: Any) -> str:
    """Return ``value`` if it is one of :data:`SPLITS`, else raise a ``ValueError`` naming it."""
    if not isinstance(value, str) or value not in SPLITS:
        raise ValueError(f"{name} must be one of {', '.join(repr(s) for s in SPLITS)}, got {value!r}")
    return value


def check_fraction(name: str, value: Any, allow_zero: bool = True) -> float:
    """Return ``value`` if it is a number in ``[0, 1)`` (``(0, 1)`` without ``allow_zero``)."""
    lo = "[0, 1)" if allow_zero else "(0, 1)"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in {lo}, got {value!r}")
    value = float(value)
    if not (0.0 <= value < 1.0) or (not allow_zero and value == 0.0):
        raise ValueError(f"{name} must be a number in {lo}, got {value!r}")
    return value


# --------------------------------------------------------------------------------- the val carve
def carve_validation(
    targets: Sequence[int] | np.ndarray, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split positions ``0..n-1`` of a train split into sorted (train, val) position lists.

    Stratified by ``targets`` (sklearn ``train_test_split(stratify=...)``) when every class has at
    least two members and both parts can hold every class; otherwise a plain seeded random split.
    Deterministic under ``seed``. ``val_fraction == 0`` gives an empty val list.
    """
    from sklearn.model_selection import train_test_split

    targets = np.asarray(targets)
    n = len(targets)
    positions = np.arange(n)
    if val_fraction == 0.0:
        return positions.tolist(), []
    n_val = int(np.ceil(val_fraction * n))
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training items out of {n}")
    classes, counts = np.unique(targets, return_counts=True)
    stratify = targets if counts.min() >= 2 and min(n_val, n - n_val) >= len(classes) else None
    train_pos, val_pos = train_test_split(positions, test_size=n_val, stratify=stratify, random_state=seed)
    return np.sort(train_pos).tolist(), np.sort(val_pos).tolist()


# ------------------------------------------------------------------------------- the base class
class ImageDataModule(LightningDataModule):
    """Base ``LightningDataModule`` for image classification with indexed items.

    Args:
        data_dir: folder holding the data set files (as torchvision lays them out).
        batch_size: items per batch (> 0).
        num_workers: DataLoader worker processes (>= 0).
        val_fraction: fraction of the train split carved out as validation, in ``[0, 1)``.
        seed: seed of the validation carve (and of any other split the subclass draws).
        augment: apply the data set's training augmentation to the ``"train"`` split (the default of
            ``dataset("train")`` and of ``train_dataloader``).
        download: let ``prepare_data`` download missing files (needs internet).
        predict_split: the split ``predict_dataloader`` serves, one of ``"train" | "val" | "test"``;
            always without augmentation, in index order.
        maps: a map store folder (made by ``python train.py maps``) to join to the train split: its items
            become ``(image, label, index, map [1,H,W])``, random geometric augmentation applied to image and
            map together (see :mod:`impactx.data.with_maps`). A store of another data set, split or
            preprocessing is refused.
        map_normalisation: how stored maps are normalised on read (``"max_abs"``, ``"minmax"``, ``"none"``;
            see :func:`impactx.maps.store.normalise_maps`).

    Attributes (class attributes or properties, available before ``setup``):
        name, num_classes, in_chans, image_size (H = W), mean, std (per channel), class_names.
    """

    name: str = "image"
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = False,
        download: bool = False,
        predict_split: str = "test",
        maps: str | None = None,
        map_normalisation: str = "max_abs",
    ) -> None:
        super().__init__()
        self.data_dir = str(data_dir)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.seed = check_int("seed", seed, 0)
        self.augment = bool(augment)
        self.download = bool(download)
        self.predict_split = check_split("predict_split", predict_split)
        if map_normalisation not in NORMALISATIONS:
            raise ValueError(f"map_normalisation must be one of {NORMALISATIONS}, got {map_normalisation!r}")
        self.maps = None if maps is None else str(maps)
        self.map_normalisation = map_normalisation
        self._map_store: MapStore | None = None
        self._save_init_hparams()
        self._full: dict[str, tuple[Dataset, np.ndarray]] = {}  # "train"/"test" -> (dataset, targets)
        self._carve: tuple[list[int], list[int]] | None = None
        self._splits: dict[tuple[str, bool], Dataset] = {}  # (split, augmented) -> indexed dataset

    def _save_init_hparams(self) -> None:
        """``save_hyperparameters()`` with exactly the arguments of the concrete class's ``__init__``.

        Lightning collects the arguments of every ``__init__`` in the ``super()`` chain; arguments of
        this base that a subclass drops (e.g. ``data_dir`` for an image folder ``root``) are left out so
        ``cls(**hparams)`` works.
        """
        params = inspect.signature(type(self).__init__).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        base_args = inspect.signature(ImageDataModule.__init__).parameters
        ignore = [] if takes_kwargs else [k for k in base_args if k != "self" and k not in params]
        self.save_hyperparameters(ignore=ignore, frame=inspect.currentframe().f_back)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ subclass hooks
    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        """Load the full ``"train"`` or ``"test"`` split: an ``(image, label)`` dataset and its labels ``[N]``."""
        raise NotImplementedError

    def _transform(self, augment: bool) -> Callable[[Any], torch.Tensor] | None:
        """Image transform to a normalised ``[C,H,W]`` float32 tensor, with the data set's training
        augmentation when ``augment`` (whatever the module's ``augment`` option says)."""
        return None

    def _geometric_augmentation(self) -> Callable[..., Any] | None:
        """The training augmentation's random geometric part as a ``transforms.v2`` transform of
        ``(tv_tensors.Image, tv_tensors.Mask)`` on normalised tensors (used when maps are joined); ``None``
        when the data set has none."""
        return None

    def _photometric_augmentation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The training augmentation's photometric part (image only, after the geometric one); ``None``."""
        return None

    def _blank_value(self) -> tuple[float, ...]:
        """A black pixel after normalisation, per channel (the fill of padded or rotated-in image areas)."""
        return tuple(-m / s for m, s in zip(self.mean, self.std, strict=True))

    # ------------------------------------------------------------------ target maps
    def preprocessing(self) -> str:
        """The deterministic preprocessing of every item, as text (part of a map store's key)."""
        return (
            f"{type(self).__name__}(image_size={self.image_size}, in_chans={self.in_chans}, "
            f"mean={tuple(self.mean)}, std={tuple(self.std)}, transform={self._transform(augment=False)!r})"
        )

    def map_dataset(self) -> Dataset:
        """The full train split (train and val carves: row ``i`` is the item of index ``i``) with the
        deterministic preprocessing and no augmentation: what the map pass explains."""
        data, _ = self.full_split("train")
        return IndexedDataset(data, self._transform(augment=False))

    @property
    def map_store(self) -> MapStore | None:
        """The joined store (``maps``), opened and checked against this data set, split and preprocessing."""
        if self.maps is None:
            return None
        if self._map_store is None:
            store = MapStore.open(self.maps)
            wanted = {"dataset": self.name, "split": MAP_SPLIT, "preprocessing": self.preprocessing()}
            for field, value in wanted.items():
                stored = getattr(store.key, field)
                if stored != value:
                    raise MapStoreError(
                        f"map store {self.maps} holds maps of another {field}: store has {stored!r}, "
                        f"{type(self).__name__} gives {value!r}"
                    )
            n = len(self.full_split("train")[0])
            if store.n != n:
                raise MapStoreError(f"map store {self.maps} has {store.n} rows but the train split has {n} items")
            missing = len(store.missing())
            if missing:
                raise MapStoreError(
                    f"map store {self.maps} is incomplete: {missing} of {n} maps not computed yet "
                    "(run `python train.py maps` again to finish it)"
                )
            self._map_store = store
        return self._map_store

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download files if the subclass supports it (called on one process only)."""

    def _stage_splits(self, stage: str | None) -> tuple[str, ...]:
        """The splits a Lightning stage reads: fit -> train, val; validate -> val; test -> test;
        predict -> ``predict_split``; None (or another name) -> all of them."""
        stages = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": (self.predict_split,),
        }
        return stages.get(stage or "", SPLITS)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a stage needs: the predict split unaugmented, the others as their default."""
        for split in self._stage_splits(stage):
            self.dataset(split, augment=False if stage == "predict" else None)

    def check_data(self, stage: str | None = None) -> None:
        """Read the full splits ``stage`` needs, raising :class:`DatasetNotFoundError` when files are missing.

        Cheap and cached (``setup`` reuses what it loads); needs no Trainer, so ``train.py`` calls it before
        the loggers create their run folders.
        """
        for split in self._stage_splits(stage):
            self.full_split("train" if split in ("train", "val") else "test")
        if stage in (None, "fit"):
            _ = self.map_store  # a missing or mismatched store fails now

    def full_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        """The full ``"train"`` or ``"test"`` split (untransformed ``(image, label)`` items) and its labels."""
        if split not in ("train", "test"):
            raise ValueError(f"full_split expects 'train' or 'test', got {split!r}")
        if split not in self._full:
            dataset, targets = self._load_split(split)
            self._full[split] = (dataset, np.asarray(targets, dtype=np.int64))
        return self._full[split]

    def split_positions(self) -> tuple[list[int], list[int]]:
        """Sorted positions in the full train split of the (train, val) carve, fixed by ``seed``."""
        if self._carve is None:
            _, targets = self.full_split("train")
            self._carve = carve_validation(targets, self.val_fraction, self.seed)
        return self._carve

    def dataset(self, split: str, augment: bool | None = None) -> Dataset:
        """The indexed dataset of ``"train" | "val" | "test"``; items ``(image [C,H,W], label, index)``.

        ``augment``: apply the data set's training augmentation (``True``) or not (``False``); ``None``
        is the split's default: ``"train"`` augments iff the module's ``augment`` is on, ``"val"`` and
        ``"test"`` never do. Built once per ``(split, augment)`` and cached; every variant of a split
        holds the same items in the same order, so only the augmentation differs.
        ``"train"``/``"val"`` are ``Subset``s of the indexed full train split, so ``index`` is the
        position in the full train split.
        """
        split = check_split("split", split)
        augment = (split == "train" and self.augment) if augment is None else bool(augment)
        key = (split, augment)
        if key not in self._splits and split == "train" and self.maps is not None:
            train_pos, _ = self.split_positions()
            self._splits[key] = WithMaps(
                Subset(self.map_dataset(), train_pos),
                self.map_store,  # type: ignore[arg-type]
                self.map_normalisation,  # type: ignore[arg-type]
                geometric=self._geometric_augmentation() if augment else None,
                photometric=self._photometric_augmentation() if augment else None,
            )
        if key not in self._splits:
            data, _ = self.full_split("train" if split in ("train", "val") else "test")
            indexed = IndexedDataset(data, self._transform(augment=augment))
            if split == "test":
                self._splits[key] = indexed
            else:
                train_pos, val_pos = self.split_positions()
                self._splits[key] = Subset(indexed, train_pos if split == "train" else val_pos)
        return self._splits[key]

    def _loader(self, split: str, shuffle: bool, augment: bool | None = None) -> DataLoader:
        return DataLoader(
            self.dataset(split, augment=augment),
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches ``(image [B,C,H,W], label [B], index [B])`` of the train carve."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Batches of the validation carve, in index order (empty when ``val_fraction == 0``)."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Batches of the test split, in index order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of ``predict_split`` (the test split by default), in index order, never augmented."""
        return self._loader(self.predict_split, shuffle=False, augment=False)
