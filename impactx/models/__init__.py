"""Backbones split into a feature extractor M and a head, and the self-explaining protocol (``nn.Module``
only; no training logic)."""

from impactx.models.abn import AttentionBranchNetwork
from impactx.models.backbone import Backbone
from impactx.models.factory import PretrainedWeightsError, create_backbone
from impactx.models.impactx_net import ImpactxNet
from impactx.models.lenet import LeNet5Features
from impactx.models.protocol import SelfExplaining, explain_needs_grad, is_self_explaining, self_maps

__all__ = [
    "AttentionBranchNetwork",
    "Backbone",
    "ImpactxNet",
    "LeNet5Features",
    "PretrainedWeightsError",
    "SelfExplaining",
    "create_backbone",
    "explain_needs_grad",
    "is_self_explaining",
    "self_maps",
]
