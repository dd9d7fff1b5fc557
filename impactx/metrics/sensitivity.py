"""Max- and average sensitivity and the local Lipschitz estimate of an explainer, as torchmetrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.sensitivity import (
    ExplainerFn,
    avg_sensitivity,
    local_lipschitz_estimate,
    max_sensitivity,
)
from impactx.metrics.functional.validation import check_chunk, check_explainer, check_int, check_radius


class _ExplainerStability(ScalarMetric):
    """Mean over images of ``score_fn(model, images, targets, explainer, maps, **options)``, leaving out the NaN
    of an image one of whose noisy copies changed the prediction (``return_nan_when_prediction_changes``).
    Checks what every such metric takes: the explainer, the noise size (named ``noise_name``), the draws and
    the chunk."""

    higher_is_better = False
    score_fn: ClassVar[Callable[..., torch.Tensor]]
    noise_name: ClassVar[str]

    def __init__(self, explainer: ExplainerFn, options: dict[str, Any], **kwargs: Any) -> None:
        check_explainer(explainer)
        check_radius(self.noise_name, options[self.noise_name])
        check_int("n_samples", options["n_samples"])
        check_chunk(options["internal_batch_size"])
        super().__init__(**kwargs)
        self.explainer = explainer
        self.options = options

    def update(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor | None = None
    ) -> None:
        """``images [B,C,H,W]``, ``targets [B]``; ``maps`` = ``explainer(model, images, targets)`` if known."""
        values = type(self).score_fn(model, images, targets, self.explainer, maps, **self.options)
        self._accumulate(values[~torch.isnan(values)])  # NaN: a noisy copy changed the prediction


class MaxSensitivity(_ExplainerStability):
    r"""Mean max-sensitivity (Yeh et al., 2019; Quantus ``MaxSensitivity``) of ``explainer``:

    .. math:: \mathrm{SENS}_{\max}(x) = \max_{\|\delta\|_\infty \le r}
              \frac{\|\phi(x + \delta) - \phi(x)\|_F}{\|\phi(x)\|_F}

    estimated with ``n_samples`` uniform draws of ``delta`` per image (all explained as batches). Lower is
    better. ``return_nan_when_prediction_changes`` leaves out the images one of whose noisy copies changes the
    model's prediction (Quantus' option: their value is NaN). ``relative=False`` drops the denominator (Yeh et al.'s
    plain sensitivity); ``abs`` and ``normalise`` are Quantus' (``|phi|``; each map over its largest ``|value|``),
    with Quantus' defaults, ``False``. ``explain(model, x, y) -> map`` is any callable, e.g. ``create_explainer("ig")``.

    Example (an explainer that ignores the input is perfectly stable):
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import MaxSensitivity
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> weight_map = lambda m, x, y: m[1].weight[y].detach().view(-1, 1, 4, 4)
        >>> metric = MaxSensitivity(weight_map, radius=0.1, n_samples=3)
        >>> metric.update(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
        >>> float(metric.compute())
        0.0
    """

    score_fn = staticmethod(max_sensitivity)
    noise_name = "radius"

    def __init__(
        self,
        explainer: ExplainerFn,
        radius: float = 0.2,
        n_samples: int = 20,
        seed: int = 0,
        relative: bool = True,
        internal_batch_size: int | None = 128,
        return_nan_when_prediction_changes: bool = False,
        abs: bool = False,  # noqa: A002
        normalise: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(explainer, dict(
            radius=radius, n_samples=n_samples, seed=seed, relative=relative,
            internal_batch_size=internal_batch_size,
            return_nan_when_prediction_changes=return_nan_when_prediction_changes, abs=abs, normalise=normalise,
        ), **kwargs)


class AvgSensitivity(MaxSensitivity):
    r"""Mean average sensitivity (Yeh et al., 2019; Quantus ``AvgSensitivity``): as :class:`MaxSensitivity` with
    the mean over the draws instead of the maximum. Lower is better."""

    score_fn = staticmethod(avg_sensitivity)


class LocalLipschitzEstimate(_ExplainerStability):
    r"""Mean local Lipschitz estimate (Alvarez-Melis & Jaakkola, 2018; Quantus ``LocalLipschitzEstimate``):
    ``max_j ||phi(x + d_j) - phi(x)||_2 / ||d_j||_2`` over ``n_samples`` Gaussian draws of ``std``, each map divided
    by its largest ``|value|`` first (``normalise=True``, Quantus' default). Lower is better.
    ``return_nan_when_prediction_changes`` and ``abs`` as :class:`MaxSensitivity`."""

    score_fn = staticmethod(local_lipschitz_estimate)
    noise_name = "std"

    def __init__(self, explainer: ExplainerFn, std: float = 0.1, n_samples: int = 200, seed: int = 0,
                 internal_batch_size: int | None = 128, return_nan_when_prediction_changes: bool = False,
                 abs: bool = False, normalise: bool = True, **kwargs) -> None:  # noqa: A002
        super().__init__(explainer, dict(
            std=std, n_samples=n_samples, seed=seed, internal_batch_size=internal_batch_size,
            return_nan_when_prediction_changes=return_nan_when_prediction_changes, abs=abs, normalise=normalise,
        ), **kwargs)
