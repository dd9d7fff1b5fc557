"""Self-explaining exports: a trained checkpoint as one artifact (torch.export ``.pt2``, TorchScript or ONNX) that
takes images and gives probabilities and maps, with a JSON description beside it; see ``docs/export.md``.

- :func:`load` (:mod:`impactx.export.standalone`, which needs only torch): ``load(DIR)(images) -> (probs, maps)``.
- :func:`export_checkpoint` (:mod:`impactx.export.exporter`): what ``python train.py export`` runs.
- :mod:`impactx.export.explain`: what ``python train.py explain`` runs.
"""

from impactx.export.exporter import ExportError, export_checkpoint
from impactx.export.standalone import FORMATS, ArtifactError, ExportedModel, load

__all__ = ["FORMATS", "ArtifactError", "ExportError", "ExportedModel", "export_checkpoint", "load"]
