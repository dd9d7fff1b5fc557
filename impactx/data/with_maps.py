"""Training items joined to their stored attribution maps, with geometric augmentation applied to both.

``(image, label, index)`` items of an *unaugmented* indexed dataset become ``(image, label, index, map)``:
``map [1,H,W]`` is row ``index`` of a :class:`~impactx.maps.store.MapStore`, normalised on read. Random
geometric augmentation (crop, flip, affine) runs once on the image and its map together, as a torchvision
``transforms.v2`` call on a ``tv_tensors.Image`` and a ``tv_tensors.Mask`` (so both get the same crop,
flip or affine, the map with nearest-neighbour interpolation and zero fill: "no evidence" where the image
was padded); photometric augmentation then touches the image only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from impactx.maps.store import MapStore, Normalisation


class WithMaps(Dataset):
    """``dataset`` items ``(image [C,H,W], label, index)`` plus ``map [1,H,W]`` from ``store``.

    Args:
        dataset: indexed items with deterministic preprocessing only (no augmentation).
        store: the map store whose row ``index`` belongs to the item of index ``index``.
        normalisation: how stored (raw) maps are normalised on read (:func:`impactx.maps.store.normalise_maps`).
        geometric: a ``transforms.v2`` transform called as ``geometric(Image, Mask)`` (``None``: none).
        photometric: a transform of the image alone, after the geometric one (``None``: none).
    """

    def __init__(self, dataset: Dataset, store: MapStore, normalisation: Normalisation = "max_abs",
                 geometric: Callable[..., Any] | None = None, photometric: Callable[..., Any] | None = None) -> None:
        self.dataset = dataset
        self.store = store
        self.normalisation = normalisation
        self.geometric = geometric
        self.photometric = photometric

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, torch.Tensor]:
        image, label, index = self.dataset[i]
        target = self.store.read([index], self.normalisation)[0]  # [1, H, W]
        if self.geometric is not None:
            image, target = self.geometric(tv_tensors.Image(image), tv_tensors.Mask(target))
        if self.photometric is not None:
            image = self.photometric(image)
        return image.as_subclass(torch.Tensor), label, index, target.as_subclass(torch.Tensor)
