"""``create_backbone``: one factory over LeNet-5, timm and torchvision models.

Names:
- ``"lenet5"``: LeNet-5 (28x28, 32x32 or 96x96 input, 1 or 3 channels);
- ``"resnet18_cifar"``: torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool);
- ``"tv:<name>"``: any torchvision classification model (``torchvision.models.get_model``);
- anything else: a timm model (``mobilenetv2_100``, ``mobilenetv3_large_100``, ``efficientnet_b2``,
  ``resnet18``, ``resnet50``, ...), created with ``num_classes=0`` so that it returns pooled features.
"""

from __future__ import annotations

import os

import timm
import torch
import torchvision
from torch import nn

from impactx.models.backbone import Backbone
from impactx.models.lenet import LeNet5Features

# Smallest input each family is sensible for (below it, stride-32 networks pool to nothing).
_MIN_TIMM_INPUT = 32


class PretrainedWeightsError(RuntimeError):
    """Raised when ``pretrained=True`` but the weights cannot be fetched or read."""


def _headless_torchvision(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace a torchvision model's final classifier by ``Identity``; return it and its feature width."""
    for attr in ("fc", "classifier", "heads", "head"):
        layer = getattr(model, attr, None)
        if layer is None:
            continue
        if isinstance(layer, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model, layer.in_features
        if isinstance(layer, nn.Sequential):
            for i in range(len(layer) - 1, -1, -1):
                if isinstance(layer[i], nn.Linear):
                    width = layer[i].in_features
                    layer[i] = nn.Identity()
                    return model, width
    raise ValueError(f"cannot find the final linear layer of torchvision model {type(model).__name__}")


def _resnet18_cifar(in_chans: int) -> tuple[nn.Module, int]:
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return _headless_torchvision(model)


def _timm_features(
    name: str, in_chans: int, pretrained: bool, pretrained_file: str | None
) -> tuple[nn.Module, int]:
    kwargs: dict = {"num_classes": 0, "in_chans": in_chans}
    if pretrained_file is not None:
        if not os.path.isfile(pretrained_file):
            raise PretrainedWeightsError(f"pretrained_file {pretrained_file!r} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": os.path.abspath(pretrained_file)}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # timm raises many kinds (HTTP, OSError, HF hub errors) when offline
        if not pretrained:
            raise
        raise PretrainedWeightsError(
            f"could not load pretrained weights for timm model {name!r}: {type(err).__name__}: {err}. "
            "On a machine without internet, download the weights elsewhere (timm.create_model(name, "
            "pretrained=True) fills the Hugging Face cache, ~/.cache/huggingface) and copy the cache here, "
            "or pass pretrained_file=<path to a .safetensors/.pth state dict>."
        ) from err
    return model, model.num_features


def create_backbone(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    input_size: int = 32,
    pretrained: bool = False,
    pretrained_file: str | None = None,
) -> Backbone:
    """Build a :class:`Backbone` (features M + linear head) by name.

    Args:
        name: see the module docstring.
        num_classes: width of the head's output.
        in_chans: input channels (1 for digits/MNIST, 3 for CIFAR/STL-10).
        input_size: side of the square input the model will see.
        pretrained: load ImageNet (or the model's default) weights through timm's real loader; raises
            :class:`PretrainedWeightsError` with instructions when they cannot be fetched.
        pretrained_file: a local weights file for timm models (implies ``pretrained``).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if name == "lenet5":
        if pretrained or pretrained_file:
            raise ValueError("lenet5 has no pretrained weights; use pretrained=False")
        features: nn.Module = LeNet5Features(in_chans=in_chans, input_size=input_size)
        width = LeNet5Features.num_features
    elif name == "resnet18_cifar":
        if pretrained or pretrained_file:
            raise ValueError("resnet18_cifar has no pretrained weights; use pretrained=False")
        features, width = _resnet18_cifar(in_chans)
    elif name.startswith("tv:"):
        tv_name = name[3:]
        if tv_name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown torchvision classification model {tv_name!r}")
        try:
            model = torchvision.models.get_model(tv_name, weights="DEFAULT" if pretrained else None)
        except Exception as err:
            if not pretrained:
                raise
            raise PretrainedWeightsError(
                f"could not load pretrained torchvision weights for {tv_name!r}: {err}. Copy the weights file "
                f"into {torch.hub.get_dir()}/checkpoints/ on a machine without internet."
            ) from err
        if in_chans != 3:
            raise ValueError(f"torchvision models expect in_chans=3, got {in_chans}")
        features, width = _headless_torchvision(model)
    else:
        if not timm.is_model(name):
            raise ValueError(
                f"unknown backbone {name!r}: expected 'lenet5', 'resnet18_cifar', 'tv:<torchvision name>' or a timm "
                "model name (e.g. 'mobilenetv2_100', 'efficientnet_b2', 'resnet18')"
            )
        if input_size < _MIN_TIMM_INPUT:
            raise ValueError(f"timm backbone {name!r} needs input_size >= {_MIN_TIMM_INPUT}, got {input_size}")
        features, width = _timm_features(name, in_chans, pretrained or pretrained_file is not None, pretrained_file)
    return Backbone(features, width, num_classes, in_chans=in_chans, input_size=input_size, name=name)
