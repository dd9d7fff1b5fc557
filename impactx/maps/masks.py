"""A map store of masks a user drew (or any ``[N,1,H,W]`` maps made outside impactx), for target-map priors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from impactx.maps.key import MAP_SPLIT, MapKey
from impactx.maps.store import MapStore, MapStoreError


def mask_store(datamodule, masks: torch.Tensor | np.ndarray, parent: str | Path, name: str = "masks") -> Path:  # noqa: ANN001
    """Write ``masks [N,1,H,W]`` as the complete train-split store of ``datamodule``; returns its folder.

    Row ``i`` must belong to the training item of index ``i`` (``datamodule.map_dataset()[i]``), ``N`` being the
    full train split (train and val carves) and ``H, W`` the data module's image size. The key names the data
    set, split and preprocessing (so the data module's ``maps`` option accepts the store and refuses it for other
    data) and ``explainer=name``, ``model="none"``. Pass the folder as ``data.init_args.maps``.
    """
    values = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).detach()
    n = len(datamodule.map_dataset())
    size = int(datamodule.image_size)
    if values.dim() != 4 or values.shape[0] != n or values.shape[1] != 1 or tuple(values.shape[2:]) != (size, size):
        raise MapStoreError(f"masks must have shape [{n}, 1, {size}, {size}] (the full train split of "
                            f"{type(datamodule).__name__}), got {list(values.shape)}")
    if not torch.isfinite(values.float()).all():
        raise MapStoreError("masks contain NaN or infinite values")
    key = MapKey(dataset=datamodule.name, split=MAP_SPLIT, preprocessing=datamodule.preprocessing(), explainer=name,
                 options={}, target="label", model="none")
    store = MapStore.create(parent, key, n, (1, size, size))
    store.write(torch.arange(n), values.float())
    store.mark_complete()
    return store.path
