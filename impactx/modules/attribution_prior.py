"""``AttributionPriorModule``: a classifier trained on ``CE + lam * Omega(Phi(theta, x))`` (Erion et al., 2021;
DeepPrior-EG paper, Eq. 25), with ``Phi`` the Expected-Gradients attributions of the true class, computed in the
training step with ``create_graph=True`` and differentiated through.

References (``references``) of the EG path, ``k = n_references`` per image with ``alpha ~ U(0, 1)``:

- ``"train"``: drawn from a pool of the training split (a seeded subset of at most ``reference_pool``
  unaugmented images, loaded once at fit start, the same on every rank). The reference PyTorch op builds a
  new shuffled DataLoader iterator every step; here each step draws indices into the pool, keyed on each image
  and the global step (:func:`impactx.attribution.eg.draw_references`), so an image gets the same references
  whatever batch or DDP rank it lands in (with random augmentation, the augmented pixels are the key).
- ``"batch"``: the other images of the batch (as the reference TensorFlow code does). An image alone in its
  batch (a last batch of size 1) is its own reference: zero attribution, zero penalty for that step. Under DDP
  the batch is each rank's shard, so these references (unlike the others) depend on the number of ranks.
- ``"mgm"`` / ``"bgmm"``: DeepPrior-EG baselines ``x' - p_prior(x)`` (``x'`` from the pool, ``p_prior`` from an
  MGM or BGMM density of a convolutional layer's per-pixel features, see :mod:`impactx.attribution.deepprior`).
  The density is fitted once at fit start on ``deepprior_fit_images`` pool images by rank 0 and broadcast, so it
  is identical on every rank; it travels with the ``state_dict`` (module extra state: checkpoints, and
  ``ddp_spawn`` handing the trained model back, carry it; a resumed fit or a loaded model uses it, no refit)
  and is refitted every ``refit_every`` epochs when that is > 0. A stored density of another kind or layer
  than the configuration asks for is refused on load.

Model state during the attribution pass (the policy the issue asks to choose): **eval mode**. The EG points go
through the network with every submodule in eval mode (restored afterwards), so BatchNorm normalises with, and
does not update, its running statistics, and dropout draws nothing: the attributions are those of the model
that will be explained at test time, and the interpolated images never enter the BatchNorm statistics (the
reference op leaves the model in train mode, so they do). The cross-entropy forward stays in train mode.
Frozen batch statistics (train-mode normalisation without the update) were not chosen: they would make the
penalty depend on the batch's composition, mixing real and interpolated images.

Gradients: ``torch.autograd.grad(create_graph=True)`` with respect to the path points only (out of place, no
parameter ``.grad`` touched), then Lightning's ordinary backward of the whole loss; under DDP the attribution
forward runs inside the wrapped ``training_step``, so the one backward fills every parameter's gradient once
and DDP all-reduces it; nothing flips ``requires_grad``. Precision: ``bf16-mixed`` works (autocast covers the
attribution forward); ``16-mixed``/``16-true`` are refused (the loss scaler does not scale the inner gradient;
use ``bf16-mixed`` or 32). ``torch.compile`` is refused (double backward is not supported through compiled
graphs), ``nn.Module.compile()`` of the model included.

Validation and test log the cross-entropy (``{stage}/ce``) and accuracy; with ``eval_prior=True`` they also
compute the penalty, which takes gradients: the trainer then needs ``inference_mode=False`` (checked at setup,
with a clear error). Target-map priors cannot be evaluated there (validation and test batches carry no map). Target-map priors (``prior="outside_region"``) read the map joined to each training batch
(``(image, label, index, map)``, the data module's ``maps`` store).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from impactx.attribution.background import materialise_background
from impactx.attribution.deepprior import NORMALIZATIONS, DeepPriorEG, density_prior_map, resolve_conv_layer
from impactx.attribution.densities import density_from_state, density_state
from impactx.attribution.eg import draw_references
from impactx.attribution.paths import path_attribution
from impactx.core import check_int, check_output, eval_mode
from impactx.models import Backbone, create_backbone
from impactx.modules.base import BaseModule, Batch, LossOutput, Stage
from impactx.priors import AttributionPrior

__all__ = ["REFERENCES", "AttributionPriorModule"]

REFERENCES = ("train", "batch", "mgm", "bgmm")
_REFUSED_PRECISIONS = ("16-mixed", "16-true", "16", "transformer-engine-float16")


def differentiable_explainer(name: str, options: dict[str, Any] | None) -> Any:
    """The registered method ``name`` built with ``create_graph=True`` (for a penalty trained through), or a
    ``ValueError`` when it cannot be: no ``create_graph`` option (not differentiable) or a background."""
    from impactx.attribution import explainer_class

    cls = explainer_class(name)
    options = dict(options or {})
    if cls.takes_background:
        raise ValueError(f"attribution {name!r} takes a background; use attribution='eg' with references=...")
    if "create_graph" not in inspect.signature(cls.__init__).parameters:
        raise ValueError(f"attribution {name!r} is not differentiable (it has no create_graph option); choose "
                         "eg, ig, gradient, input_x_gradient, saliency, gradcam, gradcam_pp or smoothgrad")
    return cls(**{**options, "create_graph": True})


def step_seed(seed: int, step: int) -> int:
    """The seed of the EG draws at optimisation step ``step``: a function of both only (so of no rank)."""
    return (int(seed) * 1_000_003 + int(step) * 7919 + 17) % (2**31 - 1)


class AttributionPriorModule(BaseModule):
    """Any backbone of the factory trained under an attribution prior (module docstring).

    Batches are ``(image [B,C,H,W], label [B], index [B])``, plus ``map [B,1,H,W]`` for target-map priors. Logs
    ``{stage}/loss``, ``{stage}/acc``, ``{stage}/ce`` and ``train/prior`` (the penalty before ``lam``; also
    ``val/prior``, ``test/prior`` with ``eval_prior``).

    Args:
        backbone, num_classes, in_chans, input_size, pretrained, pretrained_file: the classifier, as for
            :class:`~impactx.modules.ClassifierModule`.
        prior: the penalty's name in :data:`impactx.priors.PRIORS`; prior_options: its options.
        lam: the penalty's weight (DeepPrior-EG paper: 0.01 on MNIST, grid over a log scale).
        references: ``"train"`` | ``"batch"`` | ``"mgm"`` | ``"bgmm"`` (module docstring).
        n_references: ``k``, EG samples (reference, alpha) per image.
        reference_pool: at most this many training images references are drawn from (``"train"``, ``"mgm"``,
            ``"bgmm"``).
        output: the explained score: ``"logit"`` | ``"prob"`` | ``"log_prob"``.
        deepprior_layer: the ``nn.Conv2d`` (by name) whose features the density models (``None``: the last one).
        deepprior_components: BGMM's maximum number of components.
        deepprior_fit_images, deepprior_fit_pixels: pool images and per-pixel feature vectors the density is
            fitted on.
        deepprior_normalize: ``"max"`` | ``"sum"``, densities to the prior map (see ``DeepPriorEG``).
        refit_every: refit the density every this many epochs (0: fitted once, at fit start).
        eval_prior: compute and log the penalty in validation and test too (needs ``inference_mode=False``).
        prior_seed: seeds the pool, the draws and the BGMM fit.
        attribution: ``"eg"`` (Expected Gradients from ``references``, the papers') or any registered method that
            takes ``create_graph`` and no background (``"gradient"``, ``"input_x_gradient"``, ``"saliency"``,
            ``"ig"``, ``"gradcam"``, ``"gradcam_pp"``, ``"smoothgrad"`` with a differentiable inner method ...),
            computed with ``create_graph=True`` on the true class; attribution_options: its options.
        optimizer, lr, weight_decay, momentum, scheduler, step_size, gamma, label_smoothing: as for the classifier.
        compile: refused (``True`` raises ``ValueError``): the loss differentiates through ``autograd.grad``.
        channels_last: the speed switch of :class:`~impactx.modules.base.BaseModule`.
    """

    map_source = "eg"
    double_backward = True

    def __init__(
        self,
        backbone: str = "lenet5",
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: int = 32,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        prior: str = "total_variation",
        prior_options: dict[str, Any] | None = None,
        lam: float = 0.01,
        references: Literal["train", "batch", "mgm", "bgmm"] = "train",
        n_references: int = 1,
        reference_pool: int = 10_000,
        output: str = "logit",
        deepprior_layer: str | None = None,
        deepprior_components: int = 5,
        deepprior_fit_images: int = 1000,
        deepprior_fit_pixels: int = 20_000,
        deepprior_normalize: Literal["max", "sum"] = "max",
        refit_every: int = 0,
        eval_prior: bool = False,
        prior_seed: int = 0,
        attribution: str = "eg",
        attribution_options: dict[str, Any] | None = None,
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
        if references not in REFERENCES:
            raise ValueError(f"references must be one of {REFERENCES}, got {references!r}")
        if deepprior_normalize not in NORMALIZATIONS:
            raise ValueError(f"deepprior_normalize must be one of {NORMALIZATIONS}, got {deepprior_normalize!r}")
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not lam >= 0:
            raise ValueError(f"lam must be a number >= 0, got {lam!r}")
        check_output(output)
        for name, value in (("n_references", n_references), ("reference_pool", reference_pool),
                            ("deepprior_components", deepprior_components),
                            ("deepprior_fit_images", deepprior_fit_images),
                            ("deepprior_fit_pixels", deepprior_fit_pixels)):
            check_int(name, value)
        check_int("refit_every", refit_every, minimum=0)
        self._explainer = None if attribution == "eg" else differentiable_explainer(attribution, attribution_options)
        self.save_hyperparameters()
        self.prior = AttributionPrior(prior, prior_options or {})
        if eval_prior and self.prior.needs_target_maps:
            raise ValueError(f"eval_prior cannot score prior {prior!r}: validation and test batches carry no target map")
        self.model: Backbone = create_backbone(
            backbone, num_classes, in_chans=in_chans, input_size=input_size,
            pretrained=pretrained, pretrained_file=pretrained_file,
        )
        if references in ("mgm", "bgmm"):
            resolve_conv_layer(self.model, deepprior_layer)  # a bad layer name fails now, not at fit start
        self._pool: torch.Tensor | None = None
        self._density: dict[str, Any] | None = None  # {"state": density_state, "layer": str, "epoch": int}
        self._density_cache: tuple[Any, nn.Module] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,C,H,W]`` -> logits ``[B,num_classes]``."""
        return self.model(x)

    # ------------------------------------------------------------------------------------ the loss
    def compute_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        """``CE + lam * Omega(EG(x, y))`` in training (and with ``eval_prior``); the cross-entropy elsewhere."""
        images, labels = batch[0], batch[1]
        logits = self(images)
        ce = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        if stage != "train" and not self.hparams.eval_prior:
            return LossOutput(ce, logits, {"ce": ce})
        target_maps = batch[3] if len(batch) > 3 else None
        penalty = self.prior(self.attributions(images, labels), target_maps)
        return LossOutput(ce + self.hparams.lam * penalty, logits, {"ce": ce, "prior": penalty})

    def attributions(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Expected Gradients (or the ``attribution`` method) ``[B,C,H,W]`` of the true class, attached to the graph
        (``create_graph=True``). ``images [B,C,H,W]``, ``labels [B]``; the model in eval mode for this pass."""
        if torch.compiler.is_compiling():
            raise RuntimeError(_COMPILE_MESSAGE)
        if self._explainer is not None:
            return self._explainer(self.model, images, labels)  # eval mode inside, restored after
        references, alphas = self.path_references(images)
        weights = torch.full(alphas.shape, 1.0 / alphas.shape[1], dtype=images.dtype, device=images.device)
        with eval_mode(self.model):
            return path_attribution(self.model, images, labels, references, alphas, weights,
                                    output=self.hparams.output, create_graph=True)

    def path_references(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(references [B,k,C,H,W], alphas [B,k])`` of this step's EG path for ``images [B,C,H,W]``."""
        hp = self.hparams
        seed = step_seed(hp.prior_seed, self.global_step if self._trainer is not None else 0)
        k = hp.n_references
        images = images.detach()
        if hp.references == "batch":
            b = images.shape[0]
            if b == 1:
                _, alphas = draw_references(images, 1, k, seed)
                return images.unsqueeze(1).expand(1, k, *images.shape[1:]), alphas.to(images.device)
            others, alphas = draw_references(images, b - 1, k, seed)  # position among the other b - 1 images
            others = others.to(images.device)
            own = torch.arange(b, device=images.device).view(-1, 1)
            return images[others + (others >= own).long()], alphas.to(images.device)
        pool = self.reference_pool_tensor(images.device, images.dtype)
        if pool.shape[1:] != images.shape[1:]:
            raise ValueError(f"reference pool images {list(pool.shape[1:])} do not match the batch's "
                             f"{list(images.shape[1:])}")
        indices, alphas = draw_references(images, pool.shape[0], k, seed)
        references = pool[indices.to(pool.device)]
        if hp.references in ("mgm", "bgmm"):
            density, module = self._fitted_density()
            p_prior = density_prior_map(self.model, module, density, images, hp.deepprior_normalize)
            references = references - p_prior.unsqueeze(1)  # x_prior = x' - p_prior(x), DeepPrior-EG Eq. 8
        return references, alphas.to(images.device)

    # ------------------------------------------------------------------------- the reference pool
    def set_reference_pool(self, pool: torch.Tensor) -> None:
        """Use ``pool [N,C,H,W]`` as the reference images (the fit does this from the data module)."""
        if not isinstance(pool, torch.Tensor) or pool.dim() != 4 or pool.shape[0] < 1:
            shape = list(pool.shape) if isinstance(pool, torch.Tensor) else type(pool).__name__
            raise ValueError(f"the reference pool must be a non-empty [N,C,H,W] tensor, got {shape}")
        self._pool = pool.detach()

    def reference_pool_tensor(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The pool ``[N,C,H,W]`` on ``device`` in ``dtype`` (cast once; an error when none is set)."""
        if self._pool is None:
            raise RuntimeError(
                f"references={self.hparams.references!r} draws from a pool of training images: fit with a data "
                "module (the pool is loaded at fit start) or call set_reference_pool(images) first"
            )
        if self._pool.device != torch.device(device) or self._pool.dtype != dtype:
            self._pool = self._pool.to(device=device, dtype=dtype)
        return self._pool

    def _load_pool(self) -> None:
        """The pool from the trainer's data module: its unaugmented train split, a seeded subset."""
        if self.hparams.references == "batch" or self._pool is not None or self._explainer is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset_fn = getattr(datamodule, "dataset", None)
        if not callable(dataset_fn):
            raise RuntimeError(
                f"references={self.hparams.references!r} needs the training images: fit with an impactx data module "
                "(one with .dataset(split, augment)) or call set_reference_pool(images) before fitting"
            )
        dataset = dataset_fn("train", augment=False)
        self.set_reference_pool(materialise_background(dataset, self.hparams.reference_pool, "train",
                                                       self.hparams.prior_seed).to(self.device))

    # ------------------------------------------------------------------------------ the DeepPrior fit
    def fit_density(self) -> None:
        """Fit the MGM/BGMM on the pool's first ``deepprior_fit_images`` images with the present weights (rank 0
        fits, every rank receives the same density)."""
        hp = self.hparams
        state = None
        trainer = self._trainer
        if trainer is None or trainer.is_global_zero:
            fitter = DeepPriorEG(prior=hp.references, layer=hp.deepprior_layer, n_components=hp.deepprior_components,
                                 max_fit_pixels=hp.deepprior_fit_pixels, seed=hp.prior_seed)
            weight = next(self.model.parameters())
            pool = self.reference_pool_tensor(weight.device, weight.dtype)
            fitter.fit(self.model, pool[: hp.deepprior_fit_images])
            state = {"state": {k: v.cpu() if isinstance(v, torch.Tensor) else v
                               for k, v in density_state(fitter.density).items()},
                     "layer": fitter.fitted_layer, "epoch": int(self.current_epoch)}
        if trainer is not None and trainer.world_size > 1:
            state = trainer.strategy.broadcast(state, src=0)
        self._set_density(state)

    @property
    def density_record(self) -> dict[str, Any] | None:
        """The fitted density as stored in checkpoints: ``{"state", "layer", "epoch"}`` (``None``: not fitted)."""
        return self._density

    def _set_density(self, record: dict[str, Any] | None) -> None:
        self._density = record
        self._density_cache = None

    def _fitted_density(self) -> tuple[Any, nn.Module]:
        if self._density is None:
            raise RuntimeError(f"references={self.hparams.references!r}: the density is not fitted; it is fitted at fit "
                               "start, or call fit_density() after set_reference_pool()")
        if self._density_cache is None:
            layer = self._density["layer"]
            self._density_cache = (density_from_state(self._density["state"]), resolve_conv_layer(self.model, layer)[1])
        return self._density_cache

    # ---------------------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str) -> None:
        super().setup(stage)
        precision = str(getattr(self.trainer, "precision", ""))
        if precision in _REFUSED_PRECISIONS:
            raise ValueError(
                f"AttributionPriorModule cannot train with precision={precision!r}: the gradient scaler does not scale "
                "the attribution's inner gradient; use precision='bf16-mixed' (or 32)"
            )
        compiled = any(getattr(m, "_compiled_call_impl", None) is not None for m in self.modules())
        if compiled or getattr(self, "_compiler_ctx", None) or \
                isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            raise ValueError(_COMPILE_MESSAGE)
        loop = {"fit": "validate_loop", "validate": "validate_loop", "test": "test_loop"}.get(stage)
        if self.hparams.eval_prior and loop and getattr(getattr(self.trainer, loop, None), "inference_mode", False):
            raise RuntimeError(_INFERENCE_MESSAGE.format(loop=loop.split("_")[0]))
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and self.prior.needs_target_maps and getattr(datamodule, "maps", "") is None:
            raise ValueError(
                f"prior {self.prior.name!r} reads a target map with every training batch, but "
                f"{type(datamodule).__name__} joins none: set its maps option to a map store folder "
                "(--data.init_args.maps=<folder>, made by `python train.py maps`)"
            )

    def on_fit_start(self) -> None:
        self._load_pool()
        if self.hparams.references in ("mgm", "bgmm") and self._density is None:
            self.fit_density()

    def on_train_epoch_start(self) -> None:
        every = self.hparams.refit_every
        epoch = self.current_epoch
        if (self.hparams.references in ("mgm", "bgmm") and every and epoch > 0 and epoch % every == 0
                and (self._density is None or self._density["epoch"] != epoch)):
            self.fit_density()

    def on_validation_start(self) -> None:
        self._eval_start("validation")

    def on_test_start(self) -> None:
        self._eval_start("test")

    def _eval_start(self, loop: str) -> None:
        if not self.hparams.eval_prior:
            return
        if torch.is_inference_mode_enabled():
            raise RuntimeError(_INFERENCE_MESSAGE.format(loop=loop))
        self._load_pool()
        if self.hparams.references in ("mgm", "bgmm") and self._density is None:
            raise RuntimeError("eval_prior with DeepPrior references needs the fitted density: test a checkpoint "
                               "of a fit (it stores the density)")

    def get_extra_state(self) -> dict[str, Any]:
        """The fitted DeepPrior density (``{"density": record | None}``): part of the ``state_dict``, so checkpoints
        and ``ddp_spawn``'s hand-back of the trained weights carry it."""
        return {"density": self._density}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        record = (state or {}).get("density")
        hp = self.hparams
        if record is not None and hp.references in ("mgm", "bgmm"):
            kind, layer = record["state"].get("kind"), record["layer"]
            wanted = resolve_conv_layer(self.model, hp.deepprior_layer)[0]
            if kind != hp.references or layer != wanted:
                raise ValueError(
                    f"the stored DeepPrior density is a {kind!r} of layer {layer!r}, but this module is configured for "
                    f"references={hp.references!r} on layer {wanted!r}: start a new fit (or keep the stored settings)"
                )
        self._set_density(record)


_INFERENCE_MESSAGE = (
    "AttributionPriorModule(eval_prior=True) takes gradients in {loop}: build the trainer with inference_mode=False "
    "(--trainer.inference_mode=false)"
)
_COMPILE_MESSAGE = (
    "AttributionPriorModule refuses torch.compile: its loss differentiates through an autograd.grad "
    "(double backward), which compiled graphs do not support; train it uncompiled"
)
