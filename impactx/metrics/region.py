"""MoRF and LeRF region-perturbation curves with AOPC, as torchmetrics."""

from __future__ import annotations

from typing import ClassVar

from impactx.metrics.base import PerturbationCurveMetric
from impactx.metrics.functional.perturbation import PerturbationLike, as_perturbation
from impactx.metrics.functional.region import DEFAULT_PERTURBATION, aopc, region_perturbation_curve
from impactx.metrics.functional.validation import check_bool, check_int


class _RegionPerturbation(PerturbationCurveMetric):
    """MoRF/LeRF: ``compute()`` gives ``{"curve": mean f_y(x_k) [n_steps + 1], "aopc": scalar}`` (with
    ``random_baseline``, also ``"random_curve"`` and ``"random_aopc"``: the same images, regions in a random order).
    ``abs``, ``normalise``: Quantus' ``RegionPerturbation`` options (rank ``|map|``; each map over its max |value|)."""

    order: ClassVar[str] = "morf"
    curve_fn = staticmethod(region_perturbation_curve)
    summary_name = "aopc"
    summary_fn = staticmethod(aopc)

    def __init__(
        self,
        patch_size: int = 4,
        n_steps: int = 16,
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
        check_int("patch_size", patch_size)
        super().__init__(
            curve_options=dict(order=self.order, patch_size=patch_size, abs=abs, normalise=normalise),
            n_steps=n_steps,
            perturbation=as_perturbation(perturbation, DEFAULT_PERTURBATION),
            output=output,
            internal_batch_size=internal_batch_size,
            random_baseline=random_baseline,
            **kwargs,
        )


class MoRF(_RegionPerturbation):
    r"""Most-Relevant-First region perturbation (Samek et al., 2016) and its AOPC.

    Regions (non-overlapping ``patch_size`` squares, relevance = map summed over the region) are replaced
    in descending order of relevance, by uniform noise by default as in the IMPACTX paper; the curve is
    the mean target score :math:`\langle f(x_k)\rangle`, k = 0..n_steps, and

    .. math:: \mathrm{AOPC} = \frac{1}{L+1}\sum_{k=0}^{L}\langle f(x_0) - f(x_k)\rangle

    (higher is better: removing what the map calls relevant should hurt fast). See
    :func:`impactx.metrics.functional.region_perturbation_curve` for the options.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import MoRF
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> images, targets, maps = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]), torch.rand(4, 1, 4, 4)
        >>> morf = MoRF(patch_size=2, n_steps=4)
        >>> morf.update(model, images, targets, maps)
        >>> result = morf.compute()
        >>> result["curve"].shape
        torch.Size([5])
        >>> bool(torch.isclose(result["aopc"], (result["curve"][0] - result["curve"]).mean()))
        True
    """

    order = "morf"
    higher_is_better = True


class LeRF(_RegionPerturbation):
    r"""Least-Relevant-First region perturbation: as :class:`MoRF` with regions replaced in ascending order
    of relevance. AOPC (same formula) is lower-is-better: removing what the map calls irrelevant should
    barely change the score.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import LeRF
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> lerf = LeRF(patch_size=2, n_steps=4, perturbation={"replacement": "constant"}, output="logit")
        >>> lerf.update(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), torch.rand(2, 1, 4, 4))
        >>> lerf.compute()["curve"].shape
        torch.Size([5])
    """

    order = "lerf"
    higher_is_better = False
