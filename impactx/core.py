"""What attribution and metrics share: argument checks, the eval-mode guard, target scores and their
gradients, and batch-invariant keyed randomness.

Both ``impactx.attribution`` and ``impactx.metrics`` import this module; it imports neither, so
``import impactx.metrics`` loads no attribution method.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Output = Literal["logit", "prob", "log_prob"]
OUTPUTS: tuple[str, ...] = ("logit", "prob", "log_prob")


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None, what: str = "") -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[minimum, maximum]``, else a ``ValueError``
    naming ``name``, the value and the range (``what`` names the upper bound's meaning)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} exceeds {what or 'the maximum'} ({maximum})")
    return int(value)


def check_inputs(
    inputs: torch.Tensor,
    target: torch.Tensor | int | list[int] | tuple[int, ...],
    num_classes: int | None = None,
    several: bool = False,
) -> torch.Tensor:
    """Validate an image batch and its targets; return targets as a long tensor on the inputs' device.

    Args:
        inputs: ``[B, C, H, W]`` floating-point images.
        target: one class index per image (``[B]`` integer tensor; ``[1]`` or a 0-d tensor is broadcast) or one
            int for the whole batch. With ``several=True`` also ``T >= 1`` classes per image: a ``[B, T]`` integer
            tensor (``[1, T]`` is broadcast) or a list/tuple of ints applied to every image.
        num_classes: when known, targets must lie in ``[0, num_classes)``.
        several: accept several targets per image.

    Returns:
        ``[B]``, or ``[B, T]`` for a ``[B, T]`` tensor or a list/tuple (only with ``several=True``).
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor [B,C,H,W], got {type(inputs).__name__}")
    if inputs.dim() != 4:
        raise ValueError(f"inputs must have shape [B,C,H,W], got shape {list(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be floating point, got dtype {inputs.dtype}")
    batch = inputs.shape[0]
    expected = "an int, a [B] or [B,T] integer tensor, or a list of ints" if several else (
        "an int or a [B] integer tensor")
    if several and isinstance(target, list | tuple):
        target_t = _class_list(target).to(inputs.device).expand(batch, -1)
    elif isinstance(target, bool) or not isinstance(target, int | torch.Tensor):
        raise TypeError(f"target must be {expected}, got {type(target).__name__}")
    elif isinstance(target, int):
        target_t = torch.full((batch,), target, dtype=torch.long, device=inputs.device)
    else:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        if several and target.dim() == 2:
            target_t = _target_matrix(target, batch).to(device=inputs.device, dtype=torch.long)
        elif several and target.dim() > 2:
            raise ValueError(f"target must be {expected}, got shape {list(target.shape)}")
        else:
            target_t = target.reshape(-1).to(device=inputs.device, dtype=torch.long)
            if target_t.numel() == 1 and batch != 1:
                target_t = target_t.expand(batch)
            if target_t.shape[0] != batch:
                raise ValueError(
                    f"target has {target_t.shape[0]} entries (shape {list(target.shape)}) but inputs hold {batch} images"
                )
    if target_t.numel() and int(target_t.min()) < 0:
        raise ValueError(f"target holds a negative class index {int(target_t.min())}")
    if num_classes is not None and target_t.numel() and int(target_t.max()) >= num_classes:
        raise ValueError(f"target holds class {int(target_t.max())} but the model has {num_classes} outputs")
    return target_t


def _class_list(classes: list[int] | tuple[int, ...]) -> torch.Tensor:
    """A list/tuple of class indices as a ``[1, T]`` long tensor (``T >= 1``)."""
    if len(classes) == 0:
        raise ValueError(f"target {classes!r} names no class; give at least one")
    for value in classes:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"target list must hold ints (class indices), got {value!r} ({type(value).__name__})")
    return torch.tensor([int(v) for v in classes], dtype=torch.long).view(1, -1)


def _target_matrix(target: torch.Tensor, batch: int) -> torch.Tensor:
    """A ``[B, T]`` (or broadcast ``[1, T]``) target tensor checked against ``batch`` images."""
    rows, count = target.shape
    if count == 0:
        raise ValueError(f"target of shape {list(target.shape)} names no class per image; T must be >= 1")
    if rows == 1 and batch != 1:
        return target.expand(batch, count)
    if rows != batch:
        raise ValueError(
            f"target has {rows} rows (shape {list(target.shape)}) but inputs hold {batch} images"
        )
    return target


