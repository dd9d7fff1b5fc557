"""Callbacks that crash a run once at a chosen point, so the tests can interrupt and resume a real run."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import Callback


class CrashInStage2(Callback):
    """Raises at the start of training epoch ``at_epoch`` of an ``ImpactxModule`` fit while ``IMPACTX_CRASH`` is set."""

    def __init__(self, at_epoch: int = 1) -> None:
        self.at_epoch = at_epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if os.environ.get("IMPACTX_CRASH") and type(pl_module).__name__ == "ImpactxModule" \
                and trainer.current_epoch == self.at_epoch:
            raise RuntimeError("crash requested by the test")


class CrashInMapPass(Callback):
    """Crashes the map pass of a run as ``IMPACTX_CRASH_MAPS`` asks: ``"setup"`` raises when the pass starts,
    before its store exists (a run killed between stage 1 and the map pass); a number ``k`` raises before
    predict batch ``k``, after ``k`` batches were written (a run killed during the pass). Unset: nothing."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "predict" and os.environ.get("IMPACTX_CRASH_MAPS") == "setup":
            raise RuntimeError("crash requested by the test before the map pass")

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        at = os.environ.get("IMPACTX_CRASH_MAPS", "")
        if at.isdigit() and batch_idx == int(at):
            raise RuntimeError(f"crash requested by the test at map batch {batch_idx}")
