"""Under DDP (2 CPU processes, ddp_spawn, gloo) the callbacks log what one process logs, and the gallery's
all_gather puts the images back in order (its PNG matches the single-process one)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from callbacks import ExplanationEvaluation, ExplanationGallery


def _callbacks():
    # 9 images: shards of 5 and 4, so the ranks hold different counts.
    evaluation = ExplanationEvaluation(
        explainers={"ig": {"n_steps": 4}}, metrics={"morf": {"n_steps": 6}, "sparseness": {}}, num_images=9,
        batch_size=4,
    )
    gallery = ExplanationGallery(explainers={"ig": {"n_steps": 4}}, num_images=3, morf={"n_steps": 6})
    return [evaluation, gallery]


@pytest.mark.ddp
def test_ddp_logs_the_single_process_values(make_trainer, digits, lenet, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    single = make_trainer(_callbacks(), logger=CSVLogger(str(tmp_path / "single"), name="run"))
    single.test(lenet, datamodule=digits, verbose=False)
    ddp = make_trainer(
        _callbacks(), strategy="ddp_spawn", devices=2, logger=CSVLogger(str(tmp_path / "ddp"), name="run")
    )
    ddp.test(lenet, datamodule=digits, verbose=False)

    keys = ["test_eval/ig/morf_aopc", "test_eval/ig/sparseness"]
    for key in keys:
        assert float(ddp.callback_metrics[key]) == pytest.approx(float(single.callback_metrics[key]), abs=1e-6)

    def gallery_pixels(root) -> np.ndarray:
        (path,) = root.rglob("explanation_gallery_test_*.png")
        with Image.open(path) as image:
            return np.asarray(image)

    ddp_png, single_png = gallery_pixels(tmp_path / "ddp"), gallery_pixels(tmp_path / "single")
    assert ddp_png.shape == single_png.shape
    # Same images in the same rows: only float rounding of batch-size dependent curves may move a line
    # by a pixel shade; a wrong order would change whole panels.
    difference = np.abs(ddp_png.astype(int) - single_png.astype(int))
    assert difference.max() <= 3 and (difference > 0).mean() < 1e-3
