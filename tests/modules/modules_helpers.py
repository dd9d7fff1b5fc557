"""A tiny in-memory data module with ``(image, label, index)`` items, a tiny ``BaseModule`` subclass and a
quiet CPU trainer, shared by the module tests (not a conftest: sibling test folders have their own)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from impactx.modules import BaseModule, Batch, LossOutput, Stage


class IndexedTensors(Dataset):
    """Items ``(images[i] [C,H,W], int(labels[i]), int(indices[i]))``; ``indices`` default to ``0..N-1``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        self.images, self.labels = images, labels
        self.indices = torch.arange(len(images)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.images[i], int(self.labels[i]), int(self.indices[i])


class TinyData(L.LightningDataModule):
    """Random images ``[in_chans, image_size, image_size]`` whose label is a learnable function of the pixels.

    ``train`` holds items ``0..n_train-1``; ``val`` and ``test`` share the ``n_val`` items after them (their
    indices continue the numbering)."""

    def __init__(self, num_classes: int = 3, in_chans: int = 1, image_size: int = 4, n_train: int = 24,
                 n_val: int = 10, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.batch_size = batch_size
        generator = torch.Generator().manual_seed(seed)
        n = n_train + n_val
        images = torch.randn(n, in_chans, image_size, image_size, generator=generator)
        labels = images.flatten(1)[:, :num_classes].argmax(dim=1)
        self.train_set = IndexedTensors(images[:n_train], labels[:n_train])
        self.val_set = IndexedTensors(images[n_train:], labels[n_train:], torch.arange(n_train, n))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TinyModule(BaseModule):
    """features (flatten -> linear -> tanh) + linear head, cross-entropy; ``freeze_features`` builds the features
    frozen (``requires_grad=False``), as a stage-2 module builds its M. Logs the CE once more as term ``ce``."""

    def __init__(
        self,
        num_classes: int = 3,
        in_chans: int = 1,
        input_size: int = 4,
        freeze_features: bool = False,
        optimizer: str = "adam",
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str = "none",
        step_size: int = 10,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(num_classes, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         scheduler=scheduler, step_size=step_size, gamma=gamma)
        self.save_hyperparameters()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * input_size**2, 8), nn.Tanh())
        self.head = nn.Linear(8, num_classes)
        if freeze_features:
            self.features.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def compute_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        logits = self(batch[0])
        loss = F.cross_entropy(logits, batch[1])
        return LossOutput(loss, logits, {"ce": loss.detach()})


def make_trainer(tmp_path: Any, max_epochs: int = 1, **kwargs: Any) -> L.Trainer:
    """A quiet single-process CPU trainer without logger output, checkpoints or validation (unless asked)."""
    options: dict[str, Any] = dict(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    options.update(kwargs)
    return L.Trainer(**options)
