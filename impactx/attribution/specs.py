"""Explainer specs: a registered name and its options, as a config writes them, turned into explainers.

A config names explainers as ``{"ig": {"n_steps": 32}, "eg": {}}``, ``["ig", "eg"]``, ``"ig"`` or ``None``
(:data:`ExplainersConfig`); :func:`parse_explainers` makes one frozen :class:`ExplainerSpec` per name and
checks every name and option at once. :meth:`ExplainerSpec.build` fills in what the config left out and the
caller knows (a seed, a background set), so results are reproducible run to run. The evaluation callbacks,
the map pass and training modules all build their explainers this way.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from impactx.attribution.base import Explainer
from impactx.attribution.registry import available, create_explainer, explainer_class

ExplainersConfig = Mapping[str, Mapping[str, Any] | None] | Sequence[str] | str | None
"""``{"ig": {"n_steps": 32}, "eg": {}}``, ``["ig", "eg"]``, ``"ig"`` or ``None`` (no explainers)."""

SELF = "self"
"""Source name of a self-explaining model's own maps (not an explainer)."""


def normalise_named_options(
    config: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | str | None, what: str
) -> dict[str, dict[str, Any]]:
    """``{name: options}`` from a dict of options (or nulls), a list of names, one name or ``None``;
    ``what`` names the config key in errors (``"explainers"``, ``"metrics"``)."""
    if config is None:
        return {}
    if isinstance(config, str):
        return {config: {}}
    if isinstance(config, Mapping):
        out: dict[str, dict[str, Any]] = {}
        for name, options in config.items():
            if not isinstance(name, str):
                raise TypeError(f"{what} keys must be names (str), got {name!r}")
            if options is not None and not isinstance(options, Mapping):
                raise TypeError(f"{what}[{name!r}] must be a dict of options or null, got {type(options).__name__}")
            out[name] = dict(options or {})
        return out
    if isinstance(config, Sequence):
        names = list(config)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"{what} must be a list of names (str), got {bad!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"{what} lists a name twice: {names}")
        return {name: {} for name in names}
    raise TypeError(f"{what} must be a dict {{name: options}}, a list of names or a name, got {type(config).__name__}")


@dataclass(frozen=True)
class ExplainerSpec:
    """A registered explainer ``name`` and the ``options`` a config gave it (a copy; treat it as read-only)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options))  # a copy: the config's dict stays the caller's

    @property
    def explainer_class(self) -> type[Explainer]:
        return explainer_class(self.name)

    @property
    def needs_gradients(self) -> bool:
        """Whether the method takes input gradients (so cannot run under ``torch.inference_mode``)."""
        return self.explainer_class.needs_gradients

    @property
    def needs_background(self) -> bool:
        """Whether the method takes a background set that the options do not provide (eg, wg, deepprior_eg)."""
        return (
            self.explainer_class.takes_background
            and self.options.get("background") is None
            and self.options.get("baselines") is None
        )

    def check(self) -> ExplainerSpec:
        """Construct the explainer once, so an unknown name or a bad option fails now; returns ``self``."""
        if self.name == SELF:
            raise ValueError(f"{SELF!r} names the model's own maps (set self_maps=True), not an explainer")
        if self.name not in available():
            raise ValueError(f"unknown explainer {self.name!r} in explainers; registered: {', '.join(available())}")
        try:
            create_explainer(self.name, **self.options)
        except TypeError as err:
            raise TypeError(f"explainers[{self.name!r}]: {err}") from None
        return self

    def build_options(self, seed: int | None = None, background: torch.Tensor | None = None) -> dict[str, Any]:
        """The options :meth:`build` constructs with: ``seed`` and ``background`` filled in where the method
        takes them and the options leave them out."""
        options = dict(self.options)
        params = inspect.signature(self.explainer_class.__init__).parameters
        if seed is not None and "seed" in params and options.get("seed") is None:
            options["seed"] = seed
        if background is not None and self.needs_background:
            options["background"] = background
        return options

    def build(self, seed: int | None = None, background: torch.Tensor | None = None) -> Explainer:
        """The explainer, given ``seed`` and ``background`` where it takes them and the options leave them out."""
        return create_explainer(self.name, **self.build_options(seed, background))


def parse_explainers(config: ExplainersConfig) -> dict[str, ExplainerSpec]:
    """``{name: ExplainerSpec}`` of a config, in order, each checked (:meth:`ExplainerSpec.check`)."""
    return {
        name: ExplainerSpec(name, options).check()
        for name, options in normalise_named_options(config, "explainers").items()
    }
