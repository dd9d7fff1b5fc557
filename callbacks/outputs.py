"""Files and logger output of the explanation callbacks: log folder, atomic writes, CSV rows, W&B.

Figures are drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), so they work
headless and in worker processes.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def resolve_log_dir(trainer: Any) -> Path:
    """The run's log folder: ``trainer.log_dir`` (the first logger's), else ``trainer.default_root_dir``.

    Call on every rank: ``trainer.log_dir`` broadcasts from rank zero.
    """
    path = trainer.log_dir
    return Path(path if path else trainer.default_root_dir)


def _replace_atomically(path: Path, write: Any) -> Path:
    """Write through ``write(tmp_path)`` to a temporary name next to ``path``, then rename onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """``rows`` (dicts keyed by ``columns``) as a CSV file with a header, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return _replace_atomically(path, lambda tmp: tmp.write_text(buffer.getvalue()))


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (``figure.savefig`` works without pyplot)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path, dpi: int = 100) -> Path:
    """Save ``figure`` as PNG at ``path``, written atomically."""
    return _replace_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))


def find_wandb_logger(trainer: Any) -> Any | None:
    """The first Lightning ``WandbLogger`` attached to ``trainer`` (``impactx.loggers.WandbLogger`` is one)."""
    from lightning.pytorch.loggers import WandbLogger

    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def log_wandb_curves(
    logger: Any, key: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
    curves: Mapping[str, Mapping[str, Any]], step: int,
) -> None:
    """Log the curve rows as a ``wandb.Table`` (``logger.log_table``) and one ``wandb.plot.line_series`` per
    curve metric. ``curves``: ``{metric: {"title", "x_label", "x" [S], "series": {source: y [S]}}}``."""
    import wandb

    logger.log_table(key=f"{key}/curves", columns=list(columns), data=[list(r) for r in rows], step=step)
    plots = {}
    for metric, panel in curves.items():
        series = panel["series"]
        plots[f"{key}/{metric}_curve"] = wandb.plot.line_series(
            xs=[float(v) for v in panel["x"]],
            ys=[[float(v) for v in y] for y in series.values()],
            keys=list(series),
            title=panel["title"],
            xname=panel["x_label"],
        )
    if plots:
        logger.log_metrics(plots, step=step)


def log_wandb_image(logger: Any, key: str, path: Path, step: int, caption: str = "") -> None:
    """Log the PNG at ``path`` as a W&B image."""
    extra = {"caption": [caption]} if caption else {}
    logger.log_image(key=key, images=[str(path)], step=step, **extra)
