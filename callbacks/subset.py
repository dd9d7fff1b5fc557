"""The fixed, seeded evaluation subset, its DDP shards and its batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset


def subset_positions(n_items: int, num_images: int, seed: int) -> torch.Tensor:
    """Sorted positions ``[min(num_images, n_items)]`` (int64) drawn without replacement from ``0..n_items-1``
    by a generator seeded with ``seed``: the same on every run, process and rank."""
    if n_items < 1:
        raise ValueError(f"the evaluation split is empty (n_items={n_items})")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_items, generator=gen)[:num_images].sort().values


def shard(positions: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s share of ``positions``: every ``world_size``-th entry from ``rank`` (disjoint, covering)."""
    return positions[rank::world_size]


def padded_shard(positions: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """As :func:`shard`, padded by repeating the last position to ``ceil(N / world_size)`` entries, so every
    rank holds the same count (``all_gather`` needs equal shapes). :func:`unshard` undoes it."""
    n = positions.shape[0]
    per_rank = -(-n // world_size)
    slots = torch.arange(per_rank) * world_size + rank
    return positions[slots.clamp_max(n - 1)]


def unshard(gathered: torch.Tensor, n: int) -> torch.Tensor:
    """``[world_size, k, ...]`` from ``all_gather`` of padded shards -> the first ``n`` items in subset order.

    Slot ``j`` of rank ``r`` holds subset entry ``j * world_size + r``, so transposing to ``[k, world_size]``
    and flattening restores the order.
    """
    return gathered.transpose(0, 1).reshape(-1, *gathered.shape[2:])[:n]


def split_dataset(trainer: Any, split: str) -> Dataset:
    """``trainer.datamodule.dataset(split)``: the indexed items ``(image, label, index)`` of ``split``."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not callable(getattr(datamodule, "dataset", None)):
        raise RuntimeError(
            f"explanation callbacks read the {split!r} split from the data module: pass a datamodule with a "
            f".dataset(split) method (every impactx data module has one) to the Trainer call, got "
            f"{type(datamodule).__name__ if datamodule is not None else 'no datamodule'}"
        )
    return datamodule.dataset(split)


def batches(
    dataset: Dataset, positions: torch.Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(images [b,C,H,W], labels [b], index [b])`` on ``device`` for the items at ``positions``, in order."""
    loader = DataLoader(Subset(dataset, positions.tolist()), batch_size=batch_size, shuffle=False, num_workers=0)
    for images, labels, index in loader:
        yield images.to(device), labels.to(device), index.to(device)
