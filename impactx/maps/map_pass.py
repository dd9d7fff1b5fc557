"""The map pass: one attribution map per training item, computed with ``trainer.predict`` on every device.

The rows ``0..N-1`` of the split are cut into fixed consecutive batches of ``batch_size``; the pass runs the
batches that still hold a row to compute, each batch one dataset item (so Lightning's predict sampler shards
whole batches over the ranks, without repeats), and :class:`MapStoreWriter` writes every batch's rows by
index. Because a batch always holds the same images, a pass that was killed and run again, or run on
another number of devices, gives bitwise the same maps as one uninterrupted pass.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, Dataset

from impactx.attribution.background import materialise_background
from impactx.attribution.registry import create_explainer
from impactx.attribution.sources import MapSource
from impactx.attribution.specs import ExplainerSpec
from impactx.core import check_int, weights_fingerprint
from impactx.maps.key import DTYPES, MAP_SPLIT, MapKey
from impactx.maps.store import MapStore, MapStoreError


@dataclass
class MapPassOptions:
    """What the map pass computes and where it puts it (``--maps.*`` on the command line).

    Attributes:
        method: a registered explainer (default ``partition``, Partition SHAP as in IMPACTX 4.2).
        options: the explainer's options (``None``: ``{max_evals: 2000}`` for the partition methods, the
            paper's budget, and the explainer's defaults otherwise).
        dir: the parent folder in which the store's own folder is made.
        dtype: ``float32`` or ``float16`` values on disk.
        batch_size: images per explainer call (fixed batches; changing it changes which images share a call).
        seed: the seed given to explainers that take one and whose options leave it out; also picks the
            background of explainers that need one (``eg``, ``wg``, ``deepprior_eg``).
        background_size: how many images of the (unaugmented) train split form that background.
    """

    method: str = "partition"
    options: dict[str, Any] | None = None
    dir: str = "maps"
    dtype: str = "float32"
    batch_size: int = 64
    seed: int = 0
    background_size: int = 64

    def __post_init__(self) -> None:
        check_int("maps.batch_size", self.batch_size)
        check_int("maps.background_size", self.background_size)
        if self.dtype not in DTYPES:
            raise ValueError(f"maps.dtype must be one of {DTYPES}, got {self.dtype!r}")
        self.spec()  # an unknown method or a bad option fails now

    def spec(self) -> ExplainerSpec:
        options = dict(self.options or {})
        if self.options is None and self.method in ("partition", "shap_partition"):
            options["max_evals"] = 2000
        return ExplainerSpec(self.method, options).check()


def fixed_batches(n: int, batch_size: int, missing: np.ndarray | None = None) -> list[np.ndarray]:
    """Rows ``0..n-1`` in consecutive batches of ``batch_size``; only those holding a ``missing`` row."""
    batches = [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if missing is None:
        return batches
    todo = np.zeros(n, dtype=bool)
    todo[missing] = True
    return [b for b in batches if todo[b].any()]


class BatchDataset(Dataset):
    """Item ``j`` is the whole batch ``batches[j]`` of ``dataset``: ``(images [b,C,H,W], labels [b], index [b])``."""

    def __init__(self, dataset: Dataset, batches: Sequence[np.ndarray]) -> None:
        self.dataset = dataset
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items = [self.dataset[int(i)] for i in self.batches[j]]
        images = torch.stack([item[0] for item in items])
        labels = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
        index = torch.tensor([int(item[2]) for item in items], dtype=torch.long)
        return images, labels, index


BACKGROUND = "background"


def bound_options(explainer: ExplainerSpec, seed: int, background_size: int) -> dict[str, Any]:
    """Every constructor option of ``explainer`` (defaults included, so a changed default changes the key),
    seed filled in; a needed background is described as ``{"split", "size", "seed"}`` of the train split."""
    options = explainer.build_options(seed)
    cls = explainer.explainer_class
    bound = inspect.signature(cls.__init__).bind_partial(None, **options)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(inspect.signature(cls.__init__).parameters)))  # self
    if explainer.needs_background:
        arguments[BACKGROUND] = {"split": MAP_SPLIT, "size": background_size, "seed": seed}
    elif arguments.get(BACKGROUND) is None:
        arguments.pop(BACKGROUND, None)
    return arguments


def map_explainer(key: MapKey, dataset: Dataset) -> MapSource:
    """The source a store's maps come from, rebuilt from its key: a described background is drawn again
    from ``dataset`` (the unaugmented train split), so a refresh explains with the same references."""
    options = dict(key.options)
    described = options.get(BACKGROUND)
    if isinstance(described, dict) and set(described) == {"split", "size", "seed"}:
        options[BACKGROUND] = materialise_background(dataset, described["size"], MAP_SPLIT, described["seed"])
    explainer = create_explainer(key.explainer, **options)
    return MapSource(key.explainer, explainer.needs_gradients, explainer, reduce_channels=True)


def map_key(datamodule: Any, model: nn.Module, options: MapPassOptions, precision: str = "32-true") -> MapKey:
    """The store key of maps of ``model`` by the pass ``options`` over the data module's full train split."""
    return MapKey(
        dataset=datamodule.name,
        split=MAP_SPLIT,
        preprocessing=datamodule.preprocessing(),
        explainer=options.method,
        options=bound_options(options.spec(), options.seed, options.background_size),
        target="label",
        model=weights_fingerprint(model),
        dtype=options.dtype,
        precision=str(precision),
    )


