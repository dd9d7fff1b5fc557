"""The on-disk map store: one attribution map per item of a data split, written by many ranks, resumable.

A store is a folder named after its key (:meth:`MapKey.folder_name`) holding

- ``manifest.json``: ``{"format": 1, "key": {...}, "n": N, "shape": [N, 1, H, W], "dtype": ..., "stored":
  "raw", "created": ..., "completed": null | time}``;
- ``maps.npy``: the ``[N, 1, H, W]`` array in numpy's ``.npy`` format (row i = the item of index i), so
  ``numpy.load(folder / "maps.npy", mmap_mode="r")`` reads it without impactx;
- ``done.npy``: a ``[N]`` uint8 mask, 1 where the row's values are on disk.

Rows are written in place through memory maps (``MAP_SHARED``), so ranks writing disjoint rows at once is
safe. A row counts as done only after its values were flushed: values first, ``flush``, then the done
flags, ``flush``. A kill at any moment leaves every flagged row complete; a rerun computes the rest. The
store is marked complete by rewriting the manifest to a temporary name and renaming it over the old one.

Values are stored raw (what the explainer returned); the normalisation a training target needs is applied
when read (:func:`normalise_maps`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from impactx.maps.key import MapKey

FORMAT_VERSION = 1
MANIFEST, MAPS, DONE = "manifest.json", "maps.npy", "done.npy"

Normalisation = Literal["max_abs", "none", "minmax"]
NORMALISATIONS: tuple[str, ...] = ("max_abs", "none", "minmax")


class MapStoreError(ValueError):
    """A store is missing, damaged, or holds maps of something else than what was asked for."""


def normalise_maps(maps: torch.Tensor, normalisation: Normalisation = "max_abs") -> torch.Tensor:
    """Per-map normalisation of ``maps [B,1,H,W]`` for use as a training target.

    - ``"max_abs"`` (default): divide by the map's largest absolute value (values in ``[-1, 1]``). Sign and
      zero keep their meaning (evidence for / against the class, no effect) and the target no longer depends
      on the scale of the explained score, which for Partition SHAP of a confident classifier is tiny
      (probability differences of 1e-4) and varies by orders of magnitude across images;
    - ``"minmax"``: to ``[0, 1]`` per map (zero loses its meaning);
    - ``"none"``: the raw values.

    An all-zero map stays zero.
    """
    if normalisation == "none":
        return maps
    flat = maps.reshape(maps.shape[0], -1)
    if normalisation == "max_abs":
        scale = flat.abs().amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
        return (flat / scale.unsqueeze(1)).view_as(maps)
    if normalisation == "minmax":
        low = flat.amin(dim=1, keepdim=True)
        span = (flat.amax(dim=1, keepdim=True) - low).clamp_min(torch.finfo(maps.dtype).tiny)
        return ((flat - low) / span).view_as(maps)
    raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class MapStore:
    """One store folder, opened for reading (``writable=False``) or for writing rows."""

    def __init__(self, path: Path, manifest: dict[str, Any], writable: bool) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.key = MapKey.from_json(manifest["key"])
        self.writable = writable
        mode = "r+" if writable else "r"
        self.maps: np.memmap = np.load(self.path / MAPS, mmap_mode=mode)
        self.done: np.memmap = np.load(self.path / DONE, mmap_mode=mode)
        self._check_arrays()

    # ------------------------------------------------------------------ creating and opening
    @classmethod
    def create(cls, parent: str | Path, key: MapKey, n: int, map_shape: Sequence[int]) -> MapStore:
        """Make (or, when it exists with this key, open for writing) the store of ``key`` under ``parent``.

        A new store is laid out in a temporary folder and renamed into place, so a crash never leaves a
        half-made store under the real name. Call on one process (rank 0) and open on the others after a
        barrier.
        """
        parent = Path(parent)
        final = parent / key.folder_name()
        if final.exists():
            store = cls.open(final, key, writable=True)
            if store.n != int(n) or store.map_shape != tuple(int(s) for s in map_shape):
                raise MapStoreError(
                    f"map store {final} holds {store.n} maps {list(store.map_shape)}, asked for {n} {list(map_shape)}"
                )
            return store
        if n < 1:
            raise MapStoreError(f"a map store needs at least one row, got n={n}")
        shape = (int(n), *(int(s) for s in map_shape))
        if len(shape) != 4 or shape[1] != 1:
            raise MapStoreError(f"maps are stored as [N,1,H,W], got shape {list(shape)}")
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            np.lib.format.open_memmap(tmp / MAPS, mode="w+", dtype=np.dtype(key.dtype), shape=shape).flush()
            np.lib.format.open_memmap(tmp / DONE, mode="w+", dtype=np.uint8, shape=(shape[0],)).flush()
            manifest = {
                "format": FORMAT_VERSION,
                "key": key.to_json(),
                "n": shape[0],
                "shape": list(shape),
                "dtype": key.dtype,
                "stored": "raw",
                "created": _now(),
                "completed": None,
            }
            _write_json_atomically(tmp / MANIFEST, manifest)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(final, manifest, writable=True)

    @classmethod
    def open(cls, path: str | Path, key: MapKey | None = None, writable: bool = False,
             fields_to_check: tuple[str, ...] | None = None) -> MapStore:
        """Open and verify the store at ``path``; with ``key``, refuse a store whose key differs (in
        ``fields_to_check``, default every field) with one line naming the field and both values."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise MapStoreError(f"no map store at {path}: {MANIFEST} is missing (run `python train.py maps` first)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise MapStoreError(f"map store {path}: {MANIFEST} is not valid JSON ({err})") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise MapStoreError(
                f"map store {path} has format {manifest.get('format')!r}; this impactx reads format {FORMAT_VERSION}"
            )
        try:
            stored_key = MapKey.from_json(manifest["key"])
        except (KeyError, TypeError, ValueError) as err:
            raise MapStoreError(f"map store {path}: bad key in {MANIFEST} ({err})") from None
        if key is not None:
            difference = stored_key.first_difference(key, fields_to_check)
            if difference is not None:
                raise MapStoreError(f"map store {path} holds other maps: {difference}")
            refreshed = manifest.get("refreshed_from")
            if refreshed and refreshed != key.model and "model" in (fields_to_check or ("model",)):
                raise MapStoreError(
                    f"map store {path} holds other maps: its rows were recomputed during training from other "
                    f"weights ({refreshed[:12]}...), not from model {key.model[:12]}..."
                )
        return cls(path, manifest, writable)

    def _check_arrays(self) -> None:
        shape = tuple(self.manifest["shape"])
        if self.maps.shape != shape or self.maps.dtype != np.dtype(self.manifest["dtype"]):
            raise MapStoreError(
                f"map store {self.path}: {MAPS} is {self.maps.dtype}{list(self.maps.shape)}, the manifest says "
                f"{self.manifest['dtype']}{list(shape)}"
            )
        if self.done.shape != (shape[0],) or self.done.dtype != np.uint8:
            raise MapStoreError(f"map store {self.path}: {DONE} is {self.done.dtype}{list(self.done.shape)}, expected uint8[{shape[0]}]")

    def __getstate__(self) -> dict[str, Any]:
        # A pickled np.memmap is an in-memory copy; a spawned worker reopens the files instead, so it stays
        # small and sees later writes (refreshes).
        return {"path": self.path, "manifest": self.manifest, "writable": self.writable}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["manifest"], state["writable"])  # type: ignore[misc]

    # ------------------------------------------------------------------ state
    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    @property
    def map_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["shape"][1:])  # type: ignore[return-value]

    @property
    def is_complete(self) -> bool:
        return self.manifest.get("completed") is not None

    def missing(self) -> np.ndarray:
        """Sorted indices ``[M]`` of the rows not yet done."""
        return np.flatnonzero(np.asarray(self.done) == 0)

    # ------------------------------------------------------------------ writing
    @staticmethod
    def _rows(indices: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
        """Row indices as a flat int64 numpy array (from a tensor on any device, an array or a sequence)."""
        values = indices.cpu() if isinstance(indices, torch.Tensor) else indices
        return np.asarray(values, dtype=np.int64).reshape(-1)

    def write(self, indices: torch.Tensor | np.ndarray, maps: torch.Tensor | np.ndarray) -> None:
        """Write ``maps [B,1,H,W]`` into rows ``indices [B]``: values, flush, then the done flags, flush."""
        if not self.writable:
            raise MapStoreError(f"map store {self.path} was opened read-only")
        idx = self._rows(indices)
        values = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
        if values.shape != (idx.shape[0], *self.map_shape):
            raise MapStoreError(
                f"map store {self.path} holds maps {list(self.map_shape)}; got {list(values.shape)} for {idx.shape[0]} rows"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise MapStoreError(f"row indices must lie in [0, {self.n}), got {int(idx.min())}..{int(idx.max())}")
        self.maps[idx] = values.astype(self.maps.dtype, copy=False)
        self.maps.flush()
        self.done[idx] = 1
        self.done.flush()

    def mark_complete(self) -> None:
        """Record completion (only when every row is done) by an atomic rewrite of the manifest."""
        left = int((np.asarray(self.done) == 0).sum())
        if left:
            raise MapStoreError(f"map store {self.path} still has {left} of {self.n} rows to compute")
        self.manifest = {**self.manifest, "completed": _now()}
        _write_json_atomically(self.path / MANIFEST, self.manifest)

    def update_manifest(self, **entries: Any) -> None:
        """Add or replace top-level manifest entries (e.g. a refresh's epoch and model), atomically."""
        self.manifest = {**self.manifest, **entries}
        _write_json_atomically(self.path / MANIFEST, self.manifest)

    # ------------------------------------------------------------------ reading
    def read(self, indices: torch.Tensor | np.ndarray | Sequence[int], normalisation: Normalisation = "max_abs") -> torch.Tensor:
        """Rows ``indices`` as a float32 tensor ``[B,1,H,W]``, normalised (:func:`normalise_maps`)."""
        idx = self._rows(indices)
        rows = torch.from_numpy(np.array(self.maps[idx], dtype=np.float32))
        return normalise_maps(rows, normalisation)

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else f"{self.n - len(self.missing())}/{self.n} rows"
        return f"MapStore({str(self.path)!r}, {self.key.explainer}, {state})"
