"""Deletion and insertion AUC as torchmetrics."""

from __future__ import annotations

from impactx.metrics.base import PerturbationCurveMetric
from impactx.metrics.functional.deletion import (
    DEFAULT_PERTURBATION,
    deletion_curve,
    insertion_curve,
    riemann_auc,
)
from impactx.metrics.functional.perturbation import PerturbationLike, as_perturbation
from impactx.metrics.functional.validation import check_bool


class _PixelCurve(PerturbationCurveMetric):
    """Deletion/insertion: ``compute()`` gives ``{"curve": mean score at p_i = i/N [N + 1], "auc": 1/N
    sum_{i>=1} curve[i]}`` (with ``random_baseline``, also ``"random_curve"`` and ``"random_auc"``: the same images,
    features in a random order). ``abs``, ``normalise``: Quantus' ``PixelFlipping`` options."""

    summary_name = "auc"
    summary_fn = staticmethod(riemann_auc)

    def __init__(
        self,
        n_steps: int = 100,
        perturbation: PerturbationLike = None,
        output: str = "prob",
        internal_batch_size: int | None = 128,
        abs: bool = False,  # noqa: A002
        normalise: bool = False,
        random_baseline: bool = False,
        **kwargs,
    ) -> None:
        check_bool("abs", abs)
        check_bool("normalise", normalise)
        super().__init__(
            curve_options=dict(abs=abs, normalise=normalise),
            n_steps=n_steps,
            perturbation=as_perturbation(perturbation, DEFAULT_PERTURBATION),
            output=output,
            internal_batch_size=internal_batch_size,
            random_baseline=random_baseline,
            **kwargs,
        )


class DeletionAUC(_PixelCurve):
    r"""AUC of Deletion (weighted-IG paper, section 6).

    .. math:: \mathrm{AUC} = \int_0^1 f_c(x \circ M_p(\phi(x)))\,dp
              \approx \frac{1}{N}\sum_{i=1}^{N} f_c(x \circ M_{i/N}(\phi(x)))

    ``M_p`` zeroes the top ``floor(p P)`` features of the map; ``f_c`` is the class probability. Lower
    is better. See :func:`impactx.metrics.functional.deletion_curve`.

    Example (a linear model with no bias: deleting everything leaves equal logits, probability 1/2):
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import DeletionAUC
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False))
        >>> images = torch.rand(3, 1, 4, 4)
        >>> metric = DeletionAUC(n_steps=8)
        >>> metric.update(model, images, torch.tensor([0, 1, 1]), torch.rand(3, 1, 4, 4))
        >>> out = metric.compute()
        >>> round(float(out["curve"][-1]), 4)
        0.5
        >>> bool(torch.isclose(out["auc"], out["curve"][1:].mean()))
        True
    """

    curve_fn = staticmethod(deletion_curve)
    higher_is_better = False


class InsertionAUC(_PixelCurve):
    r"""AUC of Insertion: features of ``x`` put back on a blank image in descending order of the map
    (DeepPrior-EG paper, 5.2), the same right Riemann sum as :class:`DeletionAUC`. Higher is better.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import InsertionAUC
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False))
        >>> metric = InsertionAUC(n_steps=8)
        >>> metric.update(model, torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 1]), torch.rand(3, 1, 4, 4))
        >>> round(float(metric.compute()["curve"][0]), 4)  # the blank image: equal logits
        0.5
    """

    curve_fn = staticmethod(insertion_curve)
    higher_is_better = True
