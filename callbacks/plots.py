"""Figures of the explanation callbacks: mean metric curves per source, and the per-image gallery."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from callbacks.outputs import new_figure


@dataclass
class CurvePanel:
    """One metric's curves: ``series = {source: y [S]}`` over the shared ``x [S]``."""

    title: str
    x_label: str
    y_label: str
    x: torch.Tensor
    series: dict[str, torch.Tensor] = field(default_factory=dict)


def plot_curves(panels: Mapping[str, CurvePanel], title: str, columns: int = 3) -> Figure:
    """One subplot per metric (labelled axes, a legend naming the sources, a title), in a grid of ``columns``."""
    if not panels:
        raise ValueError("plot_curves needs at least one curve panel")
    n = len(panels)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    figure = new_figure(4.2 * cols, 3.4 * rows)
    figure.suptitle(title)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels.values(), strict=False):  # spare axes are removed below
        x = panel.x.detach().cpu().float().numpy()
        for source, y in panel.series.items():
            ax.plot(x, y.detach().cpu().float().numpy(), marker="o", markersize=2.5, label=source)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.x_label)
        ax.set_ylabel(panel.y_label)
        ax.grid(alpha=0.3)
        ax.legend(title="maps")
    for ax in axes[n:]:
        figure.delaxes(ax)
    return figure


def display_images(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """Normalised ``images [N,C,H,W]`` -> displayable ``[N,H,W,C]`` in ``[0, 1]``: un-normalised with
    ``mean``/``std`` when known, else min-max scaled per image."""
    images = images.detach().cpu().float()
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
        images = images * s + m
    else:
        flat = images.flatten(1)
        low = flat.min(dim=1).values.view(-1, 1, 1, 1)
        high = flat.max(dim=1).values.view(-1, 1, 1, 1)
        images = (images - low) / (high - low).clamp_min(1e-12)
    return images.clamp(0.0, 1.0).permute(0, 2, 3, 1)


def plot_gallery(
    images: torch.Tensor,
    titles: Sequence[str],
    maps: Mapping[str, torch.Tensor],
    curves: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    x_label: str = "regions replaced",
    y_label: str = "target score",
    title: str = "",
) -> Figure:
    """The IMPACTX paper's figure 3-5 layout: one row per image; columns: the image (titled with class and
    score), one map per source, and the MoRF curves of all sources in one plot.

    Args:
        images: ``[N,H,W,C]`` displayable in ``[0, 1]`` (see :func:`display_images`).
        titles: ``N`` image titles. maps: ``{source: [N,H,W]}``. curves: ``{source: [N,S]}`` at ``x [S]``.
    """
    n = images.shape[0]
    if len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")
    cols = 2 + len(maps)
    figure = new_figure(2.6 * cols, 2.5 * n)
    if title:
        figure.suptitle(title)
    axes = figure.subplots(n, cols, squeeze=False)
    xs = x.detach().cpu().float().numpy()
    for row in range(n):
        image = images[row].numpy()
        ax = axes[row, 0]
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(image)
        ax.set_title(titles[row], fontsize=9)
        ax.set_axis_off()
        for col, (source, source_maps) in enumerate(maps.items(), start=1):
            ax = axes[row, col]
            m = source_maps[row].detach().cpu().float()
            bound = float(m.abs().max().clamp_min(1e-12))
            # A diverging map centred on zero: red = evidence for the class, blue = against.
            ax.imshow(m.numpy(), cmap="bwr", vmin=-bound, vmax=bound)
            ax.set_title(f"{source} map", fontsize=9)
            ax.set_axis_off()
        ax = axes[row, -1]
        for source, source_curves in curves.items():
            ax.plot(xs, source_curves[row].detach().cpu().float().numpy(), label=source)
        ax.set_title("MoRF", fontsize=9)
        ax.set_xlabel(x_label, fontsize=8)
        ax.set_ylabel(y_label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return figure


def _upscaled(array: np.ndarray, min_size: int) -> np.ndarray:
    """``array [H,W,...]`` repeated (nearest neighbour) so its shorter side is at least ``min_size`` pixels."""
    factor = max(1, -(-min_size // min(array.shape[:2])))
    return array.repeat(factor, axis=0).repeat(factor, axis=1)


def image_pixels(image: torch.Tensor, min_size: int = 128) -> np.ndarray:
    """A displayable ``image [H,W,C]`` in ``[0, 1]`` (:func:`display_images`) as uint8 ``[H',W',3]``."""
    array = image.detach().cpu().float().clamp(0, 1).numpy()
    if array.shape[-1] == 1:
        array = array.repeat(3, axis=-1)
    return _upscaled((array[..., :3] * 255).round().astype(np.uint8), min_size)


def map_pixels(attribution: torch.Tensor, min_size: int = 128) -> np.ndarray:
    """A map ``[H,W]`` as uint8 RGB ``[H',W',3]`` in the gallery's colours: ``bwr`` centred on zero, bound at the
    map's largest magnitude (red: evidence for the class, blue: against)."""
    m = attribution.detach().cpu().float()
    bound = float(m.abs().max().clamp_min(1e-12))
    rgb = colormaps["bwr"](((m / bound + 1) / 2).clamp(0, 1).numpy())[..., :3]
    return _upscaled((rgb * 255).round().astype(np.uint8), min_size)
