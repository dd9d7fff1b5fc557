"""AttributionPriorModule under DDP (2 CPU processes, gloo): the first step's update equals one process's on the
same global batch, and the DeepPrior density is the same on both ranks (and as fitted by one process)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from impactx.data import DigitsDataModule
from impactx.modules import AttributionPriorModule


class RecordDensity(Callback):
    """Writes each rank's fitted density (as lists) to ``folder/rank<r>.json`` at train start."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_start(self, trainer: L.Trainer, pl_module: AttributionPriorModule) -> None:
        state = pl_module.density_record["state"]
        values = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        with open(f"{self.folder}/rank{trainer.global_rank}.json", "w") as handle:
            json.dump(values, handle)


def _fit_one_step(tmp_path, devices: int, references: str) -> tuple[AttributionPriorModule, list[dict]]:
    folder = tmp_path / f"{references}{devices}"
    folder.mkdir()
    torch.manual_seed(0)
    module = AttributionPriorModule("lenet5", num_classes=10, in_chans=1, input_size=32, references=references,
                                    lam=1.0, deepprior_components=3, optimizer="sgd", momentum=0.0, lr=0.1, scheduler="none",
                                    deepprior_fit_images=64, reference_pool=256)
    # 1278 training images (val_fraction 0.11): one batch of 1278, or 639 per rank
    data = DigitsDataModule(batch_size=1278 // devices, val_fraction=0.11, augment=False, seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordDensity(str(folder))])
    trainer.fit(module, datamodule=data)
    densities = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(devices)]
    return module, densities


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("references", ["mgm", "bgmm"])
def test_two_ranks_take_the_step_of_one_process(tmp_path, references) -> None:
    torch.manual_seed(0)
    start = AttributionPriorModule("lenet5", num_classes=10, in_chans=1, input_size=32).model.state_dict()
    one, one_density = _fit_one_step(tmp_path, 1, references)
    two, two_density = _fit_one_step(tmp_path, 2, references)
    assert two_density[0] == two_density[1]  # identical on both ranks (rank 0 fits, broadcast)
    assert two_density[0] == one_density[0]  # and what one process fits
    stored = two.density_record  # ddp_spawn handed the density back with the weights
    assert stored is not None and stored["state"]["kind"] == references
    moved = 0
    for key, value in start.items():
        step_one, step_two = one.model.state_dict()[key] - value, two.model.state_dict()[key] - value
        torch.testing.assert_close(step_two, step_one, rtol=1e-4, atol=1e-6, msg=key)
        moved += int(step_one.abs().sum() > 0)
    assert moved > 0
