"""Under DDP (2 CPU processes, gloo) the synced metric equals the single-process value on all the data.

One curve metric with random replacement and its random-order baseline (MoRF, uniform noise: the draws must not
depend on the shard) and
one scalar metric (Sparseness); the shards have different sizes (3 and 2 images).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from metrics_helpers import batch, tiny_cnn

from impactx.metrics import MoRF, Sparseness


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics():
    return MoRF(patch_size=4, n_steps=4, perturbation={"seed": 9}, random_baseline=True), Sparseness()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = tiny_cnn(1, 8)
        images, targets, maps = batch(5, 1, 8)
        shard = slice(0, 3) if rank == 0 else slice(3, 5)
        morf, sparse = _metrics()
        morf.update(model, images[shard], targets[shard], maps[shard])
        sparse.update(maps[shard])
        result = {"morf": morf.compute(), "sparseness": sparse.compute()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_synced_value_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    model = tiny_cnn(1, 8)
    images, targets, maps = batch(5, 1, 8)
    morf, sparse = _metrics()
    morf.update(model, images, targets, maps)
    sparse.update(maps)
    single = {"morf": morf.compute(), "sparseness": sparse.compute()}
    local = MoRF(patch_size=4, n_steps=4, perturbation={"seed": 9})
    local.update(model, images[:3], targets[:3], maps[:3])
    for rank in range(2):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(synced["morf"]["curve"], single["morf"]["curve"], atol=1e-6, rtol=0)
        torch.testing.assert_close(synced["morf"]["aopc"], single["morf"]["aopc"], atol=1e-6, rtol=0)
        for key in ("random_curve", "random_aopc"):  # the random order is the image's, not the shard's
            torch.testing.assert_close(synced["morf"][key], single["morf"][key], atol=1e-6, rtol=0)
        torch.testing.assert_close(synced["sparseness"], single["sparseness"], atol=1e-6, rtol=0)
    # the sync really happened: rank 0's own shard alone gives another curve
    assert not torch.allclose(local.compute()["curve"], single["morf"]["curve"])
