"""Noise-robustness curves (DeepPrior-EG paper, 4.3.2 and Figure 6): test accuracy under Gaussian input noise.

- :class:`NoiseRobustness`: a callback that scores the whole test split with :class:`impactx.metrics.NoiseAccuracy`
  and writes ``noise_accuracy.csv`` (:data:`NOISE_COLUMNS`) and ``noise_accuracy.png`` into the run's log folder,
  optionally with other runs' curves drawn beside its own (``compare``).
- :func:`plot_noise_comparison`: the same figure from several runs' CSV files, without a trainer.
- ``python -m callbacks.noise_robustness OUT.png CSV_OR_DIR...``: prints the merged table as markdown and writes
  ``OUT.png`` and ``OUT.csv``.

Merging: every CSV row is one run's accuracy at one noise level; rows of the same label (from one file holding
several seeds or from several files) are averaged per level, with their min..max (or +-std) as a shaded band.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure

from callbacks.outputs import (
    find_wandb_logger,
    log_wandb_curves,
    log_wandb_image,
    new_figure,
    resolve_log_dir,
    save_png,
    write_csv,
)
from impactx.metrics import NoiseAccuracy
from impactx.metrics.functional.noise_accuracy import DEFAULT_NOISE_LEVELS
from impactx.metrics.functional.validation import check_noise_levels

NOISE_CSV = "noise_accuracy.csv"
NOISE_PNG = "noise_accuracy.png"
NOISE_COLUMNS = ("label", "noise_level", "accuracy")
"""Columns of a run's CSV: one row per noise level (and per run, when several seeds share a file)."""
MERGED_COLUMNS = ("label", "noise_level", "accuracy", "std", "min", "max", "runs")
"""Columns of a merged CSV: mean accuracy over the runs of a label, their sample std, min, max and count."""

Band = Literal["minmax", "std", "none"]
NoiseRow = tuple[str, float, float]
"""``(label, noise_level, accuracy)``: one CSV row."""

_LEVEL_DIGITS = 9  # levels read back as 0.30000000000000004 and 0.3 are one level
_DEFAULT_LOGGER_NAME = "lightning_logs"  # Lightning's name when none was given: says nothing about the model


# ---------------------------------------------------------------------------------------------- reading CSVs
def find_noise_csvs(paths: Iterable[Path | str]) -> list[Path]:
    """Each path as a list of CSV files: a file as given, a folder as every ``noise_accuracy.csv`` below it
    (sorted). Raises ``ValueError`` naming the path when it does not exist or a folder holds none."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            inside = sorted(path.rglob(NOISE_CSV))
            if not inside:
                raise ValueError(f"no {NOISE_CSV} found under the folder {str(path)!r}")
            found.extend(inside)
        else:
            raise ValueError(f"noise-accuracy CSV {str(path)!r} does not exist")
    return found


def read_noise_csv(path: Path | str) -> list[NoiseRow]:
    """The rows of a CSV with the :data:`NOISE_COLUMNS` (other columns are ignored). Raises ``ValueError``
    naming the path when it cannot be read, lacks a column, holds no row or a value is not a number."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns, raw = reader.fieldnames or [], list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read noise-accuracy CSV {str(path)!r}: {err}") from None
    missing = [c for c in NOISE_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"noise-accuracy CSV {str(path)!r} lacks the column(s) {missing}")
    if not raw:
        raise ValueError(f"noise-accuracy CSV {str(path)!r} holds no rows")
    rows = []
    for line, r in enumerate(raw, start=2):
        try:
            rows.append((r["label"], float(r["noise_level"]), float(r["accuracy"])))
        except (TypeError, ValueError):
            raise ValueError(
                f"noise-accuracy CSV {str(path)!r}, line {line}: noise_level and accuracy must be numbers, got "
                f"{r['noise_level']!r} and {r['accuracy']!r}"
            ) from None
    return rows


def read_noise_csvs(paths: Iterable[Path | str]) -> dict[Path, list[NoiseRow]]:
    """``{file: rows}`` for every file that :func:`find_noise_csvs` finds under ``paths``."""
    return {path: read_noise_csv(path) for path in find_noise_csvs(paths)}


# ---------------------------------------------------------------------------------------------- merging
@dataclass(frozen=True)
class NoiseCurve:
    """One label's accuracy over its noise levels ``[L]`` (sorted), merged over its ``runs [L]`` rows per level:
    ``mean``, sample ``std`` (0 for one run), ``low`` and ``high`` (min and max)."""

    label: str
    levels: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    runs: tuple[int, ...]


