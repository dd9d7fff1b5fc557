"""Attribution methods behind one contract: ``attribute(method, model, inputs, target, **options)``.

Plain ``nn.Module`` + tensors in, tensors out: nothing here knows about Lightning.
"""

from impactx.attribution.base import Explainer
from impactx.attribution.registry import attribute, available, create_explainer, explainer_class, register

__all__ = ["Explainer", "attribute", "available", "create_explainer", "explainer_class", "register"]
