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
    """Log the curve points as W&B tables and line plots: ``{key}/curves``, a ``wandb.Table`` of ``rows`` (the
    same points as the callback's CSV, columns ``columns``), and per curve metric ``{key}/{metric}_curve``, a
    ``wandb.plot.line`` over a table of ``(series, x, y)`` named by the panel's labels, one line per series.

    ``curves``: ``{metric: {"title", "x_label", "y_label", "series_label", "x" [S], "series": {name: y [S]}}}``
    (``y_label`` default ``"value"``, ``series_label`` default ``"source"``).
    """
    import wandb

    logger.log_table(key=f"{key}/curves", columns=list(columns), data=[list(r) for r in rows], step=step)
    plots = {}
    for metric, panel in curves.items():
        x_name = panel.get("x_label") or "x"
        y_name = panel.get("y_label") or "value"
        series_name = panel.get("series_label") or "source"
        data = [[name, float(x), float(y)] for name, ys in panel["series"].items()
                for x, y in zip(panel["x"], ys, strict=True)]
        table = wandb.Table(columns=[series_name, x_name, y_name], data=data)
        plots[f"{key}/{metric}_curve"] = wandb.plot.line(table, x_name, y_name, stroke=series_name,
                                                        title=panel["title"])
    if plots:
        logger.log_metrics(plots, step=step)


def log_wandb_image(logger: Any, key: str, path: Path, step: int, caption: str = "") -> None:
    """Log the PNG at ``path`` as a W&B image."""
    log_wandb_images(logger, key, [str(path)], [caption] if caption else None, step)


def log_wandb_images(logger: Any, key: str, images: Sequence[Any], captions: Sequence[str] | None, step: int) -> None:
    """Log ``images`` (paths or ``[H,W,3]`` / ``[H,W]`` uint8 arrays) under ``key`` as one list of ``wandb.Image``,
    each with its caption."""
    extra = {"caption": list(captions)} if captions else {}
    logger.log_image(key=key, images=list(images), step=step, **extra)
