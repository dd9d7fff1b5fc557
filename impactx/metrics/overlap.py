"""AUC of Overlap with ground-truth masks (weighted-IG paper, section 6) as a torchmetric."""

from __future__ import annotations

import torch

from impactx.metrics.base import CurveMetric
from impactx.metrics.functional.overlap import overlap_auc, overlap_curve
from impactx.metrics.functional.validation import check_bool, check_int


class OverlapAUC(CurveMetric):
    r"""AUC of Overlap between the top of the map and the object mask ``S``:

    .. math:: \mathrm{Overlap}(p) = \frac{|T_p \cap S|}{p|S|},\qquad
              \mathrm{AUC} \approx \frac{1}{N}\sum_{i=1}^{N}\mathrm{Overlap}(i/N)

    with ``T_p`` the top ``p|S|`` pixels of the map (see :func:`impactx.metrics.functional.overlap_curve`).
    Images with an empty mask are skipped. Higher is better. ``abs``, ``normalise``: Quantus' ``TopKIntersection``
    options (see the functional core).

    Example (a map that ranks the object first overlaps it perfectly):
        >>> import torch
        >>> from impactx.metrics import OverlapAUC
        >>> masks = torch.zeros(1, 1, 4, 4); masks[..., :2, :2] = 1
        >>> metric = OverlapAUC(n_steps=4)
        >>> metric.update(masks + 0.1 * torch.rand(1, 1, 4, 4), masks)
        >>> float(metric.compute()["auc"])
        1.0
    """

    higher_is_better = True

    def __init__(self, n_steps: int = 100, abs: bool = False, normalise: bool = False,  # noqa: A002
                 **kwargs) -> None:
        check_int("n_steps", n_steps)
        check_bool("abs", abs)
        check_bool("normalise", normalise)
        super().__init__(n_steps, **kwargs)
        self.n_steps = n_steps
        self.options = dict(n_steps=n_steps, abs=abs, normalise=normalise)

    def update(self, maps: torch.Tensor, masks: torch.Tensor) -> None:
        """``maps [B,C,H,W]`` or ``[B,1,H,W]``; ``masks [B,1,H,W]`` or ``[B,H,W]`` (nonzero = object)."""
        self._accumulate(overlap_curve(maps, masks, **self.options))

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"curve": mean Overlap(i/N) [N], "auc": its mean}``."""
        curve = self.mean_curve()
        return {"curve": curve, "auc": overlap_auc(curve)}
