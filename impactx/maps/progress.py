"""A rich progress bar for the map pass that shows images per second next to batches per second."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from rich.progress import ProgressColumn, Task
from rich.text import Text


class ImagesPerSecondColumn(ProgressColumn):
    """``speed * batch_size`` of the task: every map-pass step is one fixed batch of ``batch_size`` images."""

    def __init__(self, batch_size: int, style: str = "grey70") -> None:
        self.batch_size = batch_size
        self.style = style
        super().__init__()

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{(speed or 0.0) * self.batch_size:>.1f} img/s", style=self.style)


class MapPassProgressBar(RichProgressBar):
    """:class:`RichProgressBar` plus an images-per-second column (for ``python train.py maps``)."""

    def __init__(self, batch_size: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size

    def configure_columns(self, trainer: L.Trainer) -> list:
        return [*super().configure_columns(trainer), ImagesPerSecondColumn(self.batch_size)]
