"""Backbones split into a feature extractor M and a head (``nn.Module`` only; no training logic)."""

from impactx.models.backbone import Backbone
from impactx.models.factory import PretrainedWeightsError, create_backbone
from impactx.models.lenet import LeNet5Features

__all__ = ["Backbone", "LeNet5Features", "PretrainedWeightsError", "create_backbone"]
