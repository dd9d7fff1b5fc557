"""Lightning callbacks that evaluate and draw the explanations of the model under test.

- :class:`ExplanationEvaluation`: explanation metrics (MoRF/LeRF + AOPC, deletion/insertion AUC,
  sparseness by default; keep/remove, max-sensitivity, randomisation, noise-accuracy on request) on a fixed,
  seeded image subset, logged as synced scalars, a CSV, a PNG of the curves and W&B tables/plots.
- :class:`ExplanationGallery`: a few fixed images with their maps and per-image MoRF curves (the IMPACTX
  paper's figures 3-5 layout), saved as PNG and logged to W&B.

Self-explaining protocol
------------------------
A LightningModule is *self-explaining* when it has a method

    ``explain(images: Tensor [B,C,H,W]) -> maps: Tensor [B,1,H,W] or [B,C,H,W]``

returning its own attribution maps for a batch of (normalised) images, on the images' device; e.g. the
decoder output ``D(LEP(x))`` of an IMPACTX model. The maps need not depend on a target class. The callbacks
evaluate them under the source name ``"self"`` (``self_maps=True``), alongside every configured explainer.
``explain`` is called with the module in eval mode and under ``torch.no_grad()``, so it works with
Lightning's default ``Trainer(inference_mode=True)``; a module whose ``explain`` takes gradients sets the
class attribute ``explain_needs_grad = True`` (it then runs under ``torch.enable_grad()`` and needs
``Trainer(inference_mode=False)``). ``explain`` must not change BatchNorm statistics or dropout state.

Gradients
---------
Gradient explainers (``ig``, ``eg``, ``wg``, ``deepprior_eg``) cannot run under ``torch.inference_mode()``,
which Lightning wraps around validation and testing by default; the callbacks raise a clear error at
``on_test_start``/``on_validation_start`` asking for ``Trainer(inference_mode=False)``
(``--trainer.inference_mode=false``). Gradient-free maps (``partition``, ``shap_partition``, self maps) need
nothing.
"""

from callbacks.evaluation import CSV_COLUMNS, ExplanationEvaluation, log_key
from callbacks.gallery import ExplanationGallery
from callbacks.plots import CurvePanel, plot_curves, plot_gallery
from callbacks.sources import SELF, is_self_explaining
from callbacks.subset import subset_positions
from callbacks.suite import DEFAULT_METRICS, METRICS, MODEL, MetricResult

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_METRICS",
    "METRICS",
    "MODEL",
    "SELF",
    "CurvePanel",
    "ExplanationEvaluation",
    "ExplanationGallery",
    "MetricResult",
    "is_self_explaining",
    "log_key",
    "plot_curves",
    "plot_gallery",
    "subset_positions",
]