def check_internal_batch_size(value: int | None) -> int | None:
    """``internal_batch_size`` (points per forward/backward pass) must be ``None`` or a positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1):
        raise ValueError(f"internal_batch_size must be None or a positive int, got {value!r}")
    return None if value is None else int(value)


def check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (BatchNorm uses running stats, dropout is off), then restore.

    Each submodule's own ``training`` flag is restored, so a model that was partly frozen comes back as it
    was. ``requires_grad`` flags are never touched: explainers take gradients with respect to inputs only
    (or, with ``create_graph=True``, leave the parameters' graph for the caller's loss).
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def target_scores(logits: torch.Tensor, target: torch.Tensor, output: Output = "logit") -> torch.Tensor:
    """Pick the explained score ``[N]`` of ``target [N]`` from ``logits [N, K]``."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits [N, num_classes], got shape {list(logits.shape)}")
    if output == "prob":
        logits = logits.softmax(dim=1)
    elif output == "log_prob":
        logits = logits.log_softmax(dim=1)
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def score_gradients(
    model: nn.Module,
    points: torch.Tensor,
    target: torch.Tensor,
    output: Output = "logit",
    create_graph: bool = False,
    internal_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and their input gradients at ``points [N, C, H, W]`` for classes ``target [N]``.

    Evaluated in chunks of ``internal_batch_size`` points (all at once when ``None``). Returns
    ``(scores [N], gradients [N, C, H, W])``. With ``create_graph=True`` both stay attached to the graph
    (double backward through the model's parameters); otherwise they are detached.
    """
    n = points.shape[0]
    chunk = n if not internal_batch_size else max(1, int(internal_batch_size))
    scores, grads = [], []
    with torch.enable_grad():
        for start in range(0, n, chunk):
            x = points[start : start + chunk]
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            s = target_scores(model(x), target[start : start + chunk], output)
            (g,) = torch.autograd.grad(s.sum(), x, create_graph=create_graph)
            scores.append(s if create_graph else s.detach())
            grads.append(g)
    return torch.cat(scores), torch.cat(grads)


@torch.no_grad()
def forward_scores(
    model: nn.Module,
    points: torch.Tensor,
    target: torch.Tensor,
    output: Output = "logit",
    internal_batch_size: int | None = None,
) -> torch.Tensor:
    """Scores ``[N]`` of classes ``target [N]`` at ``points [N, C, H, W]``, without gradients, chunked."""
    n = points.shape[0]
    chunk = n if not internal_batch_size else max(1, int(internal_batch_size))
    return torch.cat(
        [target_scores(model(points[s : s + chunk]), target[s : s + chunk], output) for s in range(0, n, chunk)]
    )


_M32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in ``[0, 2**32)``.

    int64 products may wrap; only the low 32 bits are kept, which wrapping leaves intact.
    """
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def image_keys(inputs: torch.Tensor, seed: int) -> torch.Tensor:
    """A 32-bit key ``[B]`` (int64) per image from its exact float bits and ``seed``.

    Random draws derived from these keys depend only on (image, seed): an image gets the same draws
    alone or anywhere inside a batch, on any device.
    """
    flat = inputs.detach().reshape(inputs.shape[0], -1).to(torch.float32).contiguous()
    bits = flat.view(torch.int32).to(torch.int64) & _M32
    position = torch.arange(flat.shape[1], device=inputs.device, dtype=torch.int64)
    mixed = _mix32(bits ^ _mix32((position * 0x9E3779B9 + 0x7F4A7C15) & _M32))
    return _mix32((mixed.sum(dim=1) & _M32) ^ _mix32(torch.tensor(int(seed) & _M32, device=inputs.device)))


def keyed_uniform(keys: torch.Tensor, n: int, stream: int = 0) -> torch.Tensor:
    """``[B, n]`` uniforms in ``[0, 1)`` (24-bit resolution) from per-image ``keys [B]``; ``stream``
    separates independent draws made from the same keys."""
    counter = torch.arange(n, device=keys.device, dtype=torch.int64)
    h = _mix32((keys.view(-1, 1) ^ _mix32((counter * 0x27D4EB2F + stream * 0x165667B1 + 1) & _M32)) & _M32)
    h = _mix32((h + 0x9E3779B9) & _M32)
    return (h >> 8).to(torch.float32) / float(1 << 24)


def keyed_normal(keys: torch.Tensor, n: int, streams: tuple[int, int]) -> torch.Tensor:
    """``[B, n]`` standard normals from per-image ``keys [B]`` (Box-Muller on two :func:`keyed_uniform` streams)."""
    u1 = keyed_uniform(keys, n, stream=streams[0]) + 0.5 / (1 << 24)  # in (0, 1): the log stays finite
    u2 = keyed_uniform(keys, n, stream=streams[1])
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def image_normal(inputs: torch.Tensor, n_samples: int, seed: int, stream: int = 0) -> torch.Tensor:
    """Standard normal noise ``[B, n_samples, *inputs.shape[1:]]``, each image's from a CPU generator seeded with
    its key (:func:`image_keys` of ``seed``) and ``stream``: a function of the image, ``seed`` and ``stream`` only,
    not of the batch or device. Faster than :func:`keyed_normal` for many values per image."""
    keys = image_keys(inputs, seed).tolist()
    size = (n_samples, *inputs.shape[1:])
    noise = [torch.randn(size, generator=torch.Generator().manual_seed((int(key) << 8) + stream),
                         dtype=torch.float64) for key in keys]
    return torch.stack(noise).to(device=inputs.device, dtype=inputs.dtype)


def gaussian_blur(
    images: torch.Tensor, sigma: float, padding: Literal["replicate", "reflect"] = "replicate"
) -> torch.Tensor:
    """Separable Gaussian blur of ``images [B,C,H,W]``, each channel on its own, same shape.

    The kernel has radius ``ceil(3 sigma)`` (weights normalised to one). ``padding="replicate"`` repeats the
    edge pixels (``scipy.ndimage.gaussian_filter(mode="nearest", truncate=3)``); ``"reflect"`` mirrors
    without repeating the edge (torchvision's ``gaussian_blur``), with the radius cut to ``side - 1`` where
    the image is smaller than the kernel (it is nearly flat there anyway).
    """
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"blur sigma must be a finite number > 0, got {sigma!r}")
    if padding not in ("replicate", "reflect"):
        raise ValueError(f"padding must be 'replicate' or 'reflect', got {padding!r}")
    batch, channels, height, width = images.shape
    radius = math.ceil(3 * sigma)
    if padding == "reflect":
        radius = min(radius, height - 1, width - 1)
        if radius <= 0:
            return images.clone()
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(images.reshape(batch * channels, 1, height, width), (radius,) * 4, mode=padding)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1)).view(batch, channels, height, width)


