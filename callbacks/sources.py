"""Where evaluated maps come from: the module's own ``explain`` and registered explainers.

A map source turns ``(model, images [B,C,H,W], targets [B])`` into detached maps ``[B,1,H,W]`` (or
``[B,C,H,W]`` with ``reduce_channels=False``). Sources are named: ``"self"`` for a self-explaining module
(see :mod:`callbacks`), the registry name (``"ig"``, ``"eg"``, ...) for an explainer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from impactx.attribution import available, create_explainer, explainer_class
from impactx.attribution.base import Explainer
from impactx.attribution.common import eval_mode
from impactx.attribution.eg import materialise_background

SELF = "self"
"""Source name of a self-explaining module's own maps."""

ExplainerSpec = Mapping[str, Mapping[str, Any] | None] | Sequence[str] | str | None
"""``{"ig": {"n_steps": 32}, "eg": {}}``, ``["ig", "eg"]``, ``"ig"`` or ``None`` (no explainers)."""

# Option names the callbacks fill in themselves when an explainer takes them and the config leaves them out.
_FILLED = ("seed", "background")


def normalise_spec(spec: ExplainerSpec, what: str = "explainers") -> dict[str, dict[str, Any]]:
    """``spec`` as ``{name: options}``; raises on anything that is not a name, a list of names or a dict."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        return {spec: {}}
    if isinstance(spec, Mapping):
        out: dict[str, dict[str, Any]] = {}
        for name, options in spec.items():
            if not isinstance(name, str):
                raise TypeError(f"{what} keys must be names (str), got {name!r}")
            if options is not None and not isinstance(options, Mapping):
                raise TypeError(f"{what}[{name!r}] must be a dict of options or null, got {type(options).__name__}")
            out[name] = dict(options or {})
        return out
    if isinstance(spec, Sequence):
        names = list(spec)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"{what} must be a list of names (str), got {bad!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"{what} lists a name twice: {names}")
        return {name: {} for name in names}
    raise TypeError(f"{what} must be a dict {{name: options}}, a list of names or a name, got {type(spec).__name__}")


def _init_params(name: str) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(explainer_class(name).__init__).parameters


def explainer_needs_gradients(name: str) -> bool:
    """Whether the registered explainer ``name`` takes input gradients (so cannot run under inference mode)."""
    return explainer_class(name).needs_gradients


def needs_background(name: str, options: Mapping[str, Any]) -> bool:
    """Whether ``name`` takes a background set that ``options`` does not provide (eg, wg, deepprior_eg)."""
    params = _init_params(name)
    return "background" in params and options.get("background") is None and options.get("baselines") is None


def check_explainers(spec: ExplainerSpec) -> dict[str, dict[str, Any]]:
    """Normalise ``spec`` and construct every explainer once, so unknown names and bad options fail now."""
    explainers = normalise_spec(spec)
    for name, options in explainers.items():
        if name == SELF:
            raise ValueError(f"{SELF!r} names the module's own maps (set self_maps=True), not an explainer")
        if name not in available():
            raise ValueError(f"unknown explainer {name!r} in explainers; registered: {', '.join(available())}")
        try:
            create_explainer(name, **options)
        except TypeError as err:
            raise TypeError(f"explainers[{name!r}]: {err}") from None
    return explainers


def build_explainer(name: str, options: Mapping[str, Any], seed: int, background: torch.Tensor | None) -> Explainer:
    """``create_explainer(name, **options)``, seeded with ``seed`` and given ``background`` where it takes
    them and ``options`` leave them out (so results are reproducible run to run)."""
    options = dict(options)
    params = _init_params(name)
    if "seed" in params and options.get("seed") is None:
        options["seed"] = seed
    if background is not None and needs_background(name, options):
        options["background"] = background
    return create_explainer(name, **options)


def load_background(source: Any, split: str, size: int, seed: int) -> torch.Tensor:
    """``size`` images ``[N,C,H,W]`` of ``source`` (a Dataset, or a data module's ``.dataset(split)``) at
    seeded positions.

    The global RNG is seeded inside a fork, so a split with random augmentation gives the same set every
    run and the caller's RNG stream is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return materialise_background(source, max_background=size, split=split, seed=seed)


def is_self_explaining(module: nn.Module) -> bool:
    """True when ``module`` follows the self-explaining protocol (has a callable ``explain``)."""
    return callable(getattr(module, "explain", None))


def self_maps(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``module.explain(images [B,C,H,W])`` checked to be ``[B,1,H,W]`` or ``[B,C,H,W]``, as float."""
    maps = module.explain(images)
    b, c, h, w = images.shape
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.explain must return a tensor, got {type(maps).__name__}")
    if maps.dim() != 4 or maps.shape[0] != b or maps.shape[2:] != images.shape[2:] or maps.shape[1] not in (1, c):
        raise ValueError(
            f"{type(module).__name__}.explain must return maps [B,1,H,W]={[b, 1, h, w]} or [B,C,H,W]={[b, c, h, w]}"
            f" for images {list(images.shape)}, got {list(maps.shape)}"
        )
    return maps.float()


ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MapSource:
    """A named map producer: ``source(model, images [B,C,H,W], targets [B]) -> maps [B,1|C,H,W]`` (detached).

    Gradient sources run under ``torch.enable_grad()``, others under ``torch.no_grad()``; the model is in
    eval mode throughout (BatchNorm statistics and dropout untouched) and restored afterwards.
    """

    name: str
    needs_gradients: bool
    explain: ExplainFn
    reduce_channels: bool = True

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        grad_mode = torch.enable_grad() if self.needs_gradients else torch.no_grad()
        with grad_mode, eval_mode(model):
            maps = self.explain(model, images, targets).detach()
        return maps.sum(dim=1, keepdim=True) if self.reduce_channels else maps


def self_source(module: nn.Module, reduce_channels: bool = True) -> MapSource:
    """The module's own maps. The explain function calls ``explain`` on the model it is given, so metrics
    that re-explain a copy (randomisation) or noisy inputs (sensitivity) see that copy's maps."""
    needs = bool(getattr(module, "explain_needs_grad", False))
    return MapSource(SELF, needs, lambda model, images, targets: self_maps(model, images), reduce_channels)


def explainer_source(name: str, explainer: Explainer, reduce_channels: bool = True) -> MapSource:
    return MapSource(name, explainer_needs_gradients(name), explainer, reduce_channels)


def planned_sources(module: nn.Module, explainers: Mapping[str, Any], use_self: bool) -> dict[str, bool]:
    """``{source name: needs gradients}`` of what a callback will evaluate on ``module``, in order."""
    plan = {}
    if use_self and is_self_explaining(module):
        plan[SELF] = bool(getattr(module, "explain_needs_grad", False))
    for name in explainers:
        plan[name] = explainer_needs_gradients(name)
    return plan


def build_sources(
    module: nn.Module,
    explainers: Mapping[str, Mapping[str, Any]],
    use_self: bool,
    reduce_channels: bool,
    seed: int,
    background: Callable[[], torch.Tensor],
) -> list[MapSource]:
    """The sources to evaluate on ``module``: ``"self"`` first (when present and wanted), then the explainers.

    ``background()`` is called (once) only if some explainer needs a background set.
    """
    sources = []
    if use_self and is_self_explaining(module):
        sources.append(self_source(module, reduce_channels))
    bg = None
    for name, options in explainers.items():
        if bg is None and needs_background(name, options):
            bg = background()
        explainer = build_explainer(name, options, seed, bg)
        sources.append(explainer_source(name, explainer, reduce_channels))
    return sources
