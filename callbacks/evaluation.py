"""``ExplanationEvaluation``: explanation metrics of the model under test on a fixed, seeded image subset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from callbacks.base import ExplanationCallback, Stage
from callbacks.outputs import (
    find_wandb_logger,
    log_wandb_curves,
    log_wandb_image,
    resolve_log_dir,
    save_png,
    write_csv,
)
from callbacks.plots import CurvePanel, plot_curves
from callbacks.subset import batches, shard, split_dataset, subset_positions
from callbacks.suite import MetricResult, MetricSuite, check_metrics
from impactx.attribution.sources import build_sources
from impactx.attribution.specs import ExplainersConfig
from impactx.core import check_int, eval_mode

CSV_COLUMNS = ("stage", "epoch", "global_step", "source", "metric", "quantity", "x", "value")
"""Columns of the CSV file: one row per scalar (``x`` empty) and one per curve point (``quantity="curve"``)."""

Results = dict[str, dict[str, MetricResult]]


def log_key(stage: str, prefix: str, source: str, metric: str, scalar: str) -> str:
    """``"{stage}_{prefix}/{source}/{metric}[_{scalar}]"``, e.g. ``"test_eval/ig/morf_aopc"``."""
    return f"{stage}_{prefix}/{source}/{metric}" + (f"_{scalar}" if scalar else "")


def result_rows(results: Results, stage: str, epoch: int, global_step: int) -> list[dict[str, Any]]:
    """The CSV rows of ``results`` (see :data:`CSV_COLUMNS`)."""
    rows = []
    base = {"stage": stage, "epoch": epoch, "global_step": global_step}
    for source, by_metric in results.items():
        for metric, result in by_metric.items():
            for scalar, value in result.scalars.items():
                rows.append({**base, "source": source, "metric": metric, "quantity": scalar or "value", "x": "",
                             "value": float(value)})
            if result.curve is not None:
                for x, y in zip(result.x.tolist(), result.curve.tolist(), strict=True):
                    rows.append({**base, "source": source, "metric": metric, "quantity": "curve", "x": x, "value": y})
    return rows


def curve_panels(results: Results) -> dict[str, CurvePanel]:
    """``{metric: CurvePanel}`` with one series per source, for every metric that has a curve."""
    panels: dict[str, CurvePanel] = {}
    for source, by_metric in results.items():
        for metric, result in by_metric.items():
            if result.curve is None:
                continue
            info = result.info
            panel = panels.setdefault(
                metric, CurvePanel(info.title or metric, info.x_label, info.y_label, result.x.cpu())
            )
            panel.series[source] = result.curve.cpu()
    return panels


class ExplanationEvaluation(ExplanationCallback):
    """Evaluates the maps of the model under test on a fixed, seeded subset and logs the results.

    Sources: the module's own maps when it is self-explaining (see :mod:`callbacks`) and ``self_maps`` is
    set, plus every configured explainer. Metrics: ``metrics`` (names of :data:`callbacks.suite.METRICS`
    with options; default MoRF, LeRF, deletion, insertion, sparseness), torchmetrics updated per batch and
    synced across DDP ranks at compute.

    The subset: ``num_images`` positions of the split drawn by a generator seeded with ``seed`` (identical
    on every run), sharded across ranks (rank ``r`` takes every ``world_size``-th), evaluated in batches of
    ``batch_size`` on the module's device, with the module in eval mode.

    Outputs, at the end of testing (``on_test``) and every ``every_n_val_epochs`` validation epochs:

    - scalars through ``pl_module.log(..., sync_dist=True)`` as ``{stage}_{prefix}/{source}/{metric}_{summary}``
      (e.g. ``test_eval/ig/morf_aopc``, ``test_eval/self/sparseness``, ``test_eval/model/noise_accuracy_mean``);
    - on rank zero, in the run's log folder: ``{filename}_{stage}_epoch{E:03d}.csv`` (:data:`CSV_COLUMNS`)
      and ``.png`` (one panel per curve metric, a line per source), both written atomically;
    - with a ``WandbLogger`` attached: ``{stage}_{prefix}/curves``, a ``wandb.Table`` of the CSV's curve points;
      per curve metric ``{stage}_{prefix}/{metric}_curve``, a ``wandb.plot.line`` (one line per source) over a
      table of the same points; and the PNG (works offline).

    Gradient explainers need ``Trainer(inference_mode=False)``; an error at ``on_test_start`` /
    ``on_validation_start`` says so. The results of the last run stay in :attr:`results` (``{stage:
    {source: {metric: MetricResult}}}``), its global subset positions in :attr:`positions`, the figure in
    :attr:`last_figure`, the files in :attr:`last_files`.

    Args:
        explainers: ``{"ig": {"n_steps": 32}, "eg": {"n_samples": 32}}`` or ``["ig"]``: registered names + options.
        metrics: ``{"morf": {"patch_size": 4}, "deletion": {}}``, ``["morf", "lerf"]`` or ``None`` (defaults).
        num_images: size of the subset (capped at the split's size). batch_size: images per evaluation batch.
        prefix, filename: log-key prefix and file stem. log_wandb: log to an attached ``WandbLogger``.
        Others: see :class:`callbacks.base.ExplanationCallback`.
    """

    def __init__(
        self,
        *,
        explainers: ExplainersConfig = None,
        metrics: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None = None,
        self_maps: bool = True,
        num_images: int = 256,
        batch_size: int = 64,
        seed: int = 0,
        target: str = "pred",
        reduce_channels: bool = True,
        on_test: bool = True,
        every_n_val_epochs: int = 0,
        test_split: str = "test",
        val_split: str = "val",
        background_split: str = "train",
        background_size: int = 64,
        prefix: str = "eval",
        filename: str = "explanation_eval",
        log_wandb: bool = True,
    ) -> None:
        super().__init__(
            explainers=explainers, self_maps=self_maps, seed=seed, target=target, reduce_channels=reduce_channels,
            on_test=on_test, every_n_val_epochs=every_n_val_epochs, test_split=test_split, val_split=val_split,
            background_split=background_split, background_size=background_size,
        )
        self.metrics = check_metrics(metrics)
        self.num_images = check_int("num_images", num_images)
        self.batch_size = check_int("batch_size", batch_size)
        self.prefix = prefix
        self.filename = filename
        self.log_wandb = bool(log_wandb)
        self.results: dict[str, Results] = {}
        self.positions: dict[str, torch.Tensor] = {}
        self.last_figure = None
        self.last_files: dict[str, Path] = {}

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> Results:
        """Compute every metric of every source on this rank's shard of the subset; synced results."""
        dataset = split_dataset(trainer, self.splits[stage])
        positions = subset_positions(len(dataset), self.num_images, self.seed)
        self.positions[stage] = positions
        device = pl_module.device
        sources = build_sources(
            pl_module, self.explainers, self.self_maps, self.reduce_channels, self.seed,
            lambda: self.background(trainer, device),
        )
        if not sources and not any(name == "noise_accuracy" for name in self.metrics):
            raise RuntimeError(
                f"{type(self).__name__} has nothing to evaluate: {type(pl_module).__name__} has no explain() "
                "(or self_maps=False) and no explainers are configured"
            )
        suite = MetricSuite(self.metrics, sources, pl_module, device)
        mask_source = getattr(trainer.datamodule, "masks", None) if suite.needs_masks else None
        if suite.needs_masks and mask_source is None:
            raise ValueError(f"the localisation metrics need object masks, and {type(trainer.datamodule).__name__} "
                             "serves none (a data module with masks(split, index), e.g. digits_canvas)")
        with eval_mode(pl_module):
            for images, labels, index in batches(dataset, shard(positions, trainer.global_rank, trainer.world_size),
                                                 self.batch_size, device):
                with torch.no_grad():
                    targets = self.explained_classes(pl_module(images), labels)
                masks = None if mask_source is None else mask_source(self.splits[stage], index).to(device)
                suite.update(images, targets, labels, masks)
        return suite.compute()

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> None:
        results = self.evaluate(trainer, pl_module, stage)
        self.results[stage] = results
        for source, by_metric in results.items():
            for metric, result in by_metric.items():
                for scalar, value in result.scalars.items():
                    pl_module.log(log_key(stage, self.prefix, source, metric, scalar), value.float(), sync_dist=True)
        log_dir = resolve_log_dir(trainer)  # collective: every rank calls it
        if trainer.is_global_zero:
            self._write(trainer, results, stage, log_dir)

    def _write(self, trainer: L.Trainer, results: Results, stage: str, log_dir: Path) -> None:
        epoch, step = trainer.current_epoch, trainer.global_step
        stem = log_dir / f"{self.filename}_{stage}_epoch{epoch:03d}"
        rows = result_rows(results, stage, epoch, step)
        self.last_files = {"csv": write_csv(stem.with_suffix(".csv"), rows, CSV_COLUMNS)}
        panels = curve_panels(results)
        if not panels:
            return
        title = f"Explanation metrics, {stage} epoch {epoch} ({self._n_images(stage)} images)"
        self.last_figure = plot_curves(panels, title)
        self.last_files["png"] = save_png(self.last_figure, stem.with_suffix(".png"))
        logger = find_wandb_logger(trainer) if self.log_wandb else None
        if logger is not None:
            key = f"{stage}_{self.prefix}"
            curve_rows = [(r["source"], r["metric"], r["x"], r["value"]) for r in rows if r["quantity"] == "curve"]
            wandb_panels = {
                metric: {"title": p.title, "x_label": p.x_label, "y_label": p.y_label, "x": p.x.tolist(),
                         "series": {s: y.tolist() for s, y in p.series.items()}}
                for metric, p in panels.items()
            }
            log_wandb_curves(logger, key, ("source", "metric", "x", "value"), curve_rows, wandb_panels, step)
            log_wandb_image(logger, f"{key}/curves_figure", self.last_files["png"], step, title)

    def _n_images(self, stage: str) -> int:
        return int(self.positions[stage].shape[0])
