"""LightningModules over one shared base (:class:`BaseModule`): the baseline classifier (stage 1), IMPACTX, ABN and
attribution-prior training."""

from impactx.modules.abn import AbnModule
from impactx.modules.attribution_prior import AttributionPriorModule
from impactx.modules.base import STAGES, BaseModule, Batch, LossOutput, Stage
from impactx.modules.classifier import ClassifierModule
from impactx.modules.impactx import ImpactxModule
from impactx.modules.optim import OptimizerSettings

__all__ = ["STAGES", "AbnModule", "AttributionPriorModule", "Batch", "BaseModule", "ClassifierModule", "ImpactxModule", "LossOutput", "OptimizerSettings", "Stage"]
