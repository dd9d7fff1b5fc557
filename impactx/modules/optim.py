"""Optimiser and learning-rate schedule built from plain, checkpoint-friendly hyperparameters.

:class:`OptimizerSettings` is the one place that checks and builds them; it knows nothing of Lightning, so
:class:`~impactx.modules.base.BaseModule` calls it from ``configure_optimizers`` and a notebook can call it
on any parameter list.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from impactx.core import check_int

__all__ = ["OPTIMIZERS", "SCHEDULERS", "OptimizerSettings"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step")


def _check_number(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False,
                  high_open: bool = True) -> float:
    """``value`` as a float if it is a finite real number in the interval, else a ``ValueError`` naming it."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    value = float(value)
    inside_low = value > low if low_open else value >= low
    inside_high = value < high if high_open else value <= high
    if not (math.isfinite(value) and inside_low and inside_high):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return value


@dataclass(frozen=True)
class OptimizerSettings:
    """How to optimise: the flat hyperparameters every impactx LightningModule takes, checked on construction.

    Args:
        optimizer: ``"adam"`` | ``"adamw"`` | ``"sgd"`` (SGD with Nesterov momentum when ``momentum > 0``).
        lr: learning rate, ``> 0``.
        weight_decay: ``>= 0`` (L2 for Adam and SGD, decoupled for AdamW).
        momentum: SGD momentum in ``[0, 1)``; unused by Adam/AdamW.
        scheduler: ``"none"`` | ``"cosine"`` (per-epoch cosine annealing to 0 over the trainer's
            ``max_epochs``) | ``"step"`` (multiply by ``gamma`` every ``step_size`` epochs).
        step_size: positive int, epochs between two ``"step"`` decays.
        gamma: ``> 0``, the ``"step"`` decay factor.

    Raises:
        ValueError: naming the first bad setting and the accepted values.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "cosine"
    step_size: int = 10
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        _check_number("lr", self.lr, 0.0, low_open=True)
        _check_number("weight_decay", self.weight_decay, 0.0)
        _check_number("momentum", self.momentum, 0.0, 1.0)
        check_int("step_size", self.step_size)
        _check_number("gamma", self.gamma, 0.0, low_open=True)

    def build_optimizer(self, params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]) -> torch.optim.Optimizer:
        """The optimiser over ``params`` (parameters, or param-group dicts whose own keys override these)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.momentum > 0
        )

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, max_epochs: int
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The per-epoch schedule (``None`` for ``"none"``); cosine anneals over ``max_epochs`` epochs.

        Raises:
            ValueError: ``"cosine"`` with ``max_epochs < 1`` (an unbounded run has no length to anneal over).
        """
        if self.scheduler == "cosine":
            if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
                raise ValueError(
                    f"scheduler='cosine' anneals over the trainer's max_epochs, which must be a positive int "
                    f"here, got {max_epochs!r} (set trainer.max_epochs, or use scheduler='step' or 'none')"
                )
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
        if self.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)
        return None
