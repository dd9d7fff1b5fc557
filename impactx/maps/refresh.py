"""Recompute a store's rows from a model that is still training (single-stage IMPACTX), inside ``fit``.

``trainer.predict`` cannot run inside ``fit``, so the ranks of the running fit split the store's fixed
batches among themselves (batch ``j`` to rank ``j % world``), explain them one batch at a time, gather each
step's rows from every rank (:func:`impactx.core.gather_rows`) and rank 0 writes them. How much the maps
moved since the previous refresh is measured on the gathered rows, so every rank reports the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from impactx.attribution.sources import MapSource
from impactx.core import gather_rows, weights_fingerprint
from impactx.maps.map_pass import BatchDataset, fixed_batches
from impactx.maps.store import MapStore
from impactx.metrics.functional import spearman_correlation


@dataclass(frozen=True)
class RefreshStats:
    """How much a refresh changed the maps: mean over rows of the mean ``|new - old|``, and of the
    Spearman rank correlation between each old and new map (constant maps are left out)."""

    mean_abs_change: float
    rank_correlation: float
    rows: int


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def refresh_store(store: MapStore, model: nn.Module, source: MapSource, dataset: Dataset, batch_size: int,
                  device: torch.device) -> RefreshStats:
    """Recompute every row of ``store`` as ``source(model, images, labels)`` over ``dataset`` (the store's split,
    items ``(image, label, index)``), sharded by rank; a collective under ``torch.distributed``."""
    rank, world = _rank_and_world()
    batches = fixed_batches(store.n, batch_size)
    steps = -(-len(batches) // world)
    items = BatchDataset(dataset, batches)
    change_sum, corr_sum, corr_count, rows = 0.0, 0.0, 0, 0
    if rank == 0:  # marks a refresh killed halfway: its rows come from two models
        store.update_manifest(refreshing=True)
    if world > 1:
        dist.barrier()
    for step in range(steps):
        j = step * world + rank
        if j < len(batches):
            images, labels, index = items[j]
            maps = source(model, images.to(device), labels.to(device)).float()
            index = index.to(device)
        else:  # this rank has no batch at the last step; it still joins the gather
            maps = torch.zeros((0, *store.map_shape), device=device)
            index = torch.zeros(0, dtype=torch.long, device=device)
        # Old rows are read before the gather, so no rank reads a row rank 0 has already rewritten.
        old = store.read(index.cpu(), normalisation="none").to(device)
        all_old, all_maps, all_index = gather_rows(old), gather_rows(maps), gather_rows(index)
        old, new = all_old.cpu(), all_maps.cpu()
        change_sum += float((new - old).abs().flatten(1).mean(dim=1).sum())
        corr = spearman_correlation(old.double(), new.double())
        corr = corr[~torch.isnan(corr)]
        corr_sum, corr_count = corr_sum + float(corr.sum()), corr_count + int(corr.numel())
        rows += int(all_index.numel())
        if rank == 0:
            store.write(all_index.cpu(), new)
    if rank == 0:
        refreshes = int(store.manifest.get("refreshes", 0)) + 1
        store.update_manifest(refreshed_from=weights_fingerprint(model), refreshes=refreshes, refreshing=False)
    if world > 1:
        dist.barrier()
    return RefreshStats(change_sum / max(rows, 1), corr_sum / corr_count if corr_count else float("nan"), rows)

