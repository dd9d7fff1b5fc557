"""LightningModules: the baseline classifier (stage 1); IMPACTX and attribution-prior modules follow."""

from impactx.modules.classifier import ClassifierModule

__all__ = ["ClassifierModule"]
