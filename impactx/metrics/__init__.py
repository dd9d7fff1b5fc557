"""Explanation-quality and robustness metrics as ``torchmetrics.Metric`` s over pure functional cores.

Faithfulness: :class:`MoRF`, :class:`LeRF` (AOPC), :class:`DeletionAUC`, :class:`InsertionAUC`, the
keep/remove family (:class:`KPM` ... :class:`RAM`), :class:`AverageDrop`, :class:`IncreaseInConfidence`.
Localisation (against object masks): :class:`OverlapAUC`, :class:`PointingGame`, :class:`RelevanceMassAccuracy`,
:class:`RelevanceRankAccuracy`, :class:`AttributionLocalisation`. Complexity: :class:`Sparseness`,
:class:`TotalVariation`, :class:`EntropyComplexity`, :class:`EffectiveComplexity`. Robustness: :class:`MaxSensitivity`,
:class:`AvgSensitivity`, :class:`LocalLipschitzEstimate` (of a map), :class:`NoiseAccuracy` (of the model). ADVISE's scores: :class:`ClassSensitivity`, :class:`XAIValue`. Sanity: :class:`ModelParameterRandomisation`.
The functional cores live in :mod:`impactx.metrics.functional`. Nothing here knows about Lightning.

Every metric sums per-image values (``dist_reduce_fx="sum"``) and counts images, so the DDP-synced
result equals the single-process one. Curve metrics compute ``{"curve": ..., <summary>: ...}``; how the
perturbation curves fill what they remove is one :class:`Perturbation` (``perturbation=`` on every one), and
``random_baseline=True`` adds the curve of a random order of the same units (the chance level). Quantus' ``abs`` and
``normalise`` options are on the metrics whose Quantus counterpart has them (``docs/evaluation.md``).
"""

from impactx.metrics import functional
from impactx.metrics.advise import ClassSensitivity, XAIValue
from impactx.metrics.axiomatic import Completeness, InputInvariance, NonSensitivity
from impactx.metrics.base import CurveMetric, ScalarMetric
from impactx.metrics.complexity import EffectiveComplexity, EntropyComplexity
from impactx.metrics.confidence import AverageDrop, IncreaseInConfidence
from impactx.metrics.deletion import DeletionAUC, InsertionAUC
from impactx.metrics.functional.perturbation import Perturbation
from impactx.metrics.keep_remove import (
    KAM,
    KNM,
    KPM,
    RAM,
    RNM,
    RPM,
    KeepAbsoluteMean,
    KeepNegativeMean,
    KeepPositiveMean,
    KeepRemoveMetric,
    RemoveAbsoluteMean,
    RemoveNegativeMean,
    RemovePositiveMean,
)
from impactx.metrics.localisation import (
    AttributionLocalisation,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
)
from impactx.metrics.noise_accuracy import NoiseAccuracy
from impactx.metrics.overlap import OverlapAUC
from impactx.metrics.randomisation import ModelParameterRandomisation, RandomLogit
from impactx.metrics.region import LeRF, MoRF
from impactx.metrics.sensitivity import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity
from impactx.metrics.smoothness import TotalVariation
from impactx.metrics.sparseness import Sparseness

__all__ = [
    "Perturbation",
    "KAM",
    "KNM",
    "KPM",
    "RAM",
    "RNM",
    "RPM",
    "AttributionLocalisation",
    "AverageDrop",
    "AvgSensitivity",
    "ClassSensitivity",
    "Completeness",
    "CurveMetric",
    "DeletionAUC",
    "EffectiveComplexity",
    "EntropyComplexity",
    "IncreaseInConfidence",
    "InputInvariance",
    "InsertionAUC",
    "KeepAbsoluteMean",
    "KeepNegativeMean",
    "KeepPositiveMean",
    "KeepRemoveMetric",
    "LeRF",
    "LocalLipschitzEstimate",
    "MaxSensitivity",
    "ModelParameterRandomisation",
    "MoRF",
    "NoiseAccuracy",
    "NonSensitivity",
    "OverlapAUC",
    "PointingGame",
    "RandomLogit",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
    "RemoveAbsoluteMean",
    "RemoveNegativeMean",
    "RemovePositiveMean",
    "ScalarMetric",
    "Sparseness",
    "TotalVariation",
    "XAIValue",
    "functional",
]
