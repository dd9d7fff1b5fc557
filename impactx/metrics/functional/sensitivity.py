"""Max- and average sensitivity of an explainer to small input noise (Yeh et al., 2019; as Quantus
``MaxSensitivity`` and ``AvgSensitivity``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from impactx.core import eval_mode, image_keys, keyed_normal, keyed_uniform
from impactx.metrics.functional.map_options import prepare_maps
from impactx.metrics.functional.validation import (
    check_batch,
    check_chunk,
    check_explainer,
    check_int,
    check_maps,
    check_radius,
)

ExplainerFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

_M32 = 0xFFFFFFFF
_BALL_STREAM = 23
_GAUSS_STREAMS = (29, 30)


def _sample_keys(keys: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """One key per (image key, sample index): keyed_uniform's hashing decorrelates nearby keys."""
    return (keys ^ ((sample * 0x9E3779B1 + 0x632BE5AB) & _M32)) & _M32


def _ball_noise(
    keys: torch.Tensor, sample: torch.Tensor, shape: torch.Size, radius: float, dtype: torch.dtype
) -> torch.Tensor:
    """Uniform noise in ``[-radius, radius)`` of ``[N, *shape]`` for image keys ``[N]`` and sample ids ``[N]``."""
    u = keyed_uniform(_sample_keys(keys, sample), int(torch.Size(shape).numel()), stream=_BALL_STREAM)
    return (radius * (2.0 * u - 1.0)).to(dtype).view(-1, *shape)


def _gaussian_noise(
    keys: torch.Tensor, sample: torch.Tensor, shape: torch.Size, std: float, dtype: torch.dtype
) -> torch.Tensor:
    """Normal noise ``N(0, std^2)`` of ``[N, *shape]`` (Box-Muller on keyed uniforms) for image keys and sample ids."""
    normal = keyed_normal(_sample_keys(keys, sample), int(torch.Size(shape).numel()), _GAUSS_STREAMS)
    return (std * normal).to(dtype).view(-1, *shape)


def lipschitz_noise(images: torch.Tensor, std: float, n_samples: int, seed: int = 0) -> torch.Tensor:
    """The noise :func:`local_lipschitz_estimate` adds: ``[n_samples, B, C, H, W]`` i.i.d. ``N(0, std^2)``, sample
    ``j`` of an image depending only on (image, ``seed``, ``j``)."""
    std = check_radius("std", std)
    n = check_int("n_samples", n_samples)
    b = images.shape[0]
    keys = image_keys(images, seed).repeat(n)
    sample = torch.arange(n, device=images.device).repeat_interleave(b)
    return _gaussian_noise(keys, sample, images.shape[1:], std, images.dtype).view(n, *images.shape)


def uniform_ball_noise(images: torch.Tensor, radius: float, n_samples: int, seed: int = 0) -> torch.Tensor:
    """The noise :func:`max_sensitivity` adds: ``[n_samples, B, C, H, W]`` i.i.d. uniform in the L-inf ball
    of ``radius``. Sample ``j`` of an image depends only on (image, ``seed``, ``j``), not on the batch."""
    radius = check_radius("radius", radius)
    n = check_int("n_samples", n_samples)
    b = images.shape[0]
    keys = image_keys(images, seed).repeat(n)
    sample = torch.arange(n, device=images.device).repeat_interleave(b)
    return _ball_noise(keys, sample, images.shape[1:], radius, images.dtype).view(n, *images.shape)


def _maps_of(explainer: ExplainerFn, model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int | None):
    n = x.shape[0]
    step = n if not chunk else chunk
    return torch.cat([explainer(model, x[s : s + step], y[s : s + step]).detach() for s in range(0, n, step)])


def max_sensitivity(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    explainer: ExplainerFn,
    maps: torch.Tensor | None = None,
    radius: float = 0.2,
    n_samples: int = 20,
    seed: int = 0,
    relative: bool = True,
    internal_batch_size: int | None = 128,
    return_nan_when_prediction_changes: bool = False,
    abs: bool = False,  # noqa: A002
    normalise: bool = False,
) -> torch.Tensor:
    """``SENS_max(x) = max_{j=1..n} ||phi(x + d_j) - phi(x)||_F / ||phi(x)||_F`` per image -> ``[B]``.

    ``d_j`` are Monte-Carlo draws, uniform in the L-inf ball of ``radius`` (:func:`uniform_ball_noise`),
    and ``phi = explainer(model, x, y)``; the denominator is Quantus' ``norm_denominator`` (``relative=False``
    gives Yeh et al.'s plain ``max ||phi(x + d) - phi(x)||``). All ``n_samples * B`` noisy images are
    explained in chunks of ``internal_batch_size``. Lower is better.

    Args:
        explainer: ``explainer(model, x [N,C,H,W], y [N]) -> maps [N, ...]``, e.g. a registered Explainer.
        maps: ``phi(x)`` if already computed (otherwise ``explainer`` computes it).
        return_nan_when_prediction_changes: NaN for an image when any of its noisy copies is classified
            differently (Quantus' option of the same name and meaning).
        abs, normalise: Quantus' options with Quantus' defaults (``False``, ``False``), applied to ``phi(x)`` and to
            every ``phi(x + d_j)`` before they are compared: take ``|phi|``; divide each map by its largest
            ``|value|`` (Quantus divides a whole batch of maps by one common maximum).
    """
    return _sensitivity("max", model, images, targets, explainer, maps, radius, n_samples, seed, relative,
                        internal_batch_size, return_nan_when_prediction_changes, abs, normalise)


