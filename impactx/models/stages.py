"""Spatial stages of the backbones :func:`impactx.models.create_backbone` builds.

A *spatial stage* is a run of modules of a backbone's feature extractor M (``backbone.features``) that maps a
feature map ``[B,C_in,h_in,w_in]`` to the next one ``[B,C,h,w]``; the stages, applied in order (after a stem
that is no stage), form M's convolutional trunk, which is followed by M's pooling/flattening (and, for
LeNet-5, its fully connected layers) and the head. The Attention Branch Network
(:mod:`impactx.models.abn`) splits a backbone at one stage and deep-copies the next one.

Families (tried in this order; names are dotted module names under ``backbone.features``):

- ``lenet5`` (:class:`~impactx.models.lenet.LeNet5Features`): ``conv`` split after each max-pool:
  ``(conv.0, conv.1, conv.2)`` and ``(conv.3, conv.4, conv.5)`` (the trailing ``conv.6`` pool is no stage);
- ``resnet``: ``layer1`` .. ``layerN`` (torchvision and timm ResNets, ``resnet18_cifar``);
- ``blocks``: the children of a ``blocks`` Sequential (timm EfficientNet, MobileNet v1/v2/v3 families);
- ``stages``: the children of a ``stages`` Sequential (timm ConvNeXt, CSPNet, NFNet, ByobNet, ...);
- ``regnet``: ``s1`` .. ``sN`` (timm RegNet);
- ``features``: a torchvision ``features`` Sequential: split after each max-pool when all its children are
  plain layers (VGG, AlexNet), else its children (MobileNet v2/v3, EfficientNet, ConvNeXt, DenseNet).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from impactx.models.backbone import Backbone
from impactx.models.lenet import LeNet5Features

__all__ = ["STAGE_FAMILIES", "SpatialStage", "spatial_stages"]


@dataclass(frozen=True)
class SpatialStage:
    """One spatial stage: ``members``, the dotted names (under ``backbone.features``) of the modules that run
    one after the other to form it; the last member's output is the stage output ``[B,C,h,w]``."""

    members: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a spatial stage needs at least one member module")

    @property
    def output(self) -> str:
        """The dotted name of the module whose forward output is the stage output."""
        return self.members[-1]

    def copy(self, features: nn.Module) -> nn.Module:
        """A deep copy of this stage's modules of ``features`` (weights included) as one module mapping the
        stage input ``[B,C_in,h_in,w_in]`` to its output: the member itself when there is one, else an
        ``nn.Sequential`` of the members."""
        modules = [copy.deepcopy(features.get_submodule(name)) for name in self.members]
        return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def _named_children(features: nn.Module, attr: str) -> list[SpatialStage] | None:
    container = getattr(features, attr, None)
    if not isinstance(container, nn.Sequential | nn.ModuleList) or len(container) == 0:
        return None
    return [SpatialStage((f"{attr}.{name}",)) for name, _ in container.named_children()]


def _split_after_max_pools(prefix: str, sequence: nn.Sequential) -> list[SpatialStage]:
    """Children of a plain-layer Sequential grouped into stages that each end with a ``MaxPool2d``; layers
    after the last max-pool (LeNet-5's adaptive pool) belong to no stage."""
    stages, current = [], []
    for name, child in sequence.named_children():
        current.append(f"{prefix}.{name}")
        if isinstance(child, nn.MaxPool2d):
            stages.append(SpatialStage(tuple(current)))
            current = []
    return stages


def _numbered(features: nn.Module, prefix: str) -> list[SpatialStage] | None:
    names = []
    while isinstance(getattr(features, f"{prefix}{len(names) + 1}", None), nn.Module):
        names.append(f"{prefix}{len(names) + 1}")
    return [SpatialStage((name,)) for name in names] or None


def _lenet5(features: nn.Module) -> list[SpatialStage] | None:
    if not isinstance(features, LeNet5Features):
        return None
    return _split_after_max_pools("conv", features.conv)


def _torchvision_features(features: nn.Module) -> list[SpatialStage] | None:
    sequence = getattr(features, "features", None)
    if not isinstance(sequence, nn.Sequential) or len(sequence) == 0:
        return None
    children = list(sequence.children())
    plain = all(next(child.children(), None) is None for child in children)
    if plain and any(isinstance(child, nn.MaxPool2d) for child in children):
        return _split_after_max_pools("features", sequence)
    return _named_children(features, "features")


_Finder = Callable[[nn.Module], list[SpatialStage] | None]

# (family, what it matches, finder): tried in order, the first finder that returns stages wins.
STAGE_FAMILIES: tuple[tuple[str, str, _Finder], ...] = (
    ("lenet5", "LeNet5Features: conv split after each max-pool", _lenet5),
    ("resnet", "layer1..layerN (torchvision/timm ResNets, resnet18_cifar)", lambda f: _numbered(f, "layer")),
    ("blocks", "children of `blocks` (timm EfficientNet, MobileNet v1/v2/v3)", lambda f: _named_children(f, "blocks")),
    ("stages", "children of `stages` (timm ConvNeXt, CSPNet, ...)", lambda f: _named_children(f, "stages")),
    ("regnet", "s1..sN (timm RegNet)", lambda f: _numbered(f, "s")),
    ("features", "children of a torchvision `features` Sequential, split after max-pools for plain-layer ones "
     "(VGG, AlexNet)", _torchvision_features),
)


def spatial_stages(backbone: Backbone) -> tuple[SpatialStage, ...]:
    """The ordered spatial stages of ``backbone.features`` (see the module docstring for the families).

    Raises:
        ValueError: naming the backbone and the supported families when none matches.
    """
    features = backbone.features
    for _family, _what, finder in STAGE_FAMILIES:
        stages = finder(features)
        if stages:
            return tuple(stages)
    families = "; ".join(f"{family} ({what})" for family, what, _ in STAGE_FAMILIES)
    raise ValueError(
        f"cannot find the spatial stages of backbone {backbone.name or '?'!r} ({type(features).__name__}); "
        f"supported families: {families}"
    )
