"""``ExplanationGallery``: a few fixed images with their maps and MoRF curves, as in the IMPACTX paper's figures."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from callbacks.base import ExplanationCallback, Stage
from callbacks.outputs import (
    find_wandb_logger,
    log_wandb_image,
    log_wandb_images,
    resolve_log_dir,
    save_png,
    write_csv,
)
from callbacks.plots import display_images, image_pixels, map_pixels, plot_gallery
from callbacks.subset import batches, padded_shard, split_dataset, subset_positions, unshard
from impactx.attribution.sources import build_sources
from impactx.attribution.specs import ExplainersConfig
from impactx.core import check_int, eval_mode
from impactx.metrics import MoRF
from impactx.metrics.functional import aopc, region_perturbation_curve

GALLERY_COLUMNS = ("stage", "epoch", "position", "label", "prediction", "probability", "source", "quantity", "x",
                   "value")
"""Columns of the gallery's CSV: per image and map source its MoRF AOPC (``quantity="morf_aopc"``, ``x`` empty) and
its MoRF curve points (``quantity="morf_curve"``); the numbers of the W&B images' captions."""


class ExplanationGallery(ExplanationCallback):
    """Draws ``num_images`` fixed images (seeded, as :class:`~callbacks.ExplanationEvaluation` picks its subset)
    one per row: the image titled with the predicted class and its probability (and the label), one map per
    source (the configured explainers as references, e.g. ``partition`` or ``ig``, and the module's own map
    when it is self-explaining), and the per-image MoRF curves of all maps in one plot.

    Each rank explains its share of the images; the results are ``all_gather``-ed and rank zero saves
    ``{filename}_{stage}_epoch{E:03d}.png`` and ``.csv`` (:data:`GALLERY_COLUMNS`: per image and source the MoRF
    AOPC and curve) in the run's log folder (atomically). With a ``WandbLogger`` attached it logs the figure
    (``{stage}_gallery``), each image and each map as a ``wandb.Image`` captioned with the image's position, the
    label, the predicted class and its probability, the map's source and its MoRF AOPC (``{stage}_gallery/maps``),
    and the CSV's rows as a table (``{stage}_gallery/table``). The figure of the last run is kept in
    :attr:`last_figure`, its paths in :attr:`last_file` (PNG) and :attr:`last_csv`.

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
        self.last_csv: Path | None = None

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
        gathered["positions"] = positions
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
        stem = log_dir / f"{self.filename}_{stage}_epoch{epoch:03d}"
        self.last_file = save_png(self.last_figure, stem.with_suffix(".png"))
        rows = self._rows(data, curves, x, stage, epoch, name)
        self.last_csv = write_csv(stem.with_suffix(".csv"), rows, GALLERY_COLUMNS)
        logger = find_wandb_logger(trainer) if self.log_wandb else None
        if logger is not None:
            self._log_wandb(logger, stage, trainer.global_step, title, images, maps, rows)

    def _log_wandb(self, logger: Any, stage: str, step: int, title: str, images: torch.Tensor,
                   maps: dict[str, torch.Tensor], rows: list[dict[str, Any]]) -> None:
        """The figure; each image (``[N,H,W,C]`` displayable) and each map (``{source: [N,H,W]}``) as a
        ``wandb.Image`` captioned with the CSV row's numbers; the CSV rows as a table."""
        log_wandb_image(logger, f"{stage}_gallery", self.last_file, step, title)
        pixels, captions = [], []
        aopcs = {(r["position"], r["source"]): r for r in rows if r["quantity"] == "morf_aopc"}
        positions = list(dict.fromkeys(position for position, _ in aopcs))
        for i, position in enumerate(positions):
            row = next(r for (p, _), r in aopcs.items() if p == position)
            about = f"image {position}: label {row['label']}, predicted {row['prediction']} ({row['probability']:.2f})"
            pixels.append(image_pixels(images[i]))
            captions.append(about)
            for source, source_maps in maps.items():
                pixels.append(map_pixels(source_maps[i]))
                captions.append(f"{source} map, {about}, MoRF AOPC {aopcs[(position, source)]['value']:.3f}")
        log_wandb_images(logger, f"{stage}_gallery/maps", pixels, captions, step)
        logger.log_table(key=f"{stage}_gallery/table", columns=list(GALLERY_COLUMNS),
                         data=[[None if r[c] == "" else r[c] for c in GALLERY_COLUMNS] for r in rows], step=step)

    @staticmethod
    def _rows(data: dict[str, torch.Tensor], curves: dict[str, torch.Tensor], x: torch.Tensor, stage: str,
              epoch: int, name: Any) -> list[dict[str, Any]]:
        """The CSV rows (:data:`GALLERY_COLUMNS`) of the drawn images: MoRF AOPC and curve per image and source."""
        rows = []
        for i, position in enumerate(data["positions"].tolist()):
            base = {"stage": stage, "epoch": epoch, "position": position, "label": name(int(data["labels"][i])),
                    "prediction": name(int(data["preds"][i])), "probability": float(data["probs"][i])}
            for source, source_curves in curves.items():
                curve = source_curves[i].detach().cpu().float()
                rows.append({**base, "source": source, "quantity": "morf_aopc", "x": "", "value": float(aopc(curve))})
                rows += [{**base, "source": source, "quantity": "morf_curve", "x": int(k), "value": float(v)}
                         for k, v in zip(x.tolist(), curve.tolist(), strict=True)]
        return rows