def local_lipschitz_estimate(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    explainer: ExplainerFn,
    maps: torch.Tensor | None = None,
    std: float = 0.1,
    n_samples: int = 200,
    seed: int = 0,
    internal_batch_size: int | None = 128,
    return_nan_when_prediction_changes: bool = False,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
) -> torch.Tensor:
    """``LLE(x) = max_j ||phi(x + d_j) - phi(x)||_2 / (||d_j||_2 + 1e-10)`` per image -> ``[B]``, ``d_j ~ N(0, std^2)``
    (Alvarez-Melis & Jaakkola, 2018; Quantus ``LocalLipschitzEstimate`` with its defaults: std 0.1, 200 draws,
    Euclidean distances, ``abs=False``, ``normalise=True``, i.e. every map divided by its largest ``|value|``
    first). Lower is better. Options as :func:`max_sensitivity`."""
    return _sensitivity("lipschitz", model, images, targets, explainer, maps, std, n_samples, seed, False,
                        internal_batch_size, return_nan_when_prediction_changes, abs, normalise)


def avg_sensitivity(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | int,
    explainer: ExplainerFn,
    maps: torch.Tensor | None = None,
    radius: float = 0.2,
    n_samples: int = 20,
    seed: int = 0,
    relative: bool = True,
    internal_batch_size: int | None = 128,
    return_nan_when_prediction_changes: bool = False,
    abs: bool = False,  # noqa: A002
    normalise: bool = False,
) -> torch.Tensor:
    """``SENS_avg(x) = mean_j ||phi(x + d_j) - phi(x)||_F / ||phi(x)||_F`` per image -> ``[B]`` (Yeh et al., 2019;
    Quantus ``AvgSensitivity``); the same draws and options as :func:`max_sensitivity`."""
    return _sensitivity("mean", model, images, targets, explainer, maps, radius, n_samples, seed, relative,
                        internal_batch_size, return_nan_when_prediction_changes, abs, normalise)


def _sensitivity(
    reduction: str, model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int, explainer: ExplainerFn,
    maps: torch.Tensor | None, radius: float, n_samples: int, seed: int, relative: bool,
    internal_batch_size: int | None, return_nan_when_prediction_changes: bool, abs: bool,  # noqa: A002
    normalise: bool,
) -> torch.Tensor:
    check_explainer(explainer)
    targets_t = check_batch(model, images, targets)
    radius = check_radius("std" if reduction == "lipschitz" else "radius", radius)
    n = check_int("n_samples", n_samples)
    chunk = check_chunk(internal_batch_size)
    b = images.shape[0]
    with eval_mode(model):
        if maps is None:
            maps = _maps_of(explainer, model, images, targets_t, chunk)
        maps = check_maps(images, maps).detach()
        base = prepare_maps(maps, abs, normalise).reshape(b, -1)
        keys = image_keys(images, seed)
        if return_nan_when_prediction_changes:
            with torch.no_grad():
                predicted = model(images).argmax(dim=1)
        total = n * b
        step = total if not chunk else chunk
        diffs = []
        for start in range(0, total, step):
            q = torch.arange(start, min(total, start + step), device=images.device)
            img, sample = q % b, q // b
            if reduction == "lipschitz":
                delta = _gaussian_noise(keys[img], sample, images.shape[1:], radius, images.dtype)
            else:
                delta = _ball_noise(keys[img], sample, images.shape[1:], radius, images.dtype)
            x = images[img] + delta
            perturbed = prepare_maps(explainer(model, x, targets_t[img]).detach(), abs, normalise).reshape(len(q), -1)
            if perturbed.shape[1] != base.shape[1]:
                raise RuntimeError(
                    f"explainer returned {perturbed.shape[1]} values per image on noisy inputs but "
                    f"{base.shape[1]} for the maps; it must return the same map shape"
                )
            diff = (perturbed - base[img]).norm(dim=1)
            if reduction == "lipschitz":
                diff = diff / (delta.reshape(len(q), -1).norm(dim=1) + 1e-10)
            if return_nan_when_prediction_changes:
                with torch.no_grad():
                    changed = model(x).argmax(dim=1) != predicted[img]
                diff = torch.where(changed, torch.full_like(diff, float("nan")), diff)
            diffs.append(diff)
    draws = torch.cat(diffs).view(n, b)
    sens = draws.mean(dim=0) if reduction == "mean" else draws.amax(dim=0)  # a NaN draw makes the image NaN
    return sens / base.norm(dim=1) if relative else sens
