"""``ExplanationGallery``: a few fixed images with their maps and MoRF curves, as in the IMPACTX paper's figures."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from callbacks.base import ExplanationCallback, Stage
from callbacks.outputs import find_wandb_logger, log_wandb_image, resolve_log_dir, save_png
from callbacks.plots import display_images, plot_gallery
from callbacks.subset import batches, padded_shard, split_dataset, subset_positions, unshard
from impactx.attribution.sources import build_sources
from impactx.attribution.specs import ExplainersConfig
from impactx.core import check_int, eval_mode
from impactx.metrics import MoRF
from impactx.metrics.functional import region_perturbation_curve


class ExplanationGallery(ExplanationCallback):
    """Draws ``num_images`` fixed images (seeded, as :class:`~callbacks.ExplanationEvaluation` picks its subset)
    one per row: the image titled with the predicted class and its probability (and the label), one map per
    source (the configured explainers as references, e.g. ``partition`` or ``ig``, and the module's own map
    when it is self-explaining), and the per-image MoRF curves of all maps in one plot.

    Each rank explains its share of the images; the results are ``all_gather``-ed and rank zero saves
    ``{filename}_{stage}_epoch{E:03d}.png`` in the run's log folder (atomically) and logs it to an attached
    ``WandbLogger``. The figure of the last run is kept in :attr:`last_figure`, its path in :attr:`last_file`.

    Args:
        explainers: reference explainers, ``{"partition": {"max_evals": 500}}``, ``["ig"]`` or ``"ig"``.
        num_images: rows of the figure.
        morf: options of the MoRF curves (as :class:`impactx.metrics.MoRF`: ``patch_size``, ``n_steps``,
            ``perturbation``, ...).
        filename: file stem. log_wandb: log the PNG to an attached ``WandbLogger``.
        Others: see :class:`callbacks.base.ExplanationCallback`.
    """

    def __init__(
        self,
        *,
        explainers: ExplainersConfig = "ig",
        self_maps: bool = True,
        num_images: int = 4,
        seed: int = 0,
        target: str = "pred",
        morf: Mapping[str, Any] | None = None,
        reduce_channels: bool = True,
        on_test: bool = True,
        every_n_val_epochs: int = 0,
        test_split: str = "test",
        val_split: str = "val",
        background_split: str = "train",
        background_size: int = 64,
        filename: str = "explanation_gallery",
        log_wandb: bool = True,
    ) -> None:
        super().__init__(
            explainers=explainers, self_maps=self_maps, seed=seed, target=target, reduce_channels=reduce_channels,
            on_test=on_test, every_n_val_epochs=every_n_val_epochs, test_split=test_split, val_split=val_split,
            background_split=background_split, background_size=background_size,
        )
        self.num_images = check_int("num_images", num_images)
        self.morf_options = MoRF(**dict(morf or {})).options  # validates the options now
        self.filename = filename
        self.log_wandb = bool(log_wandb)
        self.last_figure = None
        self.last_file: Path | None = None

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> None:
        dataset = split_dataset(trainer, self.splits[stage])
        positions = subset_positions(len(dataset), self.num_images, self.seed)
        n, world = positions.shape[0], trainer.world_size
        device = pl_module.device
        sources = build_sources(
            pl_module, self.explainers, self.self_maps, self.reduce_channels, self.seed,
            lambda: self.background(trainer, device),
        )
        if not sources:
            raise RuntimeError(
                f"{type(self).__name__} has no maps to draw: {type(pl_module).__name__} has no explain() "
                "(or self_maps=False) and no explainers are configured"
            )
        mine = padded_shard(positions, trainer.global_rank, world)
        images, labels, _ = next(batches(dataset, mine, mine.shape[0], device))
        with eval_mode(pl_module):
            with torch.no_grad():
                probs = pl_module(images).softmax(dim=1)
            targets = self.explained_classes(probs, labels)
            maps = {s.name: s(pl_module, images, targets) for s in sources}
            curves = {
                name: region_perturbation_curve(pl_module, images, targets, m, **self.morf_options)
                for name, m in maps.items()
            }
        local = {
            "images": images, "labels": labels, "preds": probs.argmax(dim=1), "probs": probs.max(dim=1).values,
            **{f"map/{k}": v.sum(dim=1) for k, v in maps.items()}, **{f"curve/{k}": v for k, v in curves.items()},
        }
        gathered = {k: v if world == 1 else unshard(pl_module.all_gather(v), n) for k, v in local.items()}
        log_dir = resolve_log_dir(trainer)  # collective: every rank calls it
        if trainer.is_global_zero:
            self._draw(trainer, gathered, stage, log_dir)

    def _draw(self, trainer: L.Trainer, data: dict[str, torch.Tensor], stage: str, log_dir: Path) -> None:
        datamodule = trainer.datamodule
        names = getattr(datamodule, "class_names", None)

        def name(k: int) -> str:
            return names[k] if names is not None and 0 <= k < len(names) else str(k)

        titles = [
            f"{name(p)}: {s:.2f}\n(label {name(y)})"
            for p, s, y in zip(data["preds"].tolist(), data["probs"].tolist(), data["labels"].tolist(), strict=True)
        ]
        images = display_images(data["images"], getattr(datamodule, "mean", None), getattr(datamodule, "std", None))
        maps = {k.removeprefix("map/"): v for k, v in data.items() if k.startswith("map/")}
        curves = {k.removeprefix("curve/"): v for k, v in data.items() if k.startswith("curve/")}
        x = torch.arange(self.morf_options["n_steps"] + 1)
        epoch = trainer.current_epoch
        title = f"Explanations, {stage} epoch {epoch}"
        self.last_figure = plot_gallery(images, titles, maps, curves, x, title=title)
        self.last_file = save_png(self.last_figure, log_dir / f"{self.filename}_{stage}_epoch{epoch:03d}.png")
        logger = find_wandb_logger(trainer) if self.log_wandb else None
        if logger is not None:
            log_wandb_image(logger, f"{stage}_gallery", self.last_file, trainer.global_step, title)
