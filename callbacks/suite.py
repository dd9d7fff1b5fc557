"""The configurable list of evaluation metrics: names -> :mod:`impactx.metrics` classes, updated per batch.

Each metric is one of four kinds, by what its ``update`` needs:

- ``maps``: ``update(model, images, targets, maps)`` (MoRF, LeRF, deletion, insertion, keep/remove, ...);
- ``maps_only``: ``update(maps)`` (sparseness);
- ``masks``: ``update(maps, masks)`` against the items' object masks (pointing game, relevance mass ...), which the
  data module serves by index (``datamodule.masks(split, index)``, e.g. ``digits_canvas``);
- ``explainer``: also re-explains perturbed inputs or a randomised model copy (max-sensitivity, randomisation);
- ``model``: of the model alone, computed once, not per map source (noise-accuracy curve).

A result is a :class:`MetricResult`: an optional mean curve with its x values and named scalar summaries.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torchmetrics import Metric

from impactx import metrics as M
from impactx.attribution.sources import MapSource
from impactx.attribution.specs import normalise_named_options

Kind = Literal["maps", "maps_only", "masks", "explainer", "model"]
XAxis = Literal["steps", "fraction", "noise", "layers"]

MODEL = "model"
"""Source name of model-level metrics (no map involved)."""


@dataclass(frozen=True)
class MetricInfo:
    """How to build, feed and plot one metric."""

    cls: type[Metric]
    kind: Kind
    title: str = ""
    x_axis: XAxis = "steps"
    x_label: str = ""
    y_label: str = ""


_PIXELS = "fraction of pixels"
_KEEP_REMOVE = {
    "kpm": (M.KPM, "KPM (keep positive)"), "knm": (M.KNM, "KNM (keep negative)"),
    "kam": (M.KAM, "KAM (keep absolute)"), "rpm": (M.RPM, "RPM (remove positive)"),
    "rnm": (M.RNM, "RNM (remove negative)"), "ram": (M.RAM, "RAM (remove absolute)"),
}

METRICS: dict[str, MetricInfo] = {
    "morf": MetricInfo(M.MoRF, "maps", "MoRF (most relevant first)", "steps", "regions replaced", "mean target score"),
    "lerf": MetricInfo(M.LeRF, "maps", "LeRF (least relevant first)", "steps", "regions replaced", "mean target score"),
    "deletion": MetricInfo(M.DeletionAUC, "maps", "Deletion", "fraction", f"{_PIXELS} deleted", "mean target score"),
    "insertion": MetricInfo(M.InsertionAUC, "maps", "Insertion", "fraction", f"{_PIXELS} inserted", "mean target score"),
    **{
        name: MetricInfo(cls, "maps", title, "fraction", "fraction of features", "mean target output")
        for name, (cls, title) in _KEEP_REMOVE.items()
    },
    "average_drop": MetricInfo(M.AverageDrop, "maps"),
    "completeness": MetricInfo(M.Completeness, "maps"),
    "non_sensitivity": MetricInfo(M.NonSensitivity, "maps"),
    "increase_in_confidence": MetricInfo(M.IncreaseInConfidence, "maps"),
    "sparseness": MetricInfo(M.Sparseness, "maps_only"),
    "total_variation": MetricInfo(M.TotalVariation, "maps_only"),
    "entropy_complexity": MetricInfo(M.EntropyComplexity, "maps_only"),
    "effective_complexity": MetricInfo(M.EffectiveComplexity, "maps_only"),
    "pointing_game": MetricInfo(M.PointingGame, "masks"),
    "relevance_mass_accuracy": MetricInfo(M.RelevanceMassAccuracy, "masks"),
    "relevance_rank_accuracy": MetricInfo(M.RelevanceRankAccuracy, "masks"),
    "attribution_localisation": MetricInfo(M.AttributionLocalisation, "masks"),
    "max_sensitivity": MetricInfo(M.MaxSensitivity, "explainer"),
    "avg_sensitivity": MetricInfo(M.AvgSensitivity, "explainer"),
    "input_invariance": MetricInfo(M.InputInvariance, "explainer"),
    "local_lipschitz_estimate": MetricInfo(M.LocalLipschitzEstimate, "explainer"),
    "class_sensitivity": MetricInfo(M.ClassSensitivity, "explainer"),
    "xai_value": MetricInfo(M.XAIValue, "explainer"),
    "randomisation": MetricInfo(
        M.ModelParameterRandomisation, "explainer", "Model-parameter randomisation", "layers",
        "layers randomised (top first)", "mean similarity",
    ),
    "random_logit": MetricInfo(M.RandomLogit, "explainer"),
    "noise_accuracy": MetricInfo(M.NoiseAccuracy, "model", "Accuracy under Gaussian noise", "noise", "noise std", "accuracy"),
}

DEFAULT_METRICS: tuple[str, ...] = ("morf", "lerf", "deletion", "insertion", "sparseness")

# Constructor arguments the suite supplies itself; a config must not set them.
_SUPPLIED = {"explainer", "model"}
# Keyword arguments every torchmetrics Metric accepts.
_TORCHMETRICS_KWARGS = {
    "compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn", "distributed_available_fn",
    "sync_on_compute", "compute_with_cache",
}


def _build(name: str, options: Mapping[str, Any], explainer: Any, model: nn.Module) -> Metric:
    """``METRICS[name].cls(**options)``, given ``explainer`` (and ``model``) when the class takes them."""
    cls = METRICS[name].cls
    params = inspect.signature(cls.__init__).parameters
    extra = {k: v for k, v in (("explainer", explainer), ("model", model)) if k in params}
    return cls(**extra, **options)


def check_metrics(spec: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | str | None) -> dict[str, dict[str, Any]]:
    """Normalise a metric spec (``None``: :data:`DEFAULT_METRICS`) and check names and option names now."""
    metrics = normalise_named_options(DEFAULT_METRICS if spec is None else spec, what="metrics")
    for name, options in metrics.items():
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r} in metrics; available: {', '.join(sorted(METRICS))}")
        supplied = _SUPPLIED & set(options)
        if supplied:
            raise ValueError(f"metrics[{name!r}] must not set {sorted(supplied)}: the callback supplies them")
        params = set(inspect.signature(METRICS[name].cls.__init__).parameters) - {"self", "kwargs"}
        unknown = sorted(set(options) - params - _TORCHMETRICS_KWARGS)
        if unknown:
            raise ValueError(f"metrics[{name!r}]: unknown options {unknown}; accepted: {sorted(params - _SUPPLIED)}")
        try:  # values are checked by the constructor; explainer/model stand-ins only size the state
            _build(name, options, explainer=lambda model, x, y: x, model=nn.Linear(1, 1))
        except (TypeError, ValueError) as err:
            raise ValueError(f"metrics[{name!r}]: {err}") from None
    return metrics


@dataclass
class MetricResult:
    """A computed metric: ``curve`` (mean over images, ``[S]``) at ``x`` (``[S]``) if it has one, and scalars."""

    scalars: dict[str, torch.Tensor]
    curve: torch.Tensor | None = None
    x: torch.Tensor | None = None
    info: MetricInfo | None = field(default=None, repr=False)


def _x_values(info: MetricInfo, metric: Metric, n: int) -> torch.Tensor:
    if info.x_axis == "fraction":
        return torch.linspace(0.0, 1.0, n)
    if info.x_axis == "noise":
        return torch.tensor(metric.noise_levels, dtype=torch.float32)
    if info.x_axis == "layers":
        return torch.arange(1, n + 1, dtype=torch.float32)
    return torch.arange(n, dtype=torch.float32)


def to_result(info: MetricInfo, metric: Metric, computed: torch.Tensor | dict[str, torch.Tensor]) -> MetricResult:
    """A metric's ``compute()`` output as a :class:`MetricResult`; curve-only metrics get a ``"mean"`` scalar
    (over the defined points). Other curves (a perturbation curve's ``random_curve`` under ``random_baseline``)
    are left out; their summaries (``random_aopc``) are scalars like the others."""
    if isinstance(computed, torch.Tensor):
        return MetricResult({"": computed.detach()}, info=info)
    curve = computed["curve"].detach()
    scalars = {k: v.detach() for k, v in computed.items() if k != "curve" and v.dim() == 0} or {"mean": curve.nanmean()}
    return MetricResult(scalars, curve, _x_values(info, metric, curve.shape[0]), info)


class MetricSuite:
    """Fresh metric instances for every (source, metric) pair and for the model-level metrics.

    ``update(images, targets)`` explains the batch with every source once and feeds every metric;
    ``compute()`` returns ``{source: {metric: MetricResult}}`` (model-level metrics under ``"model"``), synced
    across DDP ranks by torchmetrics. Every rank must call ``compute`` (it is collective).
    """

    def __init__(
        self, metrics: Mapping[str, Mapping[str, Any]], sources: Sequence[MapSource], model: nn.Module,
        device: torch.device,
    ) -> None:
        self.model = model
        self.sources = list(sources)
        self.per_source: dict[str, dict[str, Metric]] = {}
        self.model_metrics: dict[str, Metric] = {}
        for name, options in metrics.items():
            if METRICS[name].kind == "model":
                self.model_metrics[name] = _build(name, options, explainer=None, model=model).to(device)
        for source in self.sources:
            self.per_source[source.name] = {
                name: _build(name, options, explainer=source, model=model).to(device)
                for name, options in metrics.items()
                if METRICS[name].kind != "model"
            }

    @property
    def needs_masks(self) -> bool:
        return any(METRICS[name].kind == "masks" for built in self.per_source.values() for name in built)

    def update(self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
               masks: torch.Tensor | None = None) -> None:
        """One batch: ``images [B,C,H,W]`` on the model's device, ``targets [B]`` (the explained classes),
        ``labels [B]`` (the true classes, which model-level metrics such as noise-accuracy score against),
        ``masks [B,1,H,W]`` (object masks; needed by the ``masks`` metrics only)."""
        if masks is None and self.needs_masks:
            raise ValueError("localisation metrics need the items' object masks (a data module with masks(), "
                             "e.g. digits_canvas)")
        for metric in self.model_metrics.values():
            metric.update(self.model, images, labels)
        for source in self.sources:
            maps = source(self.model, images, targets)
            for name, metric in self.per_source[source.name].items():
                if METRICS[name].kind == "maps_only":
                    metric.update(maps)
                elif METRICS[name].kind == "masks":
                    metric.update(maps, masks)
                else:
                    metric.update(self.model, images, targets, maps)

    def compute(self) -> dict[str, dict[str, MetricResult]]:
        results: dict[str, dict[str, MetricResult]] = {}
        for source, built in self.per_source.items():
            results[source] = {name: to_result(METRICS[name], m, m.compute()) for name, m in built.items()}
        if self.model_metrics:
            results[MODEL] = {name: to_result(METRICS[name], m, m.compute()) for name, m in self.model_metrics.items()}
        return results
