"""ExplanationGallery: one row per fixed image, image + one map per source + MoRF curves; PNG in the log folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from callbacks import ExplanationGallery, plot_gallery, subset_positions
from impactx.metrics.functional import morf_curve


def grid_shape(figure) -> tuple[int, int]:
    rows, cols, *_ = figure.axes[0].get_subplotspec().get_geometry()
    return rows, cols


def test_gallery_rows_columns_and_png(make_trainer, digits, self_explaining):
    callback = ExplanationGallery(explainers={"ig": {"n_steps": 4}}, num_images=3, morf={"n_steps": 6})
    trainer = make_trainer([callback])
    trainer.test(self_explaining, datamodule=digits, verbose=False)

    figure = callback.last_figure
    assert grid_shape(figure) == (3, 4)  # image, self map, ig map, MoRF
    assert len(figure.axes) == 3 * 4
    assert callback.last_file.parent == Path(trainer.log_dir)
    width, height = figure.get_size_inches() * figure.dpi
    with Image.open(callback.last_file) as image:
        assert image.size == (round(width), round(height))

    # Titles name the predicted class and its probability; the MoRF panel plots both sources' curves.
    positions = subset_positions(len(digits.dataset("test")), 3, seed=0)
    items = [digits.dataset("test")[int(i)] for i in positions]
    images = torch.stack([it[0] for it in items])
    with torch.no_grad():
        probs = self_explaining(images).softmax(dim=1)
        expected_curves = morf_curve(
            self_explaining, images, probs.argmax(dim=1), self_explaining.explain(images), patch_size=4, n_steps=6
        )
    for row in range(3):
        image_ax, self_ax, ig_ax, curve_ax = figure.axes[4 * row : 4 * row + 4]
        pred = int(probs[row].argmax())
        assert image_ax.get_title().startswith(f"{pred}: {float(probs[row].max()):.2f}")
        assert image_ax.get_title().endswith(f"(label {items[row][1]})")
        assert (self_ax.get_title(), ig_ax.get_title()) == ("self map", "ig map")
        assert [t.get_text() for t in curve_ax.get_legend().get_texts()] == ["self", "ig"]
        assert curve_ax.get_xlabel() and curve_ax.get_ylabel()
        self_line = curve_ax.get_lines()[0]
        torch.testing.assert_close(
            torch.as_tensor(self_line.get_ydata(), dtype=torch.float32), expected_curves[row], atol=1e-5, rtol=1e-5
        )


def test_plot_gallery_shape_checks():
    images = torch.rand(2, 8, 8, 1)
    figure = plot_gallery(images, ["a", "b"], {"m": torch.rand(2, 8, 8)}, {"m": torch.rand(2, 5)}, torch.arange(5))
    assert grid_shape(figure) == (2, 3)
    with pytest.raises(ValueError, match="2 images"):
        plot_gallery(images, ["a"], {}, {}, torch.arange(5))


def test_gallery_rejects_bad_morf_options():
    with pytest.raises(ValueError, match="patch_size"):
        ExplanationGallery(explainers=None, morf={"patch_size": 0})