def merge_noise_rows(rows: Iterable[NoiseRow]) -> dict[str, NoiseCurve]:
    """``{label: NoiseCurve}`` (labels in first-seen order): each (label, level)'s accuracies averaged."""
    grouped: dict[str, dict[float, list[float]]] = {}
    for label, level, accuracy in rows:
        grouped.setdefault(label, {}).setdefault(round(level, _LEVEL_DIGITS), []).append(accuracy)
    curves = {}
    for label, by_level in grouped.items():
        levels = sorted(by_level)
        values = [by_level[level] for level in levels]
        curves[label] = NoiseCurve(
            label=label,
            levels=tuple(levels),
            mean=tuple(statistics.fmean(v) for v in values),
            std=tuple(statistics.stdev(v) if len(v) > 1 else 0.0 for v in values),
            low=tuple(min(v) for v in values),
            high=tuple(max(v) for v in values),
            runs=tuple(len(v) for v in values),
        )
    return curves


def merged_rows(curves: Mapping[str, NoiseCurve]) -> list[dict[str, Any]]:
    """The rows of a merged CSV (:data:`MERGED_COLUMNS`)."""
    return [
        {"label": c.label, "noise_level": level, "accuracy": mean, "std": std, "min": low, "max": high, "runs": n}
        for c in curves.values()
        for level, mean, std, low, high, n in zip(c.levels, c.mean, c.std, c.low, c.high, c.runs, strict=True)
    ]


