"""``CanvasDigitsDataModule``: the embedded digits pasted at random places on a textured canvas, with the object
mask of each image, so localisation metrics (pointing game, relevance mass, ...) run with nothing downloaded.

Each item of the digits data (:func:`~impactx.data.digits.load_digits_tensors`, 8x8 scaled to ``digit_size``)
is pasted, by maximum, at a position drawn from its index onto a ``canvas_size`` canvas of smooth random texture
(uniform noise blurred and scaled to ``[0, texture]``), also drawn from its index: the same item always gets the
same canvas. The object mask is where the pasted digit's ink exceeds ``ink_threshold`` (``mask="ink"``) or the
pasted square (``mask="box"``). Items stay ``(image [1,H,W], label, index)``, the contract of every data module;
the masks are served beside them by index: :meth:`CanvasDigitsDataModule.masks` ``(split, index [B]) ->
[B,1,H,W]``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from impactx.core import gaussian_blur
from impactx.data.base import ImageDataModule, check_fraction
from impactx.data.digits import load_digits_tensors

__all__ = ["CanvasDigitsDataModule", "make_canvas"]

MASKS = ("ink", "box")


def make_canvas(digits: torch.Tensor, seeds: torch.Tensor, canvas_size: int, texture: float,
                ink_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``digits [N,1,s,s]`` in ``[0,1]`` pasted on textured canvases: ``(images [N,1,S,S] in [0,1], ink masks,
    box masks)`` (both ``[N,1,S,S]`` bool), one canvas per ``seeds [N]`` (the same seed, the same canvas)."""
    n, size = digits.shape[0], digits.shape[-1]
    images = torch.empty(n, 1, canvas_size, canvas_size)
    ink = torch.zeros(n, 1, canvas_size, canvas_size, dtype=torch.bool)
    box = torch.zeros_like(ink)
    for i in range(n):
        generator = torch.Generator().manual_seed(int(seeds[i]))
        noise = torch.rand(1, 1, canvas_size, canvas_size, generator=generator)
        background = gaussian_blur(noise, sigma=1.5)
        background = (background - background.min()) / (background.max() - background.min() + 1e-12) * texture
        top, left = (int(v) for v in torch.randint(0, canvas_size - size + 1, (2,), generator=generator))
        patch = background[0, :, top:top + size, left:left + size]
        background[0, :, top:top + size, left:left + size] = torch.maximum(patch, digits[i])
        images[i] = background[0]
        ink[i, :, top:top + size, left:left + size] = digits[i] > ink_threshold
        box[i, :, top:top + size, left:left + size] = True
    return images, ink, box


class CanvasDigitsDataModule(ImageDataModule):
    """Digits on a textured canvas with object masks (module docstring). 1 x ``canvas_size`` x ``canvas_size``.

    Args:
        canvas_size: the image side (default 32, the digits' own).
        digit_size: the pasted digit's side (default 16).
        texture: the canvas texture's brightness range ``[0, texture]`` (the digits' ink reaches 1).
        mask: ``"ink"`` (the digit's strokes, ``> ink_threshold``) or ``"box"`` (the pasted square).
        ink_threshold: see ``mask``.
        test_fraction, seed and the other args: as :class:`~impactx.data.DigitsDataModule`.
    """

    name = "digits_canvas"
    num_classes = 10
    in_chans = 1
    class_names = [str(i) for i in range(10)]

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = False,
        download: bool = False,
        test_fraction: float = 0.2,
        canvas_size: int = 32,
        digit_size: int = 16,
        texture: float = 0.5,
        mask: Literal["ink", "box"] = "ink",
        ink_threshold: float = 0.25,
        predict_split: str = "test",
        maps: str | None = None,
        map_normalisation: str = "max_abs",
    ) -> None:
        if augment:
            raise ValueError("CanvasDigitsDataModule has no augmentation (it would move the objects off their "
                             "masks); the canvas positions already vary")
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        if not 4 <= digit_size <= canvas_size:
            raise ValueError(f"digit_size must be in [4, canvas_size={canvas_size}], got {digit_size}")
        if not 0 <= texture <= 1 or not 0 <= ink_threshold < 1:
            raise ValueError(f"texture must be in [0, 1] and ink_threshold in [0, 1), got {texture}, {ink_threshold}")
        self.image_size = int(canvas_size)
        self.digit_size = int(digit_size)
        self.texture = float(texture)
        self.mask = mask
        self.ink_threshold = float(ink_threshold)
        self.test_fraction = check_fraction("test_fraction", test_fraction, allow_zero=False)
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, val_fraction=val_fraction,
                         seed=seed, augment=False, download=download, predict_split=predict_split, maps=maps,
                         map_normalisation=map_normalisation)
        self._canvas: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # The canvas' mean and std depend on the texture; fixed values from the default settings keep the
    # normalisation a constant of the data module (what a map store's key and an export record).
    mean = (0.2914,)  # all 1,797 canvases at the defaults (checked in tests/data/test_canvas.py)
    std = (0.1525,)

    def preprocessing(self) -> str:
        return (f"{super().preprocessing()}; digits {self.digit_size}px on a {self.image_size}px canvas, texture "
                f"{self.texture}, seeds from the split and position, test_fraction={self.test_fraction}, "
                f"seed={self.seed}")

    def _canvas_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images in [0,1], labels, ink masks, box masks)`` of the full ``"train"``/``"test"`` split."""
        from sklearn.model_selection import train_test_split

        if split not in self._canvas:
            images, labels = load_digits_tensors()
            positions = np.arange(len(labels))
            train_pos, test_pos = train_test_split(positions, test_size=self.test_fraction,
                                                   stratify=labels.numpy(), random_state=self.seed)
            for name, pos in (("train", np.sort(train_pos)), ("test", np.sort(test_pos))):
                index = torch.as_tensor(pos)
                small = F.interpolate(images[index], size=(self.digit_size, self.digit_size), mode="bilinear",
                                      align_corners=False, antialias=True).clamp(0, 1)
                offset = 0 if name == "train" else 1_000_003
                seeds = (torch.arange(len(index)) + offset) * 7919 + self.seed
                canvas, ink, box = make_canvas(small, seeds, self.image_size, self.texture, self.ink_threshold)
                self._canvas[name] = (canvas, labels[index], ink, box)
        return self._canvas[split]

    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        canvas, labels, _, _ = self._canvas_split(split)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return TensorDataset((canvas - mean) / std, labels), labels.numpy()

    def masks(self, split: str, index: torch.Tensor) -> torch.Tensor:
        """Object masks ``[B,1,H,W]`` (bool) of the items ``index [B]`` of ``split`` (``"val"`` items are
        positions in the full train split, as their ``index`` says)."""
        full = "test" if split == "test" else "train"
        _, _, ink, box = self._canvas_split(full)
        return (ink if self.mask == "ink" else box)[torch.as_tensor(index, dtype=torch.long).cpu()]