def _hash_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and raw bytes (as on the CPU) into a ``hashlib`` object."""
    value = tensor.detach()
    digest.update(f"{value.dtype}|{tuple(value.shape)}|".encode())
    digest.update(value.reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())


def tensor_digest(tensor: torch.Tensor) -> str:
    """A sha256 hex digest of a tensor's dtype, shape and values (the same on every device)."""
    digest = hashlib.sha256()
    _hash_tensor(digest, tensor)
    return digest.hexdigest()


def weights_fingerprint(module: nn.Module) -> str:
    """A sha256 hex digest of ``module.state_dict()`` (parameter and buffer names, dtypes, shapes, values).

    Equal on every DDP rank for the same weights, and on CPU and GPU; any change of a value changes it.
    """
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        if isinstance(value, torch.Tensor):
            digest.update(f"{name}|".encode())
            _hash_tensor(digest, value)
    return digest.hexdigest()


def state_versions(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """``(id, version counter)`` of every parameter and buffer: a cheap test that no weight was written to
    (optimiser steps, ``load_state_dict`` and BatchNorm updates all bump the counters) since it was taken."""
    return tuple((id(t), t._version) for t in (*module.parameters(), *module.buffers()))


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Under ``torch.distributed`` with several ranks, every rank's ``rows [N_r, ...]`` concatenated in rank
    order (shards may differ in size); otherwise ``rows`` itself. A collective: every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return rows
    world = dist.get_world_size()
    size = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(n) for n in sizes))
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([part[: int(n)] for part, n in zip(gathered, sizes, strict=True)])