def markdown_table(curves: Mapping[str, NoiseCurve], digits: int = 3) -> str:
    """One row per label, one column per noise level (mean accuracy), then the mean over levels and the runs."""
    levels = sorted({level for c in curves.values() for level in c.levels})
    header = ["label", *(f"{level:g}" for level in levels), "mean", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for c in curves.values():
        by_level = dict(zip(c.levels, c.mean, strict=True))
        cells = [f"{by_level[level]:.{digits}f}" if level in by_level else "" for level in levels]
        runs = f"{min(c.runs)}" if min(c.runs) == max(c.runs) else f"{min(c.runs)}-{max(c.runs)}"
        lines.append("| " + " | ".join([c.label, *cells, f"{statistics.fmean(c.mean):.{digits}f}", runs]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- drawing
def plot_noise_curves(
    curves: Mapping[str, NoiseCurve], title: str = "Accuracy under Gaussian noise", band: Band = "minmax"
) -> Figure:
    """One line per label (its legend entry is the label) of mean accuracy against noise std; where a level has
    several runs, a shaded band of their min..max (``band="minmax"``) or mean +- std (``"std"``)."""
    if not curves:
        raise ValueError("plot_noise_curves needs at least one curve")
    if band not in ("minmax", "std", "none"):
        raise ValueError(f"band must be 'minmax', 'std' or 'none', got {band!r}")
    figure = new_figure(5.6, 4.2)
    ax = figure.subplots()
    for c in curves.values():
        (line,) = ax.plot(c.levels, c.mean, marker="o", markersize=3, label=c.label)
        if band != "none" and max(c.runs) > 1:
            low, high = (c.low, c.high) if band == "minmax" else (
                [m - s for m, s in zip(c.mean, c.std, strict=True)], [m + s for m, s in zip(c.mean, c.std, strict=True)]
            )
            ax.fill_between(c.levels, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_title(title)
    ax.set_xlabel("noise std (input units)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(title="model")
    return figure


def merge_noise_csvs(csv_paths: Iterable[Path | str]) -> dict[str, NoiseCurve]:
    """``{label: NoiseCurve}`` over every row of the CSVs under ``csv_paths`` (see :func:`find_noise_csvs`)."""
    tables = read_noise_csvs(csv_paths)
    if not tables:
        raise ValueError("no noise-accuracy CSV path given")
    return merge_noise_rows(row for rows in tables.values() for row in rows)


def save_noise_comparison(
    curves: Mapping[str, NoiseCurve], output_png: Path | str, output_csv: Path | str | None = None,
    band: Band = "minmax",
) -> Figure:
    """Draw ``curves`` (:func:`plot_noise_curves`) into ``output_png`` and their table into ``output_csv``."""
    figure = plot_noise_curves(curves, band=band)
    save_png(figure, Path(output_png))
    if output_csv is not None:
        write_csv(Path(output_csv), merged_rows(curves), MERGED_COLUMNS)
    return figure


def plot_noise_comparison(
    csv_paths: Sequence[Path | str],
    output_png: Path | str,
    output_csv: Path | str | None = None,
    band: Band = "minmax",
) -> Figure:
    """Merge several runs' noise-accuracy CSVs (files, or folders searched for ``noise_accuracy.csv``) by label,
    averaging the runs of a label per level, and draw them in one figure (e.g. Base, EG, DeepMGM-EG,
    DeepBGMM-EG), saved as ``output_png``; the merged table (:data:`MERGED_COLUMNS`) goes to ``output_csv``
    when given. Both are written atomically. Raises ``ValueError`` naming a missing or unreadable path."""
    return save_noise_comparison(merge_noise_csvs(csv_paths), output_png, output_csv, band)


# ---------------------------------------------------------------------------------------------- the callback
class NoiseRobustness(Callback):
    """Test accuracy of the model under Gaussian input noise at each of ``noise_levels``, over the whole test split.

    Every test batch ``(images [B,C,H,W], labels [B], index [B], ...)`` (of every test dataloader) updates a
    :class:`~impactx.metrics.NoiseAccuracy` (noise keyed on each image and ``seed``, so any batching or DDP shard
    gives the same draws); at the end of testing the synced curve is logged as ``test/noise_acc_mean`` (mean over
    the levels) and, on rank zero, written to the run's log folder as ``noise_accuracy.csv`` (:data:`NOISE_COLUMNS`)
    and ``noise_accuracy.png``, both atomically; with a ``WandbLogger`` attached (and ``log_wandb``), also as a
    table, a line plot and the PNG. Forward passes only: works under ``Trainer(inference_mode=True)``.

    ``compare``: other runs' ``noise_accuracy.csv`` files, or folders searched for them; the PNG then shows one
    curve per label, this run's merged with compared rows of the same label (see :mod:`callbacks.noise_robustness`).
    They are read in ``setup("test")``, so a bad path fails before the test loop; this run's own output file is
    never one of them.

    Under DDP, Lightning's ``DistributedSampler`` repeats up to ``world_size - 1`` test images to even out the
    shards; they are counted twice, as by every synced test metric.

    The last curve stays in :attr:`curve` (``[L]`` at :attr:`noise_levels`), the drawn curves in :attr:`curves`,
    the figure in :attr:`last_figure`, the files in :attr:`last_files`.

    Args:
        noise_levels: noise std per level, in input units (default 0, 0.1, ..., 1.0).
        seed: seeds the noise. clamp: ``(low, high)`` range noisy images are clipped to, or ``None``.
        label: the curve's name in the CSV and figure; default the run name of an attached ``WandbLogger``, else
            the first logger's name (unless it is Lightning's default ``lightning_logs``), else the module class.
        compare: paths of other runs' CSVs (or folders) drawn beside this run's curve.
        band: spread drawn for labels with several runs: ``"minmax"``, ``"std"`` or ``"none"``.
        internal_batch_size: noisy images per forward pass. log_wandb: log to an attached ``WandbLogger``.
    """

    def __init__(
        self,
        noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
        seed: int = 0,
        clamp: tuple[float, float] | None = None,
        label: str | None = None,
        compare: Sequence[str] = (),
        band: Band = "minmax",
        internal_batch_size: int | None = 128,
        log_wandb: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if label is not None and (not isinstance(label, str) or not label):
            raise ValueError(f"label must be a non-empty string or None, got {label!r}")
        if isinstance(compare, (str, Path)):
            compare = [compare]
        if band not in ("minmax", "std", "none"):
            raise ValueError(f"band must be 'minmax', 'std' or 'none', got {band!r}")
        self.metric_options = dict(
            noise_levels=check_noise_levels(noise_levels), seed=seed, clamp=None if clamp is None else tuple(clamp),
            internal_batch_size=internal_batch_size,
        )
        NoiseAccuracy(**self.metric_options)  # checks the options now, not at test time
        self.noise_levels: tuple[float, ...] = self.metric_options["noise_levels"]
        self.label = label
        self.compare = [str(p) for p in compare]
        self.band: Band = band
        self.log_wandb = bool(log_wandb)
        self.compared: dict[Path, list[NoiseRow]] = {}
        self.curve: torch.Tensor | None = None
        self.curves: dict[str, NoiseCurve] = {}
        self.last_figure: Figure | None = None
        self.last_files: dict[str, Path] = {}
        self._metric: NoiseAccuracy | None = None

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "test":
            self.compared = read_noise_csvs(self.compare)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A fresh metric per test run, built inside the loop's grad mode so its states can be updated there.
        self._metric = NoiseAccuracy(**self.metric_options).to(pl_module.device)

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images, labels = batch[0], batch[1]
        self._metric.update(pl_module, images, labels)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        curve = self._metric.compute()["curve"]  # collective: synced over the DDP ranks
        self._metric = None
        if not bool(torch.isfinite(curve).all()):
            rank_zero_warn(f"{type(self).__name__}: no test images were scored; nothing is logged or written")
            return
        self.curve = curve.detach().cpu()
        # Already synced (equal on every rank); sync_dist keeps Lightning's epoch-level DDP check quiet.
        pl_module.log("test/noise_acc_mean", curve.mean(), sync_dist=True)
        log_dir = resolve_log_dir(trainer)  # collective: every rank calls it
        if trainer.is_global_zero:
            self._write(trainer, pl_module, log_dir)

    # ------------------------------------------------------------------ outputs
    def run_label(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """:attr:`label`, else the W&B run name, else the first logger's name, else the module class name.
        Call on rank zero (other ranks hold a dummy W&B run)."""
        if self.label:
            return self.label
        wandb_logger = find_wandb_logger(trainer)
        if wandb_logger is not None and getattr(wandb_logger.experiment, "name", None):
            return str(wandb_logger.experiment.name)
        name = trainer.logger.name if trainer.logger is not None else None
        if name and name != _DEFAULT_LOGGER_NAME:
            return str(name)
        return type(pl_module).__name__

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, log_dir: Path) -> None:
        label = self.run_label(trainer, pl_module)
        own = [(label, level, float(acc)) for level, acc in zip(self.noise_levels, self.curve.tolist(), strict=True)]
        csv_path = log_dir / NOISE_CSV
        self.last_files = {"csv": write_csv(csv_path, [dict(zip(NOISE_COLUMNS, r, strict=True)) for r in own],
                                            NOISE_COLUMNS)}
        others = [row for path, rows in self.compared.items() if path.resolve() != csv_path.resolve() for row in rows]
        self.curves = merge_noise_rows([*own, *others])
        self.last_figure = plot_noise_curves(self.curves, band=self.band)
        self.last_files["png"] = save_png(self.last_figure, log_dir / NOISE_PNG)
        logger = find_wandb_logger(trainer) if self.log_wandb else None
        if logger is not None:
            self._log_wandb(logger, trainer.global_step)

    def _log_wandb(self, logger: Any, step: int) -> None:
        """The merged table, one line plot of the curves that share this run's levels, and the PNG."""
        rows = [(r["label"], r["noise_level"], r["accuracy"]) for r in merged_rows(self.curves)]
        levels = tuple(round(level, _LEVEL_DIGITS) for level in self.noise_levels)
        series = {c.label: list(c.mean) for c in self.curves.values() if c.levels == levels}
        panel = {"title": "Accuracy under Gaussian noise", "x_label": "noise std", "y_label": "accuracy",
                 "series_label": "label", "x": list(levels), "series": series}
        log_wandb_curves(logger, "test_noise", NOISE_COLUMNS, rows, {"noise_accuracy": panel}, step)
        log_wandb_image(logger, "test_noise/figure", self.last_files["png"], step, "accuracy under Gaussian noise")


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``OUT.png CSV_OR_DIR...``: print the merged table as markdown, write ``OUT.png`` and ``OUT.csv``.
    Returns 0, or 2 (after one line on stderr) for bad arguments or paths."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m callbacks.noise_robustness OUT.png CSV_OR_DIR [CSV_OR_DIR ...]"
    if any(a in ("-h", "--help") for a in args):
        print(usage)
        return 0
    if len(args) < 2:
        print(usage, file=sys.stderr)
        return 2
    output_png = Path(args[0])
    if output_png.suffix.lower() != ".png":
        print(f"error: the output {args[0]!r} must end in .png", file=sys.stderr)
        return 2
    try:
        curves = merge_noise_csvs(args[1:])
        save_noise_comparison(curves, output_png, output_png.with_suffix(".csv"))
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(curves))
    return 0


if __name__ == "__main__":
    sys.exit(main())
