"""DeepPrior-EG under DDP (2 CPU processes, gloo): fitted on the batch (``background=None``), the density is
the same on every rank and equals a single-process fit on all ranks' batches together."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_deepprior import images, small_cnn

from impactx.attribution.deepprior import DeepPriorEG


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches() -> tuple[torch.Tensor, torch.Tensor]:
    return images(3, 40), images(2, 41)  # shards of different sizes


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x = _batches()[rank]
        explainer = DeepPriorEG(prior="mgm", n_samples=4)
        maps = explainer(small_cnn(0), x, 0)
        local = DeepPriorEG(prior="mgm", n_samples=4, sync_ranks=False)
        local(small_cnn(0), x, 0)
        torch.save(
            {"mean": explainer.density.mean, "cov": explainer.density.covariance, "maps": maps,
             "local_mean": local.density.mean},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_density_is_identical_on_every_rank(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    both = torch.cat(_batches())
    single = DeepPriorEG(prior="mgm", n_samples=4).fit(small_cnn(0), both)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in results:
        torch.testing.assert_close(result["mean"], single.density.mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(result["cov"], single.density.covariance, rtol=1e-12, atol=1e-12)
    # each rank's maps are those of its own batch under the shared density
    for rank, x in enumerate(_batches()):
        expected = DeepPriorEG(prior="mgm", n_samples=4)
        expected.fit(small_cnn(0), both)
        torch.testing.assert_close(results[rank]["maps"], expected(small_cnn(0), x, 0), rtol=1e-10, atol=1e-12)
    # without the gather, the ranks would disagree
    assert not torch.allclose(results[0]["local_mean"], results[1]["local_mean"])
