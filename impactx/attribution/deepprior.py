"""DeepPrior-EG: expected gradients from prior-shifted baselines (Gao & Guo, Appl. Sci. 2025, 15, 7090).

For an input ``x`` the method (Section 3.1)

1. takes the feature map ``F(x) [C, h, w]`` of a convolutional layer (default: the model's last ``Conv2d``);
2. scores every spatial position's channel vector ``F_i in R^C`` under a density fitted beforehand on the
   per-pixel feature vectors of a set of images: an MGM (Eqs. 12-15) or a BGMM (Eqs. 17-18);
3. turns those densities into a prior probability map ``p_prior(x) [h, w]`` and upsamples it bilinearly to
   the input size ``[1, H, W]`` (broadcast over the colour channels);
4. shifts every reference image ``x'`` of the background set to the prior baseline (Eq. 8)
   ``x_prior = x' - p_prior(x)``;
5. runs expected gradients from those baselines (Eqs. 9-10):

       phi(x) = E_{x' ~ D, alpha ~ U(0,1)} [ (x - x_prior) * grad f(x_prior + alpha (x - x_prior)) ],

   estimated with ``n_samples`` (reference, alpha) pairs per image, so that (Eq. 19)
   ``sum(phi(x)) ~= f(x) - E_{x'} f(x_prior)``.

Where this implementation deliberately differs from the authors' code (github.com/Jason-gsy/DeepPrior-EG):

- *Fitting axis.* Their ``appprior.py`` reshapes a ``[C, H, W]`` feature array with
  ``reshape(-1, features.shape[-1])``, so the "feature vectors" are image rows of length ``W``. The paper
  (Eqs. 11, 16: "each row corresponds to feature vectors at specific spatial locations") fits the density on
  the ``C``-dimensional channel vector of each pixel; we do that (:func:`pixel_features`).
- *Path end point.* Their ``explainer.py`` subtracts the prior from every point of the path,
  ``t*x + (1-t)*x' - p``, while the attribution uses ``x - x'``: the path ends at ``x - p``, not ``x``, and
  completeness fails. We integrate on the straight path from ``x_prior`` to ``x`` (Eqs. 9-10), so Eq. 19
  holds with respect to the prior baselines.
- *Prior scale.* The paper calls ``p_prior`` a "prior probability map" and reads it as a value in [0, 1] (its
  glucose example moves a 0 baseline to -1) but gives no normalisation; a raw density in C dimensions has an
  arbitrary scale (their code multiplies ``exp(logpdf)`` by 10, which under/overflows for large ``C``; its
  BGMM branch upsamples the ``[N, K]`` posterior matrix as if it were an image). We use the density at each
  position relative to the most probable position of the same image, ``exp(log p_i - max_j log p_j)`` in
  (0, 1] (``normalize="max"``, the default), or the density normalised to sum to one over the positions
  (``normalize="sum"``). Both are computed per image, so results do not depend on the batch.
- *Which image the prior comes from.* The map is computed on the explained input ``x`` (Section 3.1 extracts
  features "from input images"; Eqs. 9 and 20 integrate over ``x'`` with one ``p_prior`` map) and
  subtracted from every reference. It is treated as a fixed baseline: no gradient flows through it, also
  with ``create_graph=True``.
- *BGMM score.* The per-pixel prior of the BGMM is its mixture log-density (``score_samples``), a single map
  like the MGM's, rather than the ``[N, K]`` posterior matrix of Eq. 18.

The density is fitted on the background set of the call and cached against the model's weights (a sha256
of its ``state_dict``, :func:`impactx.core.weights_fingerprint`), the layer name and the fitted data (a
digest): a model trained further, another model, or another background is refitted at its next call; the
same weights in another object reuse the fit. The fingerprint is only recomputed when a parameter or buffer
was written to since the last call. :meth:`DeepPriorEG.fit` fits on data of the caller's choice, used for
every background until the weights change.

With ``background=None`` the density is fitted on the explained batch, at every call. Under
``torch.distributed`` (DDP) every rank's batch is gathered first and all ranks fit on the same rows, so the
density is identical on every rank: every rank must then make each call together, as in a DDP training or
evaluation step with equal shards (``sync_ranks=False`` fits on the local batch instead). A fixed background
needs no collective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from impactx.attribution.background import BackgroundSource
from impactx.attribution.base import Explainer
from impactx.attribution.cam import resolve_layer
from impactx.attribution.densities import GaussianDensity, MixtureDensity
from impactx.attribution.paths import path_attribution
from impactx.attribution.registry import register
from impactx.core import (
    check_int,
    check_internal_batch_size,
    check_output,
    eval_mode,
    gather_rows,
    image_keys,
    keyed_uniform,
    state_versions,
    tensor_digest,
    weights_fingerprint,
)

PRIORS: tuple[str, ...] = ("mgm", "bgmm")
NORMALIZATIONS: tuple[str, ...] = ("max", "sum")
Density = GaussianDensity | MixtureDensity

_FIT_CHUNK = 64  # images per hook pass when fitting, unless internal_batch_size says otherwise


def resolve_conv_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Conv2d]:
    """The ``Conv2d`` named ``layer`` in ``model.named_modules()`` (``None``: the last one registered)."""
    name, module = resolve_layer(model, layer)
    if not isinstance(module, nn.Conv2d):
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"layer {name!r} is a {type(module).__name__}, expected an nn.Conv2d; the Conv2d layers are "
                         f"{convs}")
    return name, module


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the prior layer needs to run."""


