"""Model-parameter randomisation sanity check (Adebayo et al., 2018) as a torchmetric."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric

from impactx.metrics.base import ScalarMetric
from impactx.metrics.functional.randomisation import (
    LAYER_ORDERS,
    SIMILARITIES,
    Similarity,
    model_randomisation,
    random_logit,
    randomisable_layers,
    similarity_function,
)
from impactx.metrics.functional.sensitivity import ExplainerFn
from impactx.metrics.functional.validation import check_bool, check_chunk, check_explainer


class ModelParameterRandomisation(Metric):
    r"""Mean similarity between maps of the trained model and of its cascadingly randomised copies.

    For layer step ``l`` (top layer first, layers 1..l re-initialised, on a deep copy):

    .. math:: s_l = \frac{1}{N}\sum_{i=1}^{N} \rho\big(|\phi_\theta(x_i)|,\ |\phi_{\tilde\theta_l}(x_i)|\big)

    with ``rho`` the Spearman rank correlation (or SSIM). A sound explanation decorrelates as the weights
    are destroyed: lower is better. ``model`` at construction only lists the layers (``layer_names``) to
    size the state; it is not stored. Entries where the similarity is undefined (a constant map) are left
    out of that layer's mean.

    Example (an explainer that ignores the model passes nothing: similarity stays 1):
        >>> import torch
        >>> from torch import nn
        >>> from impactx.metrics import ModelParameterRandomisation
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> metric = ModelParameterRandomisation(model, lambda m, x, y: x)
        >>> metric.layer_names
        ['3', '1']
        >>> metric.update(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
        >>> metric.compute()["curve"].tolist()
        [1.0, 1.0]
    """

    is_differentiable = False
    full_state_update = False
    higher_is_better = False

    similarity_sum: torch.Tensor
    similarity_count: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        explainer: ExplainerFn,
        similarity: Similarity = "spearman",
        abs: bool = True,
        seed: int = 0,
        internal_batch_size: int | None = 128,
        layer_order: str = "top_down",
        **kwargs,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module (used to list its layers), got {type(model).__name__}"
            )
        check_explainer(explainer)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        check_chunk(internal_batch_size)
        if layer_order not in LAYER_ORDERS:
            raise ValueError(f"layer_order must be one of {LAYER_ORDERS}, got {layer_order!r}")
        super().__init__(**kwargs)
        self.layer_names = randomisable_layers(model)
        if layer_order == "bottom_up":
            self.layer_names = list(reversed(self.layer_names))
        if not self.layer_names:
            raise ValueError("the model has no layer with parameters and reset_parameters() to randomise")
        self.explainer = explainer
        self.options = dict(
            similarity=similarity, abs=abs, seed=seed, internal_batch_size=internal_batch_size,
            layer_order=layer_order,
        )
        n = len(self.layer_names)
        self.add_state("similarity_sum", default=torch.zeros(n), dist_reduce_fx="sum")
        self.add_state("similarity_count", default=torch.zeros(n), dist_reduce_fx="sum")

    def update(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor | None = None
    ) -> None:
        """``images [B,C,H,W]``, ``targets [B]``; ``maps`` = ``explainer(model, images, targets)`` if known."""
        curve, names = model_randomisation(model, images, targets, self.explainer, maps, **self.options)
        if names != self.layer_names:
            raise ValueError(
                f"the model's randomisable layers {names} differ from those given at construction {self.layer_names}"
            )
        defined = torch.isfinite(curve)
        self.similarity_sum += (
            torch.where(defined, curve, torch.zeros_like(curve)).sum(dim=0).to(self.similarity_sum)
        )
        self.similarity_count += defined.sum(dim=0).to(self.similarity_count)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"curve": mean similarity per randomisation step [L]}`` (steps named by ``layer_names``)."""
        return {"curve": self.similarity_sum / self.similarity_count}


class RandomLogit(ScalarMetric):
    """Mean random-logit similarity (Sixt et al., 2020; Quantus ``RandomLogit``) of ``explainer``: each image's map
    of its class against its map of a randomly drawn other class (:func:`~impactx.metrics.functional.random_logit`;
    ``similarity`` ``"ssim"`` as Quantus, ``"pearson"`` or ``"spearman"``). Lower is better. Undefined values (a
    constant map) are left out."""

    higher_is_better = False

    def __init__(self, explainer, similarity: str = "ssim", seed: int = 0, abs: bool = False,  # noqa: A002
                 **kwargs) -> None:
        check_explainer(explainer)
        similarity_function(similarity)  # checks the name now
        check_bool("abs", abs)
        super().__init__(**kwargs)
        self.explainer = explainer
        self.similarity = similarity
        self.seed = seed
        self.abs = abs

    def update(self, model, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor | None = None) -> None:
        values = random_logit(model, images, targets, self.explainer, maps, similarity=self.similarity, seed=self.seed,
                              abs=self.abs)
        self._accumulate(values[~torch.isnan(values)])
