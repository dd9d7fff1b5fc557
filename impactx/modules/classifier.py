"""The standalone classifier A = Q(M) of the IMPACTX paper (the baseline, and stage 1 of two-stage training)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from impactx.models import Backbone, create_backbone
from impactx.modules.optim import build_optimizer, build_scheduler, check_optim_args

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # image [B,C,H,W], label [B], index [B]


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of a backbone (features M + linear head Q).

    Batches are ``(image [B,C,H,W], label [B], index [B])``. Logs ``{train,val,test}/loss`` and
    ``{train,val,test}/acc`` (torchmetrics, synced across DDP ranks). Checkpoints carry every
    constructor argument, so ``ClassifierModule.load_from_checkpoint(path)`` rebuilds the model.

    Args:
        backbone: a name for :func:`impactx.models.create_backbone` (``"lenet5"``, ``"resnet18_cifar"``,
            ``"mobilenetv2_100"``, ``"efficientnet_b2"``, ``"tv:resnet18"``, ...).
        num_classes, in_chans, input_size: the data's shape; ``train.py`` links them from the data module.
        pretrained, pretrained_file: see :func:`~impactx.models.create_backbone`.
        optimizer: ``"adam"`` | ``"adamw"`` | ``"sgd"``; lr, weight_decay, momentum: its settings.
        scheduler: ``"none"`` | ``"cosine"`` (over the trainer's ``max_epochs``) | ``"step"``.
        label_smoothing: for the cross-entropy.
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
    ) -> None:
        super().__init__()
        check_optim_args(optimizer, lr, scheduler)
        self.save_hyperparameters()
        self.model: Backbone = create_backbone(
            backbone, num_classes, in_chans=in_chans, input_size=input_size,
            pretrained=pretrained, pretrained_file=pretrained_file,
        )
        # Keys must not shadow nn.Module attributes ("train" is a method), hence the suffix.
        self.metrics = torch.nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes=num_classes, average="micro") for stage in ("train", "val", "test")}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,C,H,W]`` -> logits ``[B,num_classes]``."""
        return self.model(x)

    def setup(self, stage: str) -> None:
        check_datamodule_matches(self, getattr(self.trainer, "datamodule", None) if self._trainer else None)

    def _shared_step(self, batch: Batch, stage: str) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        metric = self.metrics[f"{stage}_acc"]
        metric(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=images.shape[0])
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Returns ``{"probs": [B,K], "index": [B]}`` so predictions join to items under any sampler."""
        return {"probs": self(batch[0]).softmax(dim=1), "index": batch[2]}

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = build_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.weight_decay, hp.momentum)
        max_epochs = self.trainer.max_epochs if self._trainer and self.trainer.max_epochs else 1
        scheduler = build_scheduler(optimizer, hp.scheduler, max_epochs, hp.step_size, hp.gamma)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def check_datamodule_matches(module: L.LightningModule, datamodule: Any) -> None:
    """Raise early when the data module's images or classes do not fit the module's model."""
    if datamodule is None:
        return
    hp = module.hparams
    for data_attr, model_attr in (("num_classes", "num_classes"), ("in_chans", "in_chans"), ("image_size", "input_size")):
        data_value = getattr(datamodule, data_attr, None)
        model_value = hp.get(model_attr)
        if data_value is not None and model_value is not None and data_value != model_value:
            raise ValueError(
                f"data module {type(datamodule).__name__} gives {data_attr}={data_value} but the model "
                f"({hp.get('backbone')}) was built for {model_attr}={model_value}"
            )
