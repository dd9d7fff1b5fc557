"""Attribution methods behind one contract: ``attribute(method, model, inputs, target, **options)``.

Plain ``nn.Module`` + tensors in, tensors out: nothing here knows about Lightning.
"""

from impactx.attribution.base import Explainer
from impactx.attribution.registry import attribute, available, create_explainer, explainer_class, register

# Importing a method's module registers it.
from impactx.attribution import advise, agi, blur_ig, boundary_ig, cam, deeplift, deepprior, eg, fullgrad, gradients, hessians, idgi, ig, noisegrad, partition, random_map, wg  # noqa: E402,F401  isort: skip

__all__ = ["Explainer", "attribute", "available", "create_explainer", "explainer_class", "register"]
