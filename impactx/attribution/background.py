"""Background (reference) sets of the explainers that draw references from data: ``eg``, ``wg``,
``deepprior_eg``.

A background is fixed at construction (``create_explainer("eg", background=...)``) or passed for one call
(``explainer(model, x, y, background=...)``); an explainer is never changed between calls. Both go through
:func:`materialise_background`, the one place that turns a source into a ``[N,C,H,W]`` tensor.
"""

from __future__ import annotations

from typing import Any

import torch

from impactx.core import check_int

BackgroundSource = Any
"""A ``[N,C,H,W]`` tensor, a map-style ``Dataset`` whose items are ``image`` or ``(image, label, ...)``, any
object with a ``.dataset(split)`` method returning such a Dataset (e.g. an impactx DataModule), or a callable
with no arguments that returns the tensor."""


def _item_image(item: Any) -> torch.Tensor:
    image = item[0] if isinstance(item, tuple | list) else item
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"background items must hold an image tensor [C,H,W] first, got {type(image).__name__}")
    return image


def _seeded_positions(n: int, keep: int, seed: int) -> torch.Tensor:
    """``min(n, keep)`` sorted positions of ``0..n-1`` drawn without replacement under ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=gen)[:keep].sort().values


def materialise_background(
    source: BackgroundSource, max_background: int = 1000, split: str = "train", seed: int = 0
) -> torch.Tensor:
    """A detached background set ``[N,C,H,W]`` (``N <= max_background``) from ``source``.

    From a datamodule (``source.dataset(split)``), a Dataset, or a tensor of more than ``max_background``
    images, the images at ``max_background`` positions drawn without replacement by a generator seeded with
    ``seed`` are kept, so the same source and seed always give the same set (random augmentation included);
    a smaller tensor is used whole. A callable with no arguments (Captum's callable ``baselines``) is called and
    its result used as a tensor source.
    """
    check_int("max_background", max_background)
    if (callable(source) and not isinstance(source, torch.Tensor) and not hasattr(source, "__getitem__")
            and not callable(getattr(source, "dataset", None))):
        source = source()
        if not isinstance(source, torch.Tensor):
            raise TypeError(f"a background callable must return a [N,C,H,W] tensor, got {type(source).__name__}")
    if isinstance(source, torch.Tensor):
        background = source.detach() if source.requires_grad else source
        if background.dim() == 4 and background.shape[0] > max_background:
            background = background[_seeded_positions(background.shape[0], max_background, seed).to(source.device)]
    else:
        dataset = source.dataset(split) if callable(getattr(source, "dataset", None)) else source
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                "background must be a [N,C,H,W] tensor, a map-style Dataset, or an object with a .dataset(split) "
                f"method; got {type(source).__name__}"
            )
        # Data loading, done once per explainer: a loop over items is fine here. The global RNG is seeded
        # inside a fork, so a split with random augmentation gives the same set every run and the caller's
        # RNG stream is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            background = torch.stack(
                [_item_image(dataset[int(i)]) for i in _seeded_positions(len(dataset), max_background, seed)]
            )
    if background.dim() != 4 or background.shape[0] == 0:
        raise ValueError(f"background must have shape [N,C,H,W] with N >= 1, got {list(background.shape)}")
    if not background.is_floating_point():
        raise TypeError(f"background must be floating point, got dtype {background.dtype}")
    return background


def background_like(background: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``background [N,C,H,W]`` on the inputs' device and dtype, checked against their ``[C,H,W]``."""
    if background.shape[1:] != inputs.shape[1:]:
        raise ValueError(
            f"background images have shape {list(background.shape[1:])} but inputs have {list(inputs.shape[1:])}"
        )
    return background.to(device=inputs.device, dtype=inputs.dtype)


class BackgroundSet:
    """How an explainer takes its references: the source fixed at construction (materialised on first use,
    cast once per device/dtype) and the options a per-call source is materialised with.

    Args:
        source: the construction-time :data:`BackgroundSource` (``None``: none fixed).
        max_background, split, seed: see :func:`materialise_background`.
    """

    def __init__(self, source: BackgroundSource | None, max_background: int, split: str, seed: int) -> None:
        self.max_background = check_int("max_background", max_background)
        self.split = split
        self.seed = int(seed)
        self._source = source
        self._tensor: torch.Tensor | None = None
        self._cast: torch.Tensor | None = None
        if isinstance(source, torch.Tensor):
            self._tensor = materialise_background(source, max_background, split, seed)  # errors surface now

    @property
    def tensor(self) -> torch.Tensor | None:
        """The fixed set ``[N,C,H,W]`` (materialised on first access), ``None`` when none was given."""
        if self._tensor is None and self._source is not None:
            self._tensor = materialise_background(self._source, self.max_background, self.split, self.seed)
        return self._tensor

    def resolve(self, per_call: BackgroundSource | None, inputs: torch.Tensor) -> torch.Tensor | None:
        """The references of one call on the inputs' device and dtype: ``per_call`` when given, else the
        fixed set; ``None`` when there is neither."""
        if per_call is not None:
            return background_like(
                materialise_background(per_call, self.max_background, self.split, self.seed), inputs
            )
        fixed = self.tensor
        if fixed is None:
            return None
        cast = self._cast
        if cast is None or (cast.device, cast.dtype, cast.shape[1:]) != (inputs.device, inputs.dtype, inputs.shape[1:]):
            cast = self._cast = background_like(fixed, inputs)  # checks the image shape
        return cast
