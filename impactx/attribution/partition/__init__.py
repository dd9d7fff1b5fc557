"""Partition SHAP (Owen values over shap's image hierarchy): the batched torch method and shap's own.

- :mod:`~impactx.attribution.partition.owen`: ``partition``, the lockstep priority queue on the inputs' device;
- :mod:`~impactx.attribution.partition.shap_reference`: ``shap_partition``, the installed shap library,
  one image at a time (the reference ``partition`` is tested against);
- :mod:`~impactx.attribution.partition.tree`, ``.queue``, ``.masking``, ``.blur``: shap's hierarchy, the
  queue's rounds, the masked images and shap's blur; ``.options``: what the two explainers share.
"""

from impactx.attribution.partition.owen import Partition, expansion_evals, partition_owen
from impactx.attribution.partition.shap_reference import ShapPartition

__all__ = ["Partition", "ShapPartition", "expansion_evals", "partition_owen"]
