"""A classifier split into a feature extractor M and a linear head Q (the paper's A = Q(M))."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """``A(x) = head(features(x))``.

    ``features``: ``[B, C, H, W] -> [B, num_features]`` (the IMPACTX feature extractor M, also the
    template for the Latent Explanation Predictor); ``head``: ``[B, num_features] -> [B, num_classes]``
    logits. ``in_chans`` and ``input_size`` record the input the model was built for.
    """

    def __init__(
        self,
        features: nn.Module,
        num_features: int,
        num_classes: int,
        in_chans: int,
        input_size: int,
        name: str = "",
    ) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.input_size = input_size
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, in_chans, H, W]`` -> logits ``[B, num_classes]``."""
        return self.head(self.features(x))
