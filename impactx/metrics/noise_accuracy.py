"""Accuracy under Gaussian input noise (a robustness curve of the model) as a torchmetric."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from impactx.metrics.base import CurveMetric
from impactx.metrics.functional.noise_accuracy import DEFAULT_NOISE_LEVELS, noise_accuracy_curve
from impactx.metrics.functional.validation import check_chunk, check_noise_levels


class NoiseAccuracy(CurveMetric):
    r"""Test accuracy at each Gaussian noise level (DeepPrior-EG paper, Figure 6):

    .. math:: \mathrm{acc}(\sigma_l) = \frac{1}{N}\sum_{i=1}^{N}
              \mathbb{1}\big[\arg\max_k f_k(x_i + \sigma_l z_i) = y_i\big],\quad z_i \sim \mathcal N(0, I)

    ``noise_levels`` default to 0, 0.1, ..., 1.0 (input units); ``z_i`` depends only on the image and
    ``seed``. Higher is better.

    Example (at noise level 0 this is plain accuracy):
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import NoiseAccuracy
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x = torch.rand(8, 1, 4, 4)
        >>> y = model(x).argmax(dim=1).detach()
        >>> metric = NoiseAccuracy(noise_levels=[0.0, 0.5])
        >>> metric.update(model, x, y)
        >>> float(metric.compute()["curve"][0])
        1.0
    """

    higher_is_better = True

    def __init__(
        self,
        noise_levels: Sequence[float] | torch.Tensor = DEFAULT_NOISE_LEVELS,
        seed: int = 0,
        clamp: tuple[float, float] | None = None,
        internal_batch_size: int | None = 128,
        **kwargs,
    ) -> None:
        levels = check_noise_levels(noise_levels)
        check_chunk(internal_batch_size)
        super().__init__(len(levels), **kwargs)
        self.noise_levels = levels
        self.options = dict(
            noise_levels=levels, seed=seed, clamp=clamp, internal_batch_size=internal_batch_size
        )

    def update(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> None:
        """``images [B,C,H,W]``, ``targets [B]``."""
        self._accumulate(noise_accuracy_curve(model, images, targets, **self.options))

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"curve": accuracy per noise level [L]}`` (levels in ``noise_levels``)."""
        return {"curve": self.mean_curve()}
