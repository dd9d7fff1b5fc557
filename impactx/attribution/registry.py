"""Explainers registered by name, so configs name them and tests iterate over all of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from impactx.attribution.base import Explainer

_REGISTRY: dict[str, type[Explainer]] = {}

E = TypeVar("E", bound=type[Explainer])


def register(name: str) -> Callable[[E], E]:
    """Class decorator: make an :class:`Explainer` subclass available under ``name``."""

    def wrap(cls: E) -> E:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"explainer name {name!r} is already registered to {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Sorted names of all registered attribution methods."""
    return sorted(_REGISTRY)


def explainer_class(name: str) -> type[Explainer]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attribution method {name!r}; available: {', '.join(available())}") from None


def create_explainer(name: str, **options: Any) -> Explainer:
    """Instantiate the explainer registered as ``name`` with ``options``."""
    return explainer_class(name)(**options)


def attribute(
    method: str, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor | int, /, **options: Any
) -> torch.Tensor:
    """``attribute("ig", model, x [B,C,H,W], y [B], n_steps=32) -> [B,C,H,W]``: one-shot call of a method.

    The first four arguments are positional-only, so options may use their names (IG's ``method=``).
    """
    return create_explainer(method, **options)(model, inputs, target)
