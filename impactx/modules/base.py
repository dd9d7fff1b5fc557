"""``BaseModule``: what every impactx LightningModule shares.

A subclass builds its networks, implements ``forward`` (images ``[B,C,H,W]`` -> logits ``[B,K]``) and
:meth:`BaseModule.compute_loss`, and calls ``self.save_hyperparameters()`` after ``super().__init__(...)``
so its checkpoints rebuild it. The base gives it, from flat hyperparameters only:

- the optimiser and schedule (:class:`~impactx.modules.optim.OptimizerSettings`) over
  :meth:`BaseModule.trainable_parameters` (by default the parameters with ``requires_grad``);
- per-stage accuracy (``self.metrics["{stage}_acc"]``) and the logging of ``{stage}/loss``, ``{stage}/acc``
  and any extra loss terms as ``{stage}/{name}``;
- the check, in ``setup``, that the data module's classes, channels and image size fit the model;
- a ``predict_step`` that returns the batch's item indices next to the probabilities, so predictions join
  to items under any sampler or DDP shard;
- self-describing checkpoints: ``checkpoint["impactx"]`` holds the module's class, the data's normalisation,
  class names and shape, and the explainer an export carries (:mod:`impactx.modules.metadata`), so
  ``python train.py export`` needs nothing but the checkpoint;
- the speed switches ``compile`` (``torch.compile`` of the forward, refused where the loss needs double
  backward) and ``channels_last`` (weights and image batches in NHWC), applied in ``configure_model``, and
  :func:`resolve_precision`, the trainer precision a run gets when its config leaves it unset
  (``docs/performance.md`` has their measured effect).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from impactx.core import check_int
from impactx.modules.metadata import METADATA_KEY, checkpoint_metadata
from impactx.modules.optim import OptimizerSettings

__all__ = ["Batch", "BaseModule", "DATA_LINKS", "LossOutput", "STAGES", "Stage", "resolve_precision"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(image [B,C,H,W] float, label [B] long, index [B] long)``; index = the item's position in its full split.
Modules that take more (e.g. a joined target map) receive those as further tuple entries after these three."""

Stage = Literal["train", "val", "test"]
STAGES: tuple[Stage, ...] = ("train", "val", "test")

# (data-module attribute, module hyperparameter): the same pairs train.py links from data to model.
DATA_LINKS: tuple[tuple[str, str], ...] = (("num_classes", "num_classes"), ("in_chans", "in_chans"),
                                           ("image_size", "input_size"))

_RESERVED_PREDICTIONS = ("probs", "index")


def resolve_precision(precision: str | int | None, accelerator: Any = "auto", stage: str = "fit",
                      double_backward: bool = False) -> str | int:
    """The trainer precision of a run: ``precision`` itself when set, else ``"bf16-mixed"`` where the run lands on
    a CUDA device that supports bfloat16 and ``"32-true"`` elsewhere (CPU, MPS, older GPUs). Two exceptions stay
    ``"32-true"`` unless configured, from measurements (``python -m bench.maps``, ``python -m bench.training``,
    ``docs/performance.md``): the map pass (``stage="maps"``: Partition SHAP's values are differences of model
    outputs that bf16 rounds away) and modules whose loss differentiates through ``autograd.grad``
    (``double_backward``: bf16 turned the attribution prior's ResNet-18 gradient by a cosine of 0.79).

    bf16 rather than fp16 because several losses here contain ``autograd.grad`` terms (the attribution prior):
    ``16-mixed``'s loss scaler does not scale an inner gradient, bf16 needs no scaler (``docs/performance.md``).

    Args:
        precision: the configured ``trainer.precision`` (``None``: unset).
        accelerator: the configured ``trainer.accelerator`` (``"auto"``, ``"gpu"``, ``"cuda"``, ``"cpu"``, ...,
            or an ``Accelerator`` instance); only ``"auto"``, ``"gpu"`` and ``"cuda"`` can land on CUDA.
        stage: what the trainer is for: ``"fit"``, ``"test"``, ... or ``"maps"``.
        double_backward: the module's :attr:`BaseModule.double_backward`.
    """
    if precision is not None:
        return precision
    if stage == "maps" or double_backward:
        return "32-true"
    name = accelerator if isinstance(accelerator, str) or accelerator is None else type(accelerator).__name__.lower()
    may_use_cuda = name in (None, "auto", "gpu", "cuda") or str(name).startswith("cuda")
    if may_use_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


