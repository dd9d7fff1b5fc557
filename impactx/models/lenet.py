"""LeNet-5 (LeCun et al., 1998) as used for M in the IMPACTX paper, split into features and head."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5Features(nn.Module):
    """The feature extractor M of LeNet-5: two conv/pool stages and the 120- and 84-unit layers.

    Input ``[B, in_chans, H, W]`` with ``H == W == input_size`` (28, 32 or 96); output ``[B, 84]``.
    For 28x28 the first convolution pads by 2 (the original LeNet-5 recipe for MNIST); for larger
    inputs (96x96, STL-10) an adaptive average pool brings the last feature map to 5x5, so the
    fully connected layers keep LeNet-5's sizes.
    """

    num_features = 84

    def __init__(self, in_chans: int = 3, input_size: int = 32) -> None:
        super().__init__()
        if input_size < 28:
            raise ValueError(f"LeNet-5 needs input_size >= 28, got {input_size}")
        # No inplace ReLUs: gradient attribution methods hook activations and take double backward.
        padding = 2 if input_size == 28 else 0
        self.in_chans = in_chans
        self.input_size = input_size
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, 6, kernel_size=5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5) if input_size > 32 else nn.Identity(),
        )
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, self.num_features),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3:] != (self.in_chans, self.input_size, self.input_size):
            raise ValueError(
                f"LeNet-5 built for [B,{self.in_chans},{self.input_size},{self.input_size}] got input of shape "
                f"{list(x.shape)}"
            )
        return self.fc(self.conv(x))
