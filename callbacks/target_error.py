"""``TargetMapError``: how well a self-explaining model reconstructs the target maps it was trained towards, on
images it was not trained on (IMPACTX: MSE of ``D(LEP(x))`` to ``R(A, x, y)`` on the test set)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from callbacks.base import ExplanationCallback, Stage
from callbacks.subset import batches, shard, split_dataset, subset_positions
from impactx.attribution.sources import MapSource
from impactx.attribution.specs import ExplainersConfig
from impactx.core import check_int, eval_mode
from impactx.maps.map_pass import load_weights
from impactx.maps.store import NORMALISATIONS, normalise_maps
from impactx.models.protocol import is_self_explaining, self_maps


class TargetMapError(ExplanationCallback):
    """At the end of testing: ``{stage}/map_mse``, the mean squared error between the module's own maps and
    the target maps of ``explainer`` for the true class on ``num_images`` seeded images of the split.

    The targets are computed as the map store's are (one channel, normalised by ``normalisation`` per map),
    from ``reference`` (stage-1 A of two-stage IMPACTX: a ``ClassifierModule`` checkpoint whose ``model.*``
    weights are loaded into a copy of the module's ``stage1_module()``), or from the module itself when
    ``reference_checkpoint`` is ``None`` (single-stage IMPACTX, whose targets come from the current model).
    Sharded over DDP ranks; every rank logs the same value.

    Args:
        explainer: one registered explainer and its options, e.g. ``{"partition": {"max_evals": 2000}}``.
        reference_checkpoint: the stage-1 checkpoint, or ``None`` (explain the module under test).
        num_images: size of the seeded subset (capped at the split's size).
        normalisation: as the data module's ``map_normalisation`` (default ``max_abs``).
        batch_size, seed, test_split: as for the other explanation callbacks.
    """

    def __init__(
        self,
        *,
        explainer: ExplainersConfig,
        reference_checkpoint: str | None = None,
        num_images: int = 512,
        normalisation: str = "max_abs",
        batch_size: int = 64,
        seed: int = 0,
        test_split: str = "test",
    ) -> None:
        super().__init__(
            explainers=explainer, self_maps=False, seed=seed, target="label", reduce_channels=True,
            on_test=True, every_n_val_epochs=0, test_split=test_split, val_split="val",
            background_split="train", background_size=64,
        )
        if len(self.explainers) != 1:
            raise ValueError(f"TargetMapError takes one explainer, got {sorted(self.explainers)}")
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        self.reference_checkpoint = None if reference_checkpoint is None else str(reference_checkpoint)
        self.num_images = check_int("num_images", num_images)
        self.batch_size = check_int("batch_size", batch_size)
        self.normalisation = normalisation
        self.value: float | None = None

    def _reference(self, pl_module: L.LightningModule) -> nn.Module:
        if self.reference_checkpoint is None:
            return pl_module
        build = getattr(pl_module, "stage1_module", None)
        if build is None:
            raise RuntimeError(f"{type(pl_module).__name__} has no stage1_module() to rebuild the reference from")
        reference = build()
        if not Path(self.reference_checkpoint).is_file():
            raise FileNotFoundError(f"reference checkpoint {self.reference_checkpoint} does not exist")
        load_weights(reference, self.reference_checkpoint)
        return reference.to(pl_module.device)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> None:
        if not is_self_explaining(pl_module):
            raise RuntimeError(f"TargetMapError needs a self-explaining module, got {type(pl_module).__name__}")
        dataset = split_dataset(trainer, self.splits[stage])
        positions = subset_positions(len(dataset), self.num_images, self.seed)
        reference = self._reference(pl_module)
        (name, spec), = self.explainers.items()
        background = self.background(trainer, pl_module.device) if spec.needs_background else None
        source = MapSource(name, spec.needs_gradients, spec.build(self.seed, background), reduce_channels=True)
        device = pl_module.device
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.float64, device=device)
        with eval_mode(pl_module):
            for images, labels, _ in batches(dataset, shard(positions, trainer.global_rank, trainer.world_size),
                                             self.batch_size, device):
                targets = normalise_maps(source(reference, images, labels), self.normalisation)  # type: ignore[arg-type]
                with torch.no_grad():
                    maps = self_maps(pl_module, images)
                total += (maps - targets.expand_as(maps)).double().pow(2).sum()
                count += maps.numel()
        total = trainer.strategy.reduce(total, reduce_op="sum")
        count = trainer.strategy.reduce(count, reduce_op="sum")
        self.value = float(total / count.clamp_min(1))
        pl_module.log(f"{stage}/map_mse", self.value, sync_dist=False)
