"""Lightning callbacks that evaluate and draw the explanations of the model under test.

- :class:`ExplanationEvaluation`: explanation metrics (MoRF/LeRF + AOPC, deletion/insertion AUC,
  sparseness by default; keep/remove, max-sensitivity, randomisation, noise-accuracy on request) on a fixed,
  seeded image subset, logged as synced scalars, a CSV, a PNG of the curves and W&B tables/plots.
- :class:`ExplanationGallery`: a few fixed images with their maps and per-image MoRF curves (the IMPACTX
  paper's figures 3-5 layout), saved as PNG and logged to W&B.
- :class:`NoiseRobustness`: test accuracy under Gaussian noise over the whole test split (the DeepPrior-EG paper's
  figure 6), as ``noise_accuracy.csv``/``.png`` beside other runs' curves; :func:`plot_noise_comparison` merges
  several runs' CSVs into that figure without a trainer (CLI: ``python -m callbacks.noise_robustness``).

Maps come from :mod:`impactx.attribution.sources`: the configured explainers (specs in
:mod:`impactx.attribution.specs`) and, for a model that follows the self-explaining protocol
(:mod:`impactx.models.protocol`), its own ``explain`` maps under the source name ``"self"``.

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
from callbacks.subset import subset_positions
from callbacks.suite import DEFAULT_METRICS, METRICS, MODEL, MetricResult

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_METRICS",
    "METRICS",
    "MODEL",
    "CurvePanel",
    "ExplanationEvaluation",
    "ExplanationGallery",
    "MetricResult",
    "NoiseRobustness",
    "log_key",
    "plot_curves",
    "plot_gallery",
    "plot_noise_comparison",
    "subset_positions",
]


def __getattr__(name: str):
    # Imported on first use, not above: ``python -m callbacks.noise_robustness`` imports this package first, and
    # runpy warns when the module it is about to run is already in sys.modules.
    if name in ("NoiseRobustness", "plot_noise_comparison"):
        from callbacks import noise_robustness

        return getattr(noise_robustness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
