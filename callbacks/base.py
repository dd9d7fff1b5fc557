"""Shared scheduling and checks of the explanation callbacks: when they run, and whether gradients can flow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.subset import split_dataset
from impactx.attribution.background import materialise_background
from impactx.attribution.sources import planned_sources
from impactx.attribution.specs import ExplainersConfig, parse_explainers
from impactx.core import check_int

Stage = Literal["test", "val"]


def check_gradients_possible(owner: str, stage: str, plan: Mapping[str, bool]) -> None:
    """Raise when a source in ``plan`` (``{name: needs gradients}``) needs gradients but the loop runs under
    ``torch.inference_mode()``, where ``torch.enable_grad()`` cannot bring them back."""
    needing = [name for name, needs in plan.items() if needs]
    if needing and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{owner}: the maps of {', '.join(repr(n) for n in needing)} need input gradients, but {stage} runs "
            "under torch.inference_mode() (Lightning's default Trainer(inference_mode=True)), where no gradient "
            "can be taken. Set Trainer(inference_mode=False) (CLI: --trainer.inference_mode=false), or evaluate "
            "only gradient-free maps (e.g. 'partition', or the module's own explain())."
        )


class ExplanationCallback(Callback):
    """Runs :meth:`run` at the end of testing (``on_test``) and every ``every_n_val_epochs`` validation epochs
    (0: never; sanity checks are skipped), after checking at ``on_test_start``/``on_validation_start``
    that the configured maps can be computed under the loop's grad mode.

    Args:
        explainers: registered explainer names and options (see :data:`impactx.attribution.specs.ExplainersConfig`).
        self_maps: evaluate a self-explaining module's own ``explain`` maps.
        seed: seeds the image subset, explainers that take a seed and the background set.
        target: explained class, ``"pred"`` (the model's prediction, as the IMPACTX paper) or ``"label"``.
        reduce_channels: sum maps over channels (``[B,1,H,W]``), so every source is compared per pixel.
        test_split, val_split: data-module splits used at test and at validation.
        background_split, background_size: where (and how many) background images come from for explainers
            that need one (eg, wg, deepprior_eg) and are not given one in their options.
    """

    def __init__(
        self,
        *,
        explainers: ExplainersConfig,
        self_maps: bool,
        seed: int,
        target: str,
        reduce_channels: bool,
        on_test: bool,
        every_n_val_epochs: int,
        test_split: str,
        val_split: str,
        background_split: str,
        background_size: int,
    ) -> None:
        super().__init__()
        if target not in ("pred", "label"):
            raise ValueError(f"target must be 'pred' or 'label', got {target!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.explainers = parse_explainers(explainers)
        self.self_maps = bool(self_maps)
        self.seed = seed
        self.target = target
        self.reduce_channels = bool(reduce_channels)
        self.on_test = bool(on_test)
        self.every_n_val_epochs = check_int("every_n_val_epochs", every_n_val_epochs, minimum=0)
        self.splits: dict[Stage, str] = {"test": test_split, "val": val_split}
        self.background_split = background_split
        self.background_size = check_int("background_size", background_size)

    # ------------------------------------------------------------------ to implement
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def background(self, trainer: L.Trainer, device: torch.device) -> torch.Tensor:
        """``background_size`` seeded images ``[N,C,H,W]`` of the data module's ``background_split``, on ``device``."""
        dataset = split_dataset(trainer, self.background_split)
        return materialise_background(dataset, self.background_size, self.background_split, self.seed).to(device)

    def explained_classes(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1) if self.target == "pred" else labels

    def _check(self, pl_module: L.LightningModule, stage: str) -> None:
        plan = planned_sources(pl_module, self.explainers, self.self_maps)
        check_gradients_possible(type(self).__name__, stage, plan)

    def _val_due(self, trainer: L.Trainer) -> bool:
        n = self.every_n_val_epochs
        return n > 0 and not trainer.sanity_checking and (trainer.current_epoch + 1) % n == 0

    # ------------------------------------------------------------------ Lightning hooks
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_test:
            self._check(pl_module, "testing")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Checked even in the sanity check, so a misconfigured run stops before its first epoch.
        if self.every_n_val_epochs:
            self._check(pl_module, "validation")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_test:
            self.run(trainer, pl_module, "test")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_due(trainer):
            self.run(trainer, pl_module, "val")