class MapPassModule(L.LightningModule):
    """Wraps the explained ``model`` for ``trainer.predict``: each step explains one fixed batch for its labels.

    ``setup`` creates the store on rank 0 (or opens it when it exists) and opens it on the others;
    ``predict_dataloader`` serves the batches still to compute.
    """

    def __init__(self, model: nn.Module, datamodule: Any, options: MapPassOptions, key: MapKey,
                 dataset: Dataset) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.key = key
        self.dataset = dataset
        self.datamodule_ref = datamodule
        self.source = map_explainer(key, dataset)
        self.store: MapStore | None = None
        self.batches: list[np.ndarray] = []

    def setup(self, stage: str) -> None:
        image_shape = tuple(self.dataset[0][0].shape)
        if self.trainer.is_global_zero:
            MapStore.create(self.options.dir, self.key, len(self.dataset), (1, *image_shape[1:]))
        self.trainer.strategy.barrier("map-store")
        self.store = MapStore.open(Path(self.options.dir) / self.key.folder_name(), self.key, writable=True)
        if self.store.n != len(self.dataset):
            raise MapStoreError(f"map store {self.store.path} has {self.store.n} rows, the split {len(self.dataset)} items")
        # Every rank chooses the batches before any rank writes, so all shard the same list.
        self.batches = fixed_batches(self.store.n, self.options.batch_size, self.store.missing())
        self.trainer.strategy.barrier("map-batches")

    def predict_dataloader(self) -> DataLoader:
        batches = self.batches
        workers = int(getattr(self.datamodule_ref, "num_workers", 0))
        return DataLoader(BatchDataset(self.dataset, batches), batch_size=None, shuffle=False,
                          num_workers=workers, persistent_workers=False)

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        images, labels, index = batch
        return {"index": index, "maps": self.source(self.model, images, labels)}


class MapStoreWriter(BasePredictionWriter):
    """Writes each predicted batch's maps into the store rows of its indices (values, flush, done flags)."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.rows_written = 0

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        store: MapStore = pl_module.store
        store.write(prediction["index"], prediction["maps"])
        self.rows_written += int(prediction["index"].numel())

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("map-store-done")
        store: MapStore = pl_module.store
        if trainer.is_global_zero and len(store.missing()) == 0 and not store.is_complete:
            store.mark_complete()


def load_weights(model: nn.Module, ckpt_path: str | Path) -> None:
    """Load a Lightning checkpoint's ``state_dict`` into ``model``, unpickling nothing but tensors and plain data."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise ValueError(f"checkpoint {path} has no 'state_dict' (not a Lightning checkpoint?)")
    model.load_state_dict(state)


def run_map_pass(trainer: L.Trainer, model: L.LightningModule, datamodule: Any, options: MapPassOptions,
                 ckpt_path: str | Path | None = None) -> Path:
    """Fill (or finish) the map store of ``model`` (weights from ``ckpt_path``) over the data module's full
    train split with ``trainer.predict`` on every device of ``trainer``; returns the store's folder.

    A complete store with the same key is left as it is (nothing is computed, and it says so); an incomplete
    one is resumed, computing only the batches that still hold a missing row.
    """
    if ckpt_path is not None:
        load_weights(model, ckpt_path)
    spec = options.spec()
    key = map_key(datamodule, model, options, trainer.precision)
    folder = Path(options.dir) / key.folder_name()
    if (folder / "manifest.json").is_file():
        existing = MapStore.open(folder, key)
        if existing.is_complete:
            if trainer.is_global_zero:
                print(f"map store {folder} is complete ({existing.n} maps): nothing to compute")
            return folder
    dataset = datamodule.map_dataset()
    module = MapPassModule(model, datamodule, options, key, dataset)
    writer = MapStoreWriter()
    trainer.callbacks.append(writer)
    was_training = model.training
    model.eval()
    inference_mode = trainer.predict_loop.inference_mode
    # Gradient explainers cannot run under torch.inference_mode (Lightning's default for predict).
    trainer.predict_loop.inference_mode = inference_mode and not spec.needs_gradients
    try:
        with warnings.catch_warnings():
            # Each step is one fixed batch (a dataset item), so Lightning has no per-item batch indices to infer.
            warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
            trainer.predict(module, return_predictions=False)
    finally:
        trainer.callbacks.remove(writer)
        trainer.predict_loop.inference_mode = inference_mode
        model.train(was_training)
    if trainer.is_global_zero:
        store = MapStore.open(folder, key)
        state = "complete" if store.is_complete else f"{store.n - len(store.missing())}/{store.n} rows"
        print(f"map store {folder}: {state} ({spec.name}, {writer.rows_written} maps computed in this run)")
    return folder
