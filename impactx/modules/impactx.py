"""``ImpactxModule``: IMPACTX trained on Eq. 1, ``CE(y, C(m, z)) + lam * MSE(r, D(LEP(x)))`` (paper 3.3).

Two ways (``training``):

- ``"two_stage"`` (paper 4.3, and the default): this module is stage 2. A, the stage-1 classifier
  (:class:`~impactx.modules.ClassifierModule` of the same backbone), is read from ``stage1_checkpoint``; M is
  built from it frozen (no gradients, eval mode), LEP starts from A's feature extractor (``lep_init="stage1"``)
  or from the factory's (``"fresh"``), and LEP, D and C are trained. ``python train.py run`` runs stage 1, the
  map pass and stage 2 in one command (:mod:`runs`).
- ``"single_stage"``: M, LEP, D and C are trained together from the start; the map store is refreshed from the
  current model every few epochs (``callbacks.MapRefresh``, added by the runner).

Training batches carry the target map: ``(image [B,C,H,W], label [B], index [B], map [B,1,H,W])`` (the data
module's ``maps`` option joins the store, normalised as ``map_normalisation`` says). Validation and test batches
have no map; there the loss is the cross-entropy alone (logged ``{stage}/ce``), and the map error on the test
set is measured against maps computed for it (``callbacks.TargetMapError``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from impactx.core import check_int
from impactx.maps.map_pass import load_weights
from impactx.models import Backbone, create_backbone
from impactx.models.impactx_net import M_CUTS, ImpactxNet
from impactx.modules.base import BaseModule, Batch, LossOutput, Stage
from impactx.modules.classifier import ClassifierModule

__all__ = ["LEP_INITS", "TRAININGS", "ImpactxModule", "impactx_loss"]

TRAININGS = ("two_stage", "single_stage")
LEP_INITS = ("stage1", "fresh")


def impactx_loss(logits: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                 lam: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 1: ``(loss, ce, mse)`` with ``loss = CE(labels [B], logits [B,K]) + lam * MSE(targets, maps)``.

    ``maps`` and ``targets`` are ``[B,M,H,W]``; the MSE is the mean over every element. A target of one channel
    is compared with each channel of the maps.
    """
    if targets.shape[0] != maps.shape[0] or targets.shape[2:] != maps.shape[2:]:
        raise ValueError(f"target maps {list(targets.shape)} do not fit the decoder's maps {list(maps.shape)}")
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    mse = F.mse_loss(maps, targets.to(maps.dtype).expand_as(maps))
    return ce + lam * mse, ce, mse


