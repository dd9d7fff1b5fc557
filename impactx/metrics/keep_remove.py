"""KPM, KNM, KAM, RPM, RNM, RAM (DeepPrior-EG paper, section 4.2) as torchmetrics."""

from __future__ import annotations

from typing import ClassVar

from impactx.metrics.base import PerturbationCurveMetric
from impactx.metrics.functional.keep_remove import DEFAULT_PERTURBATION, keep_remove_curve, trapezoid_auc
from impactx.metrics.functional.perturbation import PerturbationLike, as_perturbation


class KeepRemoveMetric(PerturbationCurveMetric):
    r"""Base of the six keep/remove metrics; ``variant`` picks the curve.

    The curve is the mean target output after keeping (K*M) or removing (R*M) the first ``k_j`` eligible
    features, ``k_j = min(floor(j P / n), #eligible)``, j = 0..n (definitions in
    :mod:`impactx.metrics.functional.keep_remove`); the summary is its trapezoidal area over the fraction
    axis ``[0, 1]``:

    .. math:: \mathrm{AUC} = \int_0^1 \langle f_y(x^{(f)})\rangle\,df

    The DeepPrior-EG paper calls a larger AUC better for all six; that holds for the benchmark's
    sign-transformed curves. The AUC here is of the raw output, so ``higher_is_better`` is set per variant
    (KPM, KAM, RNM: higher; KNM, RPM, RAM: lower). ``random_baseline`` also gives ``"random_curve"`` and
    ``"random_auc"``: the same eligible features in a random order.
    """

    variant: ClassVar[str] = "kpm"
    curve_fn = staticmethod(keep_remove_curve)
    summary_name = "auc"  # compute(): {"curve": mean output at fractions j/n [n + 1], "auc": trapezoidal area}
    summary_fn = staticmethod(trapezoid_auc)

    def __init__(
        self,
        n_steps: int = 10,
        perturbation: PerturbationLike = None,
        output: str = "logit",
        internal_batch_size: int | None = 128,
        random_baseline: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            curve_options=dict(variant=self.variant),
            n_steps=n_steps,
            perturbation=as_perturbation(perturbation, DEFAULT_PERTURBATION),
            output=output,
            internal_batch_size=internal_batch_size,
            random_baseline=random_baseline,
            **kwargs,
        )


class KeepPositiveMean(KeepRemoveMetric):
    """KPM: start fully masked, unmask the positive features in descending order. Higher is better.

    Example (a linear model: keeping only positive contributions never lowers the logit below the
    fully masked start):
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import KeepPositiveMean
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False))
        >>> x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
        >>> maps = x * model[1].weight[y].view(2, 1, 4, 4)  # gradient x input: exact contributions
        >>> kpm = KeepPositiveMean(n_steps=4)
        >>> kpm.update(model, x, y, maps.detach())
        >>> curve = kpm.compute()["curve"]
        >>> bool((curve[1:] >= curve[0]).all())
        True
    """

    variant = "kpm"
    higher_is_better = True


class KeepNegativeMean(KeepRemoveMetric):
    """KNM: start fully masked, unmask the negative features (most negative first). Lower is better."""

    variant = "knm"
    higher_is_better = False


class KeepAbsoluteMean(KeepRemoveMetric):
    """KAM: start fully masked, unmask all features in descending ``|phi|``. Higher is better."""

    variant = "kam"
    higher_is_better = True


class RemovePositiveMean(KeepRemoveMetric):
    """RPM: start from the positive features only, mask them in descending order. Lower is better."""

    variant = "rpm"
    higher_is_better = False


class RemoveNegativeMean(KeepRemoveMetric):
    """RNM: start from the negative features only, mask them (most negative first). Higher is better."""

    variant = "rnm"
    higher_is_better = True


class RemoveAbsoluteMean(KeepRemoveMetric):
    """RAM: start from the full input, mask features in descending ``|phi|``. Lower is better."""

    variant = "ram"
    higher_is_better = False


KPM, KNM, KAM = KeepPositiveMean, KeepNegativeMean, KeepAbsoluteMean
RPM, RNM, RAM = RemovePositiveMean, RemoveNegativeMean, RemoveAbsoluteMean
