"""The IMPACTX network (paper 3, Fig. 1): feature extractor M, Latent Explanation Predictor LEP, decoder D and
classifier C, with ``y_hat = C(M(x), LEP(x))`` and the map of its own decision ``r_hat = D(LEP(x))``.

Choices the paper leaves open (all in ``docs/impactx.md``):

- M is the stage-1 classifier A without its softmax (paper 3.1), so ``m`` has K components (``m_cut="logits"``);
  ``m_cut="features"`` cuts M at the backbone's pooled features instead (``m`` has ``num_features`` components).
- LEP is the backbone's feature extractor with A's linear head replaced by one fully connected layer of
  ``latent_dim`` (512) units and a sigmoid (paper 4.3). For LeNet-5 the 120- and 84-unit layers are part of the
  feature extractor and are kept; only the head is replaced.
- D (paper Fig. 2; the widths are not in the text): a fully connected layer to ``width x s x s``, a reshape, then
  ``n`` blocks of [Conv3x3, ReLU, Conv3x3, ReLU, UpSampling x2] with ``s * 2**n`` the input size, and a final
  Conv3x3 to the map's channels with no activation (targets normalised to ``[-1, 1]`` by ``max_abs`` keep their
  sign). ``s`` is the input size halved while it stays even and at least 4: 28 -> 7 with 2 blocks, 32 -> 4 with 3,
  96 -> 6 with 4 (one block more for STL-10, as the paper says), 224 -> 7 with 5.
- C: ``Linear(len(m) + latent_dim, hidden) -> ReLU -> Linear(hidden, K)``, a shallow fully connected network.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from impactx.models.backbone import Backbone

M_CUTS = ("logits", "features")


def decoder_layout(size: int, min_start: int = 4) -> tuple[int, int]:
    """``(start side s, number of upsampling blocks n)`` with ``s * 2**n == size``: halve while even and >= ``min_start``."""
    if size < 1:
        raise ValueError(f"decoder output size must be >= 1, got {size}")
    start, blocks = size, 0
    while start % 2 == 0 and start // 2 >= min_start:
        start, blocks = start // 2, blocks + 1
    return start, blocks


class Decoder(nn.Module):
    """``D: z [B, latent_dim] -> maps [B, out_channels, size, size]`` (FC, reshape, [Conv, Conv, UpSampling] blocks).

    Args:
        latent_dim: width of ``z``.
        size: side of the square output (the input images' side).
        out_channels: channels of the map (1, or the images' channel count).
        width: channels of every convolution but the last.
    """

    def __init__(self, latent_dim: int, size: int, out_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        if out_channels < 1 or width < 1:
            raise ValueError(f"decoder needs out_channels >= 1 and width >= 1, got {out_channels} and {width}")
        self.start, self.blocks = decoder_layout(size)
        self.size, self.width = size, width
        self.fc = nn.Sequential(nn.Linear(latent_dim, width * self.start * self.start), nn.ReLU())
        layers: list[nn.Module] = []
        for _ in range(self.blocks):
            layers += [
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.Upsample(scale_factor=2, mode="nearest"),
            ]
        layers.append(nn.Conv2d(width, out_channels, 3, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z [B, latent_dim]`` -> ``[B, out_channels, size, size]``."""
        grid = self.fc(z).view(z.shape[0], self.width, self.start, self.start)
        return self.convs(grid)


class LatentExplanationPredictor(nn.Module):
    """``LEP: x [B,C,H,W] -> z [B, latent_dim]`` in ``(0, 1)``: a backbone feature extractor, FC, sigmoid."""

    def __init__(self, features: nn.Module, num_features: int, latent_dim: int = 512) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Linear(num_features, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.features(x)))


class ImpactxOutput(NamedTuple):
    """One IMPACTX forward: ``logits [B,K]`` of C, ``maps [B,M,H,W]`` of D, ``m [B,len(m)]``, ``z [B,latent]``."""

    logits: torch.Tensor
    maps: torch.Tensor
    m: torch.Tensor
    z: torch.Tensor


class ImpactxNet(nn.Module):
    """The IMPACTX dual-branch network over a classifier ``A = head(features(x))`` (a :class:`Backbone`).

    ``forward(x [B,C,H,W]) -> logits [B,K]``; ``explain(x) -> maps [B,map_channels,H,W]`` (``D(LEP(x))``, the
    self-explaining protocol); ``forward_all(x)`` gives both with ``m`` and ``z`` in one pass.

    Args:
        classifier: A; its modules become M (taken over, not copied).
        lep_features: LEP's feature extractor; ``None`` copies A's (LEP initialised from A's weights).
        m_cut: ``"logits"`` (M = A without softmax, paper 3.1) or ``"features"`` (M = A's feature extractor).
        latent_dim: width of ``z`` (paper 4.3: 512).
        decoder_width: channels of D's convolutions.
        classifier_hidden: hidden units of C.
        map_channels: channels of D's maps (1: one map per image, as the map store holds).
        freeze_extractor: build M frozen (two-stage training, stage 2): its parameters do not require gradients
            and it stays in eval mode (BatchNorm statistics and dropout fixed) whatever ``train()`` is called with.
    """

    explain_needs_grad = False

    def __init__(
        self,
        classifier: Backbone,
        lep_features: nn.Module | None = None,
        *,
        m_cut: str = "logits",
        latent_dim: int = 512,
        decoder_width: int = 64,
        classifier_hidden: int = 256,
        map_channels: int = 1,
        freeze_extractor: bool = False,
    ) -> None:
        super().__init__()
        if m_cut not in M_CUTS:
            raise ValueError(f"m_cut must be one of {M_CUTS}, got {m_cut!r}")
        for name, value in (("latent_dim", latent_dim), ("classifier_hidden", classifier_hidden)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if map_channels not in (1, classifier.in_chans):
            raise ValueError(f"map_channels must be 1 or the input's {classifier.in_chans} channels, got {map_channels}")
        self.m_cut = m_cut
        self.in_chans, self.input_size, self.num_classes = classifier.in_chans, classifier.input_size, classifier.num_classes
        self.extractor = classifier if m_cut == "logits" else classifier.features
        m_dim = classifier.num_classes if m_cut == "logits" else classifier.num_features
        if lep_features is None:
            lep_features = copy.deepcopy(classifier.features)
        self.lep = LatentExplanationPredictor(lep_features, classifier.num_features, latent_dim)
        self.decoder = Decoder(latent_dim, classifier.input_size, map_channels, decoder_width)
        self.classifier = nn.Sequential(
            nn.Linear(m_dim + latent_dim, classifier_hidden), nn.ReLU(), nn.Linear(classifier_hidden, classifier.num_classes)
        )
        self.extractor_frozen = bool(freeze_extractor)
        if self.extractor_frozen:
            self.extractor.requires_grad_(False)
            self.extractor.eval()

    def train(self, mode: bool = True) -> ImpactxNet:
        super().train(mode)
        if self.extractor_frozen:
            self.extractor.eval()
        return self

    def _check(self, x: torch.Tensor) -> None:
        expected = (self.in_chans, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"IMPACTX built for images [B,{','.join(map(str, expected))}], got {list(x.shape)}")

    def forward_all(self, x: torch.Tensor) -> ImpactxOutput:
        """``x [B,C,H,W]`` -> :class:`ImpactxOutput` (logits of C, maps of D, ``m`` and ``z``)."""
        self._check(x)
        m = self.extractor(x)
        z = self.lep(x)
        logits = self.classifier(torch.cat([m, z], dim=1))
        return ImpactxOutput(logits, self.decoder(z), m, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,C,H,W]`` -> logits ``[B,K]`` of ``C(M(x), LEP(x))``."""
        self._check(x)
        return self.classifier(torch.cat([self.extractor(x), self.lep(x)], dim=1))

    def explain(self, images: torch.Tensor) -> torch.Tensor:
        """``D(LEP(images)) [B,map_channels,H,W]``: the map IMPACTX predicts for its decision on ``images [B,C,H,W]``."""
        self._check(images)
        return self.decoder(self.lep(images))
