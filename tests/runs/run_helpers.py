"""A callback that crashes stage 2 of a run once, so the tests can interrupt and resume a real run."""

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