@torch.no_grad()
def layer_features(model: nn.Module, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Output ``[B, C, h, w]`` of ``module`` when ``model`` runs on ``inputs [B, ...]``.

    Captured with a forward hook that stops the forward pass right after the layer (the rest of the
    model is not evaluated).
    """
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured.append(output.detach())
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        model(inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(f"the prior layer ran {len(captured)} times in the forward pass; expected once")
    if captured[0].dim() != 4:
        raise ValueError(f"the prior layer must output [B, C, h, w], got shape {list(captured[0].shape)}")
    return captured[0]


def pixel_features(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w] -> [B*h*w, C]``: one row per spatial position, its channel vector (paper Eq. 11).

    (Not ``reshape(-1, W)`` as in the authors' code, which makes image rows the samples.)
    """
    return feature_map.permute(0, 2, 3, 1).reshape(-1, feature_map.shape[1])


def prior_probability_map(
    log_density: torch.Tensor, size: tuple[int, int], normalize: str = "max"
) -> torch.Tensor:
    """``log_density [B, h, w]`` -> prior map ``[B, 1, H, W]`` with values in [0, 1], bilinearly upsampled.

    ``"max"``: ``exp(log p - max log p)`` per image (1 at the most probable position); ``"sum"``: the
    densities divided by their sum over the ``h*w`` positions of each image.
    """
    batch = log_density.shape[0]
    flat = log_density.reshape(batch, -1)
    if normalize == "max":
        flat = torch.exp(flat - flat.amax(dim=1, keepdim=True))
    elif normalize == "sum":
        flat = torch.softmax(flat, dim=1)
    else:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    small = flat.reshape(batch, 1, *log_density.shape[1:])
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def density_prior_map(
    model: nn.Module, module: nn.Module, density: Density, inputs: torch.Tensor, normalize: str = "max"
) -> torch.Tensor:
    """``p_prior(x) [B, 1, H, W]`` in [0, 1] of ``inputs [B, C, H, W]`` under ``density``, fitted beforehand on
    the per-pixel features of ``module`` (a layer of ``model``): one hook pass in eval mode, evaluated in torch
    on the inputs' device. Detached: the prior baseline is a fixed point of the path, also inside a loss."""
    with eval_mode(model):
        fmap = layer_features(model, module, inputs)  # [B, C, h, w]
    if fmap.shape[1] != density.num_channels:
        raise ValueError(f"layer gives {fmap.shape[1]} channels but the density was fitted on {density.num_channels}")
    # Under autocast the features may come in bf16/fp16: the density is evaluated in at least float32 (a triangular
    # solve has no bf16 kernel, and a log-density in bf16 moves the map by several percent).
    fmap = fmap.to(torch.promote_types(fmap.dtype, torch.float32))
    with torch.autocast(device_type=inputs.device.type, enabled=False):
        log_density = density.log_prob(fmap.permute(0, 2, 3, 1))  # [B, h, w]
        prior = prior_probability_map(log_density, tuple(inputs.shape[-2:]), normalize)
    return prior.to(inputs.dtype)


@dataclass
class _FitState:
    fingerprint: str  # weights_fingerprint of the model the density was fitted for
    versions: tuple[tuple[int, int], ...]  # state_versions when the fingerprint was last checked
    layer: str
    density: Density
    num_pixels: int
    data: str | None  # tensor_digest of the data of an automatic fit; None: fitted by the caller (fit())


@register("deepprior_eg")
class DeepPriorEG(Explainer):
    """Expected gradients from deep-prior baselines ``x' - p_prior(x)`` (see the module docstring).

    Args:
        prior: ``"mgm"`` (one full-covariance Gaussian) or ``"bgmm"`` (Bayesian Gaussian mixture).
        layer: name in ``model.named_modules()`` of the ``nn.Conv2d`` whose output feeds the prior
            (``None``: the last ``Conv2d`` of the model).
        n_components: BGMM's maximum number of components.
        shrinkage: MGM covariance shrinkage towards ``tr(S)/C * I`` in [0, 1]; ``None``: Ledoit-Wolf.
        n_samples: (reference, alpha) pairs per image.
        background: reference images (a :data:`~impactx.attribution.background.BackgroundSource`: a
            ``[M, C, H, W]`` tensor, a Dataset or a datamodule; at most ``max_background`` are kept, a seeded
            random subset), or given per call. ``None``: the references are drawn from the explained batch
            itself, and the density is fitted on it (as in attribution-prior training), which makes results
            depend on the batch.
        max_background: cap on the background set.
        split: the datamodule split a background comes from.
        sync_ranks: under ``torch.distributed``, fit on every rank's batch gathered (``background=None``).
        max_fit_pixels: cap on the feature vectors the density is fitted on (a seeded random subset).
        normalize: ``"max"`` or ``"sum"``, how densities become the prior map (:func:`prior_probability_map`).
        seed: seeds the (batch-invariant) reference and alpha draws, the subsets and the BGMM fit.
        output: explained score, ``"logit"``, ``"prob"`` or ``"log_prob"``.
        create_graph: keep the graph to the model's parameters (for an attribution-prior loss).
        internal_batch_size: points per forward/backward chunk (also images per hook pass when fitting).
        reduce_channels: return ``[B, 1, H, W]`` (sum over channels).
    """

    takes_background = True

    def __init__(
        self,
        prior: Literal["mgm", "bgmm"] = "mgm",
        layer: str | None = None,
        n_components: int = 5,
        shrinkage: float | None = None,
        n_samples: int = 200,
        background: BackgroundSource | None = None,
        max_background: int = 1000,
        split: str = "train",
        sync_ranks: bool = True,
        max_fit_pixels: int = 20_000,
        normalize: Literal["max", "sum"] = "max",
        seed: int = 0,
        output: str = "logit",
        create_graph: bool = False,
        internal_batch_size: int | None = None,
        reduce_channels: bool = False,
    ) -> None:
        super().__init__(reduce_channels=reduce_channels)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        check_output(output)
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"layer must be a module name (str) or None, got {type(layer).__name__}")
        for name, value in (("n_components", n_components), ("n_samples", n_samples),
                            ("max_background", max_background), ("max_fit_pixels", max_fit_pixels)):
            check_int(name, value)
        if shrinkage is not None and not 0.0 <= float(shrinkage) <= 1.0:
            raise ValueError(f"shrinkage must lie in [0, 1] or be None (Ledoit-Wolf), got {shrinkage!r}")
        check_internal_batch_size(internal_batch_size)
        self.prior = prior
        self.layer = layer
        self.n_components = n_components
        self.shrinkage = shrinkage
        self.n_samples = n_samples
        self.max_fit_pixels = max_fit_pixels
        self.normalize = normalize
        self.seed = seed
        self.output = output
        self.create_graph = create_graph
        self.internal_batch_size = internal_batch_size
        self.sync_ranks = sync_ranks
        self._init_background(background, max_background, split, seed)
        self._state: _FitState | None = None

    # ------------------------------------------------------------------ fitting

    @property
    def density(self) -> Density | None:
        """The fitted density (``None`` before :meth:`fit`)."""
        return None if self._state is None else self._state.density

    @property
    def fitted_layer(self) -> str | None:
        """Name of the layer the density was fitted on."""
        return None if self._state is None else self._state.layer

    @property
    def num_fit_pixels(self) -> int | None:
        """How many feature vectors the density was fitted on."""
        return None if self._state is None else self._state.num_pixels

    def is_fitted_for(self, model: nn.Module, data: str | None = None) -> bool:
        """Whether the density was fitted on ``model``'s present weights (any object holding them) and layer,
        and, for an automatic fit, on the data of digest ``data`` (when given)."""
        state = self._state
        if state is None or state.layer != resolve_conv_layer(model, self.layer)[0]:
            return False
        if data is not None and state.data is not None and state.data != data:
            return False
        versions = state_versions(model)
        if versions == state.versions:
            return True
        if weights_fingerprint(model) != state.fingerprint:
            return False
        state.versions = versions  # same weights, written to again (or another object): no rehash next time
        return True

    def fit(self, model: nn.Module, data: torch.Tensor) -> DeepPriorEG:
        """Fit the prior density on the per-pixel features of ``data [N, C, H, W]``; returns ``self``.

        One hook pass per chunk of images (model in eval mode, restored after), a seeded subset of at most
        ``max_fit_pixels`` of the ``N*h*w`` feature vectors kept, then one MGM / BGMM fit on them. The fit is
        used for every later call, whatever its background, until the model's weights change.
        """
        return self._fit(model, data, None)

    def _fit(self, model: nn.Module, data: torch.Tensor, digest: str | None) -> DeepPriorEG:
        if not isinstance(data, torch.Tensor) or data.dim() != 4 or data.shape[0] < 1:
            shape = list(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(f"data must be a non-empty [N, C, H, W] image tensor, got {shape}")
        name, module = resolve_conv_layer(model, self.layer)
        features = self._sample_pixel_features(model, module, data.detach())
        if self.prior == "mgm":
            density: Density = GaussianDensity.fit(features, shrinkage=self.shrinkage)
        else:
            density = MixtureDensity.fit(features, n_components=self.n_components, seed=self.seed)
        self._state = _FitState(
            weights_fingerprint(model), state_versions(model), name, density, int(features.shape[0]), digest
        )
        return self

    def _sample_pixel_features(self, model: nn.Module, module: nn.Module, data: torch.Tensor) -> torch.Tensor:
        """``[min(N*h*w, max_fit_pixels), C]`` float64 CPU rows, chosen before the passes to bound memory."""
        chunk = self.internal_batch_size or _FIT_CHUNK
        n = data.shape[0]
        kept: list[torch.Tensor] = []
        keep: torch.Tensor | None = None
        with eval_mode(model):
            for start in range(0, n, chunk):
                rows = pixel_features(layer_features(model, module, data[start : start + chunk]))
                per_image = rows.shape[0] // min(chunk, n - start)
                if keep is None:
                    total = n * per_image
                    gen = torch.Generator().manual_seed(self.seed)
                    keep = torch.randperm(total, generator=gen)[: self.max_fit_pixels].sort().values
                offset = start * per_image
                lo, hi = torch.searchsorted(keep, torch.tensor([offset, offset + rows.shape[0]]))
                local = (keep[lo:hi] - offset).to(rows.device)
                kept.append(rows[local].to("cpu", torch.float64))
        return torch.cat(kept)

    # ------------------------------------------------------------------ explaining

    @torch.no_grad()
    def prior_map(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Prior probability map ``p_prior(x) [B, 1, H, W]`` in [0, 1] of ``inputs [B, C, H, W]`` (fitted model).

        Evaluated in torch on the inputs' device, one hook pass, no scikit-learn call.
        """
        if self._state is None or not self.is_fitted_for(model):
            raise RuntimeError("DeepPriorEG is not fitted for this model/layer: call fit(model, data) first")
        _, module = resolve_conv_layer(model, self.layer)
        return density_prior_map(model, module, self._state.density, inputs, self.normalize)

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        if background is None:  # the batch: references, and the data of the fit (every rank's, gathered)
            background = inputs.detach()
            fit_data = gather_rows(background) if self.sync_ranks else background
        else:
            fit_data = background
        digest = tensor_digest(fit_data)
        if not self.is_fitted_for(model, digest):
            self._fit(model, fit_data, digest)
        p_prior = self.prior_map(model, inputs)  # [B, 1, H, W], detached

        keys = image_keys(inputs, self.seed)
        pick = keyed_uniform(keys, self.n_samples, stream=0).to(torch.float64)  # [B, S]; same draws as "eg"
        alphas = keyed_uniform(keys, self.n_samples, stream=1)  # [B, S]
        index = (pick * background.shape[0]).long().clamp_(max=background.shape[0] - 1)
        references = background[index] - p_prior.unsqueeze(1)  # x_prior = x' - p_prior(x): [B, S, C, H, W]
        weights = torch.full_like(alphas, 1.0 / self.n_samples)
        return path_attribution(
            model, inputs, target, references, alphas, weights,
            output=self.output, create_graph=self.create_graph, internal_batch_size=self.internal_batch_size,
        )