class ImpactxModule(BaseModule):
    """IMPACTX (:class:`~impactx.models.impactx_net.ImpactxNet`) on Eq. 1; self-explaining (``explain``).

    Args:
        backbone, num_classes, in_chans, input_size, pretrained, pretrained_file: A's architecture, as for
            :class:`~impactx.modules.ClassifierModule` (``train.py`` links the data's shape).
        training: ``"two_stage"`` | ``"single_stage"`` (module docstring).
        lam: lambda of Eq. 1 (paper grid: 0.2 to 1.4).
        m_cut: M's output, ``"logits"`` (A without softmax, paper 3.1) or ``"features"``.
        lep_init: two-stage only: LEP from A's weights (``"stage1"``) or from the factory (``"fresh"``: random,
            or the pretrained weights when ``pretrained``). Single-stage LEP is always fresh.
        latent_dim, decoder_width, classifier_hidden: sizes of z, D and C.
        stage1_checkpoint: two-stage: the stage-1 ``ClassifierModule`` checkpoint M (and LEP) start from; needed to
            fit, not to load a finished model (``load_from_checkpoint(path, stage1_checkpoint=None)``).
        stage1_epochs, stage1_lr: the runner's stage 1: epochs (``None``: the trainer's ``max_epochs``) and learning
            rate (``None``: ``lr``).
        target_method, target_options, target_batch_size: the explainer R of the target maps (paper 4.2:
            Partition SHAP, 2000 evaluations), its options and its batch size in the map pass.
        refresh_every, refresh_warmup: single-stage: refresh the store every ``refresh_every`` epochs after
            ``refresh_warmup`` epochs.
        optimizer, lr, weight_decay, momentum, scheduler, step_size, gamma, label_smoothing: as for the classifier.
        compile, channels_last: the speed switches of :class:`~impactx.modules.base.BaseModule` (stage 1 gets them too).
    """

    map_source = "decoder"

    def __init__(
        self,
        backbone: str = "lenet5",
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: int = 32,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        training: str = "two_stage",
        lam: float = 1.0,
        m_cut: str = "logits",
        lep_init: str = "stage1",
        latent_dim: int = 512,
        decoder_width: int = 64,
        classifier_hidden: int = 256,
        stage1_checkpoint: str | None = None,
        stage1_epochs: int | None = None,
        stage1_lr: float | None = None,
        target_method: str = "partition",
        target_options: dict[str, Any] | None = None,
        target_batch_size: int = 64,
        refresh_every: int = 5,
        refresh_warmup: int = 5,
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
        if training not in TRAININGS:
            raise ValueError(f"training must be one of {TRAININGS}, got {training!r}")
        if lep_init not in LEP_INITS:
            raise ValueError(f"lep_init must be one of {LEP_INITS}, got {lep_init!r}")
        if m_cut not in M_CUTS:
            raise ValueError(f"m_cut must be one of {M_CUTS}, got {m_cut!r}")
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if stage1_epochs is not None:
            check_int("stage1_epochs", stage1_epochs)
        if stage1_lr is not None and not stage1_lr > 0:
            raise ValueError(f"stage1_lr must be > 0, got {stage1_lr}")
        check_int("target_batch_size", target_batch_size)
        check_int("refresh_every", refresh_every)
        check_int("refresh_warmup", refresh_warmup, minimum=0)
        self.save_hyperparameters()
        two_stage = training == "two_stage"
        classifier = self._new_backbone()
        if two_stage and stage1_checkpoint is not None:
            load_stage1(classifier, stage1_checkpoint)
        lep_features = None if two_stage and lep_init == "stage1" else self._new_backbone().features
        self.net = ImpactxNet(
            classifier, lep_features, m_cut=m_cut, latent_dim=latent_dim, decoder_width=decoder_width,
            classifier_hidden=classifier_hidden, freeze_extractor=two_stage,
        )

    def _new_backbone(self) -> Backbone:
        hp = self.hparams
        return create_backbone(hp.backbone, hp.num_classes, in_chans=hp.in_chans, input_size=hp.input_size,
                               pretrained=hp.pretrained, pretrained_file=hp.pretrained_file)

    def stage1_module(self) -> ClassifierModule:
        """The stage-1 classifier A of this configuration: same backbone and optimiser, ``stage1_lr``."""
        hp = self.hparams
        return ClassifierModule(
            backbone=hp.backbone, num_classes=hp.num_classes, in_chans=hp.in_chans, input_size=hp.input_size,
            pretrained=hp.pretrained, pretrained_file=hp.pretrained_file, optimizer=hp.optimizer,
            lr=hp.lr if hp.stage1_lr is None else hp.stage1_lr, weight_decay=hp.weight_decay, momentum=hp.momentum,
            scheduler=hp.scheduler, step_size=hp.step_size, gamma=hp.gamma, label_smoothing=hp.label_smoothing,
            compile=hp.get("compile", False), channels_last=hp.get("channels_last", False),
        )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.training == "two_stage" and self.hparams.stage1_checkpoint is None:
            raise ValueError(
                "two-stage IMPACTX trains stage 2 from a trained classifier A: set model.init_args.stage1_checkpoint, "
                "or run every step with `python train.py run --config ...`"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,C,H,W]`` -> logits ``[B,K]`` of C."""
        return self.net(x)

    def explain(self, images: torch.Tensor) -> torch.Tensor:
        """The decoder's maps ``D(LEP(images)) [B,1,H,W]`` (the self-explaining protocol)."""
        return self.net.explain(images)

    def compute_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        """Eq. 1 on batches with a target map (4th entry), the cross-entropy alone on batches without."""
        images, labels = batch[0], batch[1]
        smoothing = self.hparams.label_smoothing
        if len(batch) < 4:
            if stage == "train":
                raise ValueError(
                    "IMPACTX training batches must carry target maps (image, label, index, map): set the data "
                    "module's `maps` to a map store (the runner `python train.py run` does)"
                )
            logits = self(images)
            ce = F.cross_entropy(logits, labels, label_smoothing=smoothing)
            return LossOutput(ce, logits, {"ce": ce})
        out = self.net.forward_all(images)
        loss, ce, mse = impactx_loss(out.logits, labels, out.maps, batch[3], self.hparams.lam, smoothing)
        return LossOutput(loss, out.logits, {"ce": ce, "mse": mse})

    def extra_predictions(self, batch: Batch, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"map": self.explain(batch[0])}


def load_stage1(classifier: Backbone, checkpoint: str) -> None:
    """Load a stage-1 ``ClassifierModule`` checkpoint (``model.*`` weights) into ``classifier``; weights only."""
    holder = torch.nn.Module()
    holder.model = classifier
    try:
        load_weights(holder, checkpoint)
    except FileNotFoundError:
        raise ValueError(f"stage1_checkpoint {checkpoint} does not exist") from None
    except RuntimeError as err:
        raise ValueError(f"stage1_checkpoint {checkpoint} does not hold this backbone's classifier: {err}") from err
