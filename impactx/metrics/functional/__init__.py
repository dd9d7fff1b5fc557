"""Functional cores of the evaluation metrics: plain ``nn.Module`` + tensors in, per-image tensors out.

No Lightning here; each function validates its arguments, runs the model in eval mode (restored after),
evaluates all perturbed variants of a batch as batches (chunked by ``internal_batch_size``) on the inputs'
device, and is deterministic under its ``seed`` (random draws depend only on the image and the seed).
"""

from impactx.metrics.functional.axiomatic import completeness_gap, input_invariance, non_sensitivity
from impactx.metrics.functional.confidence import (
    average_drop,
    confidence_change,
    explanation_mask,
    increase_in_confidence,
)
from impactx.metrics.functional.deletion import deletion_curve, feature_counts, insertion_curve, riemann_auc
from impactx.metrics.functional.keep_remove import VARIANTS, keep_remove_curve, trapezoid_auc
from impactx.metrics.functional.noise_accuracy import (
    DEFAULT_NOISE_LEVELS,
    gaussian_noise,
    noise_accuracy_curve,
)
from impactx.metrics.functional.overlap import overlap_auc, overlap_curve
from impactx.metrics.functional.perturbation import (
    REPLACEMENTS,
    Perturbation,
    gaussian_blur,
    masked_scores,
    random_unit_scores,
    ranks_from_scores,
)
from impactx.metrics.functional.randomisation import (
    cascading_randomisation,
    map_ssim,
    model_randomisation,
    pearson_correlation,
    random_logit,
    randomisable_layers,
    spearman_correlation,
)
from impactx.metrics.functional.region import aopc, lerf_curve, morf_curve, region_perturbation_curve
from impactx.metrics.functional.sensitivity import (
    avg_sensitivity,
    lipschitz_noise,
    local_lipschitz_estimate,
    max_sensitivity,
    uniform_ball_noise,
)
from impactx.metrics.functional.smoothness import standardise_per_image, total_variation
from impactx.metrics.functional.sparseness import sparseness

__all__ = [
    "completeness_gap",
    "input_invariance",
    "non_sensitivity",
    "DEFAULT_NOISE_LEVELS",
    "REPLACEMENTS",
    "Perturbation",
    "VARIANTS",
    "aopc",
    "average_drop",
    "cascading_randomisation",
    "confidence_change",
    "deletion_curve",
    "explanation_mask",
    "feature_counts",
    "gaussian_blur",
    "gaussian_noise",
    "increase_in_confidence",
    "insertion_curve",
    "keep_remove_curve",
    "lerf_curve",
    "map_ssim",
    "masked_scores",
    "avg_sensitivity",
    "lipschitz_noise",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "model_randomisation",
    "pearson_correlation",
    "random_logit",
    "morf_curve",
    "noise_accuracy_curve",
    "overlap_auc",
    "overlap_curve",
    "randomisable_layers",
    "random_unit_scores",
    "ranks_from_scores",
    "region_perturbation_curve",
    "riemann_auc",
    "sparseness",
    "standardise_per_image",
    "total_variation",
    "spearman_correlation",
    "trapezoid_auc",
    "uniform_ball_noise",
]
