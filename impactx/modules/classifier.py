"""The standalone classifier A = Q(M) of the IMPACTX paper (the baseline, and stage 1 of two-stage training)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from impactx.models import Backbone, create_backbone
from impactx.modules.base import BaseModule, Batch, LossOutput, Stage

__all__ = ["ClassifierModule"]


class ClassifierModule(BaseModule):
    """Cross-entropy training of a backbone (features M + linear head Q).

    Batches are ``(image [B,C,H,W], label [B], index [B])``. Logs ``{train,val,test}/loss`` and
    ``{train,val,test}/acc`` (torchmetrics, synced across DDP ranks); ``predict`` gives
    ``{"probs": [B,K], "index": [B]}``. Checkpoints carry every constructor argument, so
    ``ClassifierModule.load_from_checkpoint(path)`` rebuilds the model.

    Args:
        backbone: a name for :func:`impactx.models.create_backbone` (``"lenet5"``, ``"resnet18_cifar"``,
            ``"mobilenetv2_100"``, ``"efficientnet_b2"``, ``"tv:resnet18"``, ...).
        num_classes, in_chans, input_size: the data's shape; ``train.py`` links them from the data module.
        pretrained, pretrained_file: see :func:`~impactx.models.create_backbone`.
        optimizer: ``"adam"`` | ``"adamw"`` | ``"sgd"``; lr, weight_decay, momentum: its settings.
        scheduler: ``"none"`` | ``"cosine"`` (over the trainer's ``max_epochs``) | ``"step"`` (step_size, gamma).
        label_smoothing: for the cross-entropy.
        compile, channels_last: the speed switches of :class:`~impactx.modules.base.BaseModule`.
    """

    def __init__(
        self,
        backbone: str = "lenet5",
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: int = 32,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        step_size: int = 10,
        gamma: float = 0.1,
        label_smoothing: float = 0.0,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(
            num_classes, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
            scheduler=scheduler, step_size=step_size, gamma=gamma, compile=compile, channels_last=channels_last,
        )
        self.save_hyperparameters()
        self.model: Backbone = create_backbone(
            backbone, num_classes, in_chans=in_chans, input_size=input_size,
            pretrained=pretrained, pretrained_file=pretrained_file,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,C,H,W]`` -> logits ``[B,num_classes]``."""
        return self.model(x)

    def compute_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        """Cross-entropy (with ``label_smoothing``) of the backbone's logits against the labels."""
        images, labels = batch[0], batch[1]
        logits = self(images)
        return LossOutput(F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing), logits)
