"""LightningModules over one shared base (:class:`BaseModule`): the baseline classifier (stage 1); IMPACTX,
ABN and attribution-prior modules follow."""

from impactx.modules.base import STAGES, BaseModule, Batch, LossOutput, Stage
from impactx.modules.classifier import ClassifierModule
from impactx.modules.optim import OptimizerSettings

__all__ = ["STAGES", "Batch", "BaseModule", "ClassifierModule", "LossOutput", "OptimizerSettings", "Stage"]