@dataclass(frozen=True)
class LossOutput:
    """What :meth:`BaseModule.compute_loss` returns for one batch of ``B`` items.

    Attributes:
        loss: scalar, the objective the optimiser minimises (logged as ``{stage}/loss``).
        logits: ``[B,K]``, scored against the labels for ``{stage}/acc``.
        terms: named scalar parts of ``loss`` (e.g. ``{"ce": ..., "mse": ...}``), logged as ``{stage}/{name}``.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    terms: Mapping[str, torch.Tensor] = field(default_factory=dict)


class BaseModule(L.LightningModule):
    """Base LightningModule of impactx: optimiser, accuracy, logging, data check and indexed predictions.

    Not named ``ImpactxModule``: that name belongs to the IMPACTX method's own module, one of its subclasses.

    ``map_source`` (class attribute) says where an exported model's maps come from: ``"ig"`` (default: Integrated
    Gradients of the prediction, in the TorchScript artifact's ``explain``), ``"eg"``, ``"decoder"`` (IMPACTX) or
    ``"attention"`` (ABN); see :mod:`impactx.export`.

    Subclasses take (at least) these arguments under these names, with these defaults, and pass them on;
    the names are the checkpoints' hyperparameters and the configs' ``model.init_args`` keys
    (``train.py`` links ``num_classes``, ``in_chans`` and ``input_size`` from the data module)::

        class MyModule(BaseModule):
            def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: int = 32, ...,
                         optimizer: str = "adam", lr: float = 1e-3, ...) -> None:
                super().__init__(num_classes, optimizer=optimizer, lr=lr, ...)
                self.save_hyperparameters()
                ...

    Args:
        num_classes: ``K``, the number of classes (sizes the accuracy metrics).
        optimizer, lr, weight_decay, momentum, scheduler, step_size, gamma: see
            :class:`~impactx.modules.optim.OptimizerSettings`; checked here, so a bad value fails on
            construction. Kept as ``self.optim_settings``.
        compile: ``torch.compile`` the module's forward (``nn.Module.compile``) when the trainer configures the
            model; refused (``ValueError``) by modules whose loss needs double backward (:attr:`double_backward`).
        channels_last: keep 4-d weights and the batches' images ``[B,C,H,W]`` in channels-last memory format
            (same values, NHWC strides: faster convolutions where the kernels prefer it).
    """

    map_source: ClassVar[str] = "ig"
    double_backward: ClassVar[bool] = False
    """``True`` where the training loss differentiates through an ``autograd.grad`` (``create_graph=True``):
    ``compile=True`` is then refused, since compiled graphs do not support double backward."""

    def __init__(
        self,
        num_classes: int,
        *,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        step_size: int = 10,
        gamma: float = 0.1,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, minimum=2)
        for name, value in (("compile", compile), ("channels_last", channels_last)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if compile and self.double_backward:
            raise ValueError(
                f"{type(self).__name__} cannot use compile=True: its loss differentiates through autograd.grad "
                "(double backward), which torch.compile graphs do not support; leave compile=False"
            )
        self.compile_forward, self.channels_last = compile, channels_last
        self._switches_applied = False
        self.optim_settings = OptimizerSettings(optimizer, lr, weight_decay, momentum, scheduler, step_size, gamma)
        # Keys must not shadow nn.Module attributes ("train" is a method), hence the suffix.
        self.metrics = torch.nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes=num_classes, average="micro") for stage in STAGES}
        )

    # ------------------------------------------------------------------------------ subclass hooks
    def compute_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        """The loss of one batch: ``batch = (image [B,C,H,W], label [B], index [B], ...)`` -> :class:`LossOutput`
        (scalar loss, logits ``[B,K]``, named terms). Called by the train, val and test steps."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(batch, stage)")

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]:
        """What the optimiser updates: by default every parameter with ``requires_grad``.

        A module with a fixed part (stage-2 IMPACTX, whose features M come frozen from stage 1) builds that
        part with ``requires_grad=False`` at construction, never inside a running fit, and the optimiser
        then sees only the trainable rest (no momentum or weight decay state for M). Override to return
        param-group dicts (``[{"params": [...], "lr": ...}, ...]``) where parts need their own settings.
        """
        return [p for p in self.parameters() if p.requires_grad]

    def extra_predictions(self, batch: Batch, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Further per-item outputs of :meth:`predict_step` (e.g. ``{"map": [B,1,H,W]}``); each value's first
        dimension is the batch's ``B``. ``logits [B,K]`` is this batch's forward pass. Default: none."""
        return {}

    # ---------------------------------------------------------------------------- Lightning hooks
    def configure_model(self) -> None:
        """Apply the speed switches (called by the trainer before a fit/validate/test/predict; subclasses
        overriding it call ``super()``)."""
        self.apply_speed_switches()

    def setup(self, stage: str) -> None:
        """Check the trainer's data module against the model (subclasses overriding it call ``super()``)."""
        self.check_datamodule(getattr(self.trainer, "datamodule", None) if self._trainer is not None else None)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """``{"probs": softmax(logits) [B,K], "index": the batch's item indices [B]}`` plus
        :meth:`extra_predictions`: row ``b`` of every value belongs to item ``index[b]``, whatever the sampler."""
        if len(batch) < 3:
            raise ValueError(
                f"predict batches must be (image, label, index, ...) so predictions join to items; got {len(batch)} "
                "entries (wrap the dataset in impactx.data.IndexedDataset)"
            )
        batch = self.channels_last_batch(batch)
        images, index = batch[0], batch[2]
        if index.shape != (images.shape[0],):
            raise ValueError(f"index must have shape [B] = [{images.shape[0]}], got {list(index.shape)}")
        logits = self(images)
        predictions = {"probs": logits.softmax(dim=1), "index": index}
        for key, value in self.extra_predictions(batch, logits).items():
            if key in _RESERVED_PREDICTIONS:
                raise ValueError(f"extra_predictions may not replace {key!r} (reserved: {_RESERVED_PREDICTIONS})")
            if value.shape[:1] != index.shape:
                raise ValueError(f"extra prediction {key!r} has shape {list(value.shape)}, expected [{index.shape[0]}, ...]")
            predictions[key] = value
        return predictions

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make the checkpoint self-describing (``checkpoint["impactx"]``, :mod:`impactx.modules.metadata`)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        checkpoint[METADATA_KEY] = checkpoint_metadata(self, datamodule)

    def configure_optimizers(self) -> Any:
        """The optimiser over :meth:`trainable_parameters`, with the schedule stepped once per epoch."""
        params = list(self.trainable_parameters())
        if not params:
            raise ValueError(f"{type(self).__name__} has no trainable parameters to optimise")
        optimizer = self.optim_settings.build_optimizer(params)
        scheduler = self.optim_settings.build_scheduler(optimizer, self._schedule_epochs())
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -------------------------------------------------------------------------------------- helpers
    def channels_last_batch(self, batch: Any) -> Any:
        """With ``channels_last``, the batch with its images (first entry, ``[B,C,H,W]``) in channels-last format;
        the batch itself otherwise. Called by the train, val, test and predict steps (not a batch-transfer hook,
        which would displace a data module's own)."""
        if self.channels_last and isinstance(batch, list | tuple) and batch and _is_image_batch(batch[0]):
            batch = type(batch)([batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]])
        return batch

    def apply_speed_switches(self) -> None:
        """Put 4-d weights in channels-last format (``channels_last``) and compile the forward (``compile``);
        once per module, after the subclass has built its networks."""
        if self._switches_applied:
            return
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_forward:
            self.compile()  # nn.Module.compile: self(x) runs the compiled forward; the state_dict keys stay
        self._switches_applied = True

    def log_loss_and_accuracy(
        self,
        stage: Stage,
        loss: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        terms: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Log ``{stage}/loss`` (scalar; per step too in training), ``{stage}/acc`` of ``logits [B,K]`` against
        ``labels [B]`` (epoch-level torchmetrics accuracy) and each scalar term as ``{stage}/{name}``.
        Synced across DDP ranks; epoch means weight each batch by its ``B``."""
        batch_size = labels.shape[0]
        on_step = stage == "train"
        metric = self.metrics[f"{stage}_acc"]
        metric(logits, labels)
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch_size)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        for name, value in (terms or {}).items():
            if name in ("loss", "acc"):
                raise ValueError(f"loss term name {name!r} would overwrite {stage}/{name}")
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=True, sync_dist=True, batch_size=batch_size)

    def check_datamodule(self, datamodule: Any) -> None:
        """Raise early when ``datamodule``'s ``num_classes``, ``in_chans`` or ``image_size`` differ from the
        hyperparameters the model was built for (``num_classes``, ``in_chans``, ``input_size``); values
        either side does not declare are not compared, and ``None`` skips the check."""
        if datamodule is None:
            return
        hp = self.hparams
        for data_attr, model_attr in DATA_LINKS:
            data_value = getattr(datamodule, data_attr, None)
            model_value = hp.get(model_attr)
            if data_value is not None and model_value is not None and data_value != model_value:
                raise ValueError(
                    f"data module {type(datamodule).__name__} gives {data_attr}={data_value} but the model "
                    f"({hp.get('backbone') or type(self).__name__}) was built for {model_attr}={model_value}"
                )

    def _shared_step(self, batch: Batch, stage: Stage) -> torch.Tensor:
        batch = self.channels_last_batch(batch)
        out = self.compute_loss(batch, stage)
        self.log_loss_and_accuracy(stage, out.loss, out.logits, batch[1], out.terms)
        return out.loss

    def _schedule_epochs(self) -> int:
        """The run length a schedule spans: the trainer's ``max_epochs`` (``-1`` when unbounded), 1 unattached."""
        if self._trainer is None:
            return 1
        return self.trainer.max_epochs or 1


def _is_image_batch(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point()
