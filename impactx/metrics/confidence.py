"""Average Drop % and % Increase in Confidence (Grad-CAM++) as torchmetrics."""

from __future__ import annotations

import torch
from torch import nn

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.confidence import confidence_change
from impactx.metrics.functional.validation import check_chunk, check_output_name


class _ConfidenceMetric(ScalarMetric):
    _index = 0

    def __init__(self, output: str = "prob", internal_batch_size: int | None = 128, **kwargs) -> None:
        check_output_name(output)
        check_chunk(internal_batch_size)
        super().__init__(**kwargs)
        self.options = dict(output=output, internal_batch_size=internal_batch_size)

    def update(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor
    ) -> None:
        """``images [B,C,H,W]``, ``targets [B]``, ``maps [B,C,H,W]`` or ``[B,1,H,W]``."""
        self._accumulate(confidence_change(model, images, targets, maps, **self.options)[self._index])


class AverageDrop(_ConfidenceMetric):
    r"""Average Drop % (Chattopadhyay et al., 2018):

    .. math:: \frac{100}{N}\sum_{i=1}^{N}\frac{\max(0,\,Y_i^c - O_i^c)}{Y_i^c}

    with ``Y`` the class probability on the image and ``O`` on the image multiplied by the map scaled to
    ``[0, 1]`` (:func:`impactx.metrics.functional.explanation_mask`). Lower is better.

    Example (a map of ones keeps the image, so nothing drops):
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import AverageDrop
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> metric = AverageDrop()
        >>> metric.update(model, x, torch.tensor([0, 2]), torch.ones(2, 1, 4, 4))
        >>> float(metric.compute())
        0.0
    """

    _index = 0
    higher_is_better = False


class IncreaseInConfidence(_ConfidenceMetric):
    r"""% Increase in Confidence (Chattopadhyay et al., 2018):
    :math:`\frac{100}{N}\sum_{i} \mathbb{1}[Y_i^c < O_i^c]` (see :class:`AverageDrop`). Higher is better.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import IncreaseInConfidence
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> metric = IncreaseInConfidence()
        >>> metric.update(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 2]), torch.ones(2, 1, 4, 4))
        >>> float(metric.compute())
        0.0
    """

    _index = 1
    higher_is_better = True
