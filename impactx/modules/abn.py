"""The Attention Branch Network (Fukui et al., CVPR 2019) as a LightningModule, over any backbone of
:func:`impactx.models.create_backbone`.

The network is :class:`~impactx.models.abn.AttentionBranchNetwork`; what deliberately differs from the official
(ResNet-only) code is listed there: any backbone with discoverable stages, adaptive pooling everywhere (any
input size, not only 32x32 or 224x224), the copied next stage keeps its stride (the attention map is then
resized bilinearly to the attended feature map), and no per-call state on the network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from impactx.models.abn import AttentionBranchNetwork, check_attention_kernel
from impactx.models.factory import create_backbone
from impactx.modules.base import BaseModule, Batch, LossOutput, Stage

__all__ = ["AbnModule"]


class AbnModule(BaseModule):
    """ABN training: ``loss = attention_weight * CE(attention logits) + CE(perception logits)``.

    Batches are ``(image [B,C,H,W], label [B], index [B])``. Logs ``{stage}/loss``, ``{stage}/acc`` (of the
    perception logits) and the terms ``{stage}/ce_attention`` and ``{stage}/ce_perception``; ``predict``
    gives ``{"probs": [B,K], "index": [B], "map": [B,1,H,W]}`` (the attention map at the input resolution).
    Self-explaining: :meth:`explain` returns the attention maps. Checkpoints carry every constructor
    argument, so ``AbnModule.load_from_checkpoint(path)`` rebuilds the model.

    Args:
        backbone, num_classes, in_chans, input_size, pretrained, pretrained_file: as for
            :class:`~impactx.modules.classifier.ClassifierModule`.
        attention_stage: Python index of the attended spatial stage (any but the last; ``-2``: the
            second-to-last, as the official code); see :func:`impactx.models.stages.spatial_stages`.
        attention_kernel: odd kernel size of the attention map convolution (official: 3).
        attention_weight: weight (``>= 0``) of the attention branch's cross-entropy (official: 1).
        optimizer, lr, weight_decay, momentum, scheduler, step_size, gamma: as for ``ClassifierModule``.
        label_smoothing: in ``[0, 1)``, for both cross-entropies.
        compile, channels_last: the speed switches of :class:`~impactx.modules.base.BaseModule`.
    """

    explain_needs_grad = False
    map_source = "attention"

    def __init__(
        self,
        backbone: str = "lenet5",
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: int = 32,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        attention_stage: int = -2,
        attention_kernel: int = 3,
        attention_weight: float = 1.0,
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
        # Checked before the backbone is built (which may load weights).
        check_attention_kernel(attention_kernel)
        if isinstance(attention_stage, bool) or not isinstance(attention_stage, int):
            raise ValueError(f"attention_stage must be an int (Python index into the stages), got {attention_stage!r}")
        if not _is_number(attention_weight) or attention_weight < 0:
            raise ValueError(f"attention_weight must be a finite number >= 0, got {attention_weight!r}")
        if not _is_number(label_smoothing) or not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
        self.model = AttentionBranchNetwork(
            create_backbone(backbone, num_classes, in_chans=in_chans, input_size=input_size,
                            pretrained=pretrained, pretrained_file=pretrained_file),
            attention_stage=attention_stage, attention_kernel=attention_kernel,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,C,H,W]`` -> perception logits ``[B,num_classes]``."""
        return self.model(x)

    def explain(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B,C,H,W]`` -> attention maps ``[B,1,H,W]`` in ``[0,1]`` (see
        :meth:`AttentionBranchNetwork.explain`: eval mode, no gradients, BatchNorm statistics untouched)."""
        return self.model.explain(images)

    def compute_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        """``attention_weight * CE(attention logits) + CE(perception logits)`` (both with ``label_smoothing``);
        the perception logits ``[B,K]`` are scored for accuracy."""
        images, labels = batch[0], batch[1]
        out = self.model.forward_branches(images)
        smoothing = self.hparams.label_smoothing
        ce_attention = F.cross_entropy(out.attention_logits, labels, label_smoothing=smoothing)
        ce_perception = F.cross_entropy(out.perception_logits, labels, label_smoothing=smoothing)
        loss = self.hparams.attention_weight * ce_attention + ce_perception
        return LossOutput(loss, out.perception_logits,
                          {"ce_attention": ce_attention.detach(), "ce_perception": ce_perception.detach()})

    def extra_predictions(self, batch: Batch, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"map": attention maps [B,1,H,W]}`` of the batch's images (a second, eval-mode forward)."""
        return {"map": self.explain(batch[0])}


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
