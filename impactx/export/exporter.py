"""``python train.py export``: a self-describing checkpoint to one artifact and its JSON description.

The checkpoint is read with ``torch.load(weights_only=True)``; its ``checkpoint["impactx"]`` metadata
(:mod:`impactx.modules.metadata`) names the module class (only classes under ``impactx.modules`` are built),
the data's normalisation and class names, and the explainer. The module is rebuilt from its hyperparameters
with nothing fetched (``pretrained=False``, no stage-1 checkpoint: every weight comes from the state dict).

Per format, where the maps come from (``metadata["map"]["where"]``):

==================  ====================================  =============================================
model               exported_program, onnx                torchscript
==================  ====================================  =============================================
IMPACTX, ABN        forward output ``maps``               forward output ``maps``
classifier, prior   none (probabilities only)             ``explain(images, target=None)`` (IG / EG)
==================  ====================================  =============================================

The artifact and the JSON are written to temporary names and renamed, the artifact first, so a folder never
holds a half-written file, and the JSON always describes the artifact beside it or fails its hash check.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

import impactx
from impactx.attribution.ig import quadrature
from impactx.export import standalone
from impactx.export.standalone import (
    ARTIFACT_FORMAT,
    ARTIFACT_NAMES,
    EMBEDDED_METADATA,
    FORMATS,
    canonical_json,
    sha256_file,
)
from impactx.export.wrappers import GradientExplainerExport, ProbabilitiesExport, SelfExplainingExport
from impactx.modules.metadata import METADATA_KEY, plain_data

__all__ = ["ExportError", "LOADER_NAME", "build_export_network", "export_checkpoint", "read_checkpoint",
           "rebuild_module"]

LOADER_NAME = "impactx_artifact.py"
MAX_TRACE_POINTS = 512
KINDS = {"ClassifierModule": "baseline", "AttributionPriorModule": "prior", "AbnModule": "abn",
         "ImpactxModule": "impactx"}
# Hyperparameters that would fetch or read files when the module is rebuilt; the state dict holds every weight.
_NO_FETCH = {"pretrained": False, "pretrained_file": None, "stage1_checkpoint": None}
_RANGES = {"max_abs": "unbounded; trained towards targets in [-1, 1] (each target map divided by its largest "
                      "absolute value)",
           "minmax": "unbounded; trained towards targets in [0, 1] (each target map min-max scaled)",
           "none": "unbounded; trained towards the raw target maps"}


class ExportError(Exception):
    """The checkpoint cannot be exported (missing, not self-describing, or of a module export does not know)."""


# ------------------------------------------------------------------------------------ checkpoint
def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``ckpt_path``, tensors and plain data only, with its impactx metadata."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ExportError(f"checkpoint {os.path.abspath(path)} is not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ExportError(f"{path} is not a checkpoint torch.load(weights_only=True) can read: "
                          f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ExportError(f"{path} is not a Lightning checkpoint of an impactx module (no state_dict and "
                          "hyper_parameters)")
    metadata = checkpoint.get(METADATA_KEY)
    if not isinstance(metadata, dict) or not metadata.get("module"):
        raise ExportError(f"{path} has no impactx metadata (checkpoint['{METADATA_KEY}']): it was saved by an "
                          "impactx older than self-describing checkpoints; train it again to export it")
    if not metadata.get("data"):
        raise ExportError(f"{path} was saved without a data module, so it does not know its normalisation and "
                          "classes; fit it with a data module (python train.py fit/run) to export it")
    return checkpoint


def _import_class(path: str, package: str) -> type:
    module_name, _, name = path.rpartition(".")
    if not module_name.startswith(package + ".") and module_name != package:
        raise ExportError(f"the checkpoint names the class {path}; export builds only classes of {package}")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ExportError(f"the checkpoint names the class {path}, which this impactx does not have") from None


def rebuild_module(checkpoint: dict[str, Any]) -> nn.Module:
    """The checkpoint's module, built from its hyperparameters (nothing fetched), its weights loaded, in eval mode."""
    from impactx.modules.base import BaseModule

    cls = _import_class(checkpoint[METADATA_KEY]["module"], "impactx.modules")
    if not (isinstance(cls, type) and issubclass(cls, BaseModule)):
        raise ExportError(f"{cls.__name__} is not an impactx module")
    hparams = {k: v for k, v in dict(checkpoint["hyper_parameters"]).items() if not k.startswith("_")}
    hparams.update({k: v for k, v in _NO_FETCH.items() if k in hparams})
    module = cls(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


# -------------------------------------------------------------------------------------- network
def blank_image(data: dict[str, Any]) -> torch.Tensor:
    """The black image ``[C,H,W]``, normalised: ``-mean / std`` per channel."""
    mean, std = torch.tensor(data["mean"]), torch.tensor(data["std"])
    size = data["image_size"]
    return (-mean / std).view(-1, 1, 1).expand(data["in_chans"], size, size).clone()


def gradient_paths(metadata: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(references [R,C,H,W], ref_index [S], alphas [S], weights [S])`` of the metadata's IG or EG explainer."""
    explainer, data = metadata["explainer"], metadata["data"]
    if explainer["source"] == "ig":
        alphas, weights = quadrature(explainer["method"], int(explainer["n_steps"]))
        references = blank_image(data).unsqueeze(0)
        return references, torch.zeros(alphas.shape[0], dtype=torch.long), alphas.float(), weights.float()
    references = metadata.get("explain_references")
    if not isinstance(references, torch.Tensor) or references.ndim != 4:
        raise ExportError("the checkpoint's EG explainer has no reference images (checkpoint['impactx']"
                          "['explain_references'])")
    samples = int(explainer["n_samples"])
    generator = torch.Generator().manual_seed(int(explainer["seed"]))
    ref_index = torch.randint(references.shape[0], (samples,), generator=generator)
    alphas = torch.rand(samples, generator=generator)
    return references.float(), ref_index, alphas, torch.full((samples,), 1.0 / samples)


def example_images(data: dict[str, Any], batch: int = 2) -> torch.Tensor:
    """A seeded batch ``[batch,C,H,W]`` to trace with (2, so that the batch dimension is not specialised to 1)."""
    size = data["image_size"]
    return torch.randn(batch, data["in_chans"], size, size, generator=torch.Generator().manual_seed(0))


def build_export_network(module: nn.Module, metadata: dict[str, Any], format: str) -> nn.Module:
    """The network written for ``format`` (see :mod:`impactx.export.wrappers`), in eval mode."""
    source = metadata["explainer"]["source"]
    size = metadata["data"]["image_size"]
    if source == "decoder":
        return SelfExplainingExport("decoder", module.net, size).eval()
    if source == "attention":
        return SelfExplainingExport("attention", module.model, size).eval()
    classifier = module.model.eval()
    if format != "torchscript":
        return ProbabilitiesExport(classifier).eval()
    references, ref_index, alphas, weights = gradient_paths(metadata)
    output = metadata["explainer"].get("output", "logit")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # TorchScript is deprecated from torch 2.10 on but is the only format that carries autograd.grad today.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        traced = torch.jit.trace(classifier, example_images(metadata["data"]), check_trace=False)
        return torch.jit.script(GradientExplainerExport(traced, references, ref_index, alphas, weights, output,
                                                        MAX_TRACE_POINTS).eval())


# ------------------------------------------------------------------------------------- metadata
def map_description(metadata: dict[str, Any], format: str) -> dict[str, Any]:
    """``metadata["map"]`` of the artifact: whether it carries a map, where it is, what it means, its range."""
    explainer, data = metadata["explainer"], metadata["data"]
    source = explainer["source"]
    size = data["image_size"]
    base = {"source": source, "shape": ["batch", 1, size, size], "explainer": explainer}
    if source == "decoder":
        target = explainer.get("target_method")
        return {**base, "available": True, "where": "forward",
                "meaning": f"IMPACTX's decoder D(LEP(x)): the {target} attribution map of the true class as the "
                           "latent explanation predictor reconstructs it from the image alone (no label needed)",
                "range": _RANGES.get(data.get("map_normalisation") or "max_abs", "unbounded")}
    if source == "attention":
        return {**base, "available": True, "where": "forward",
                "meaning": "ABN's attention map (sigmoid of the attention branch), resized bilinearly to the input",
                "range": "[0, 1]"}
    name = "Integrated Gradients from the black image" if source == "ig" else \
        f"Expected Gradients over {explainer['n_samples']} fixed (train reference, alpha) pairs"
    meaning = (f"{name} of the predicted class's {explainer.get('output', 'logit')}, summed over channels "
               "(positive: evidence for the class)")
    if format != "torchscript":
        return {**base, "available": False, "where": None, "meaning": meaning, "range": None,
                "note": "a gradient map cannot be carried by torch.export or ONNX; export --format torchscript "
                        "for an artifact whose explain() gives it"}
    return {**base, "available": True, "where": "explain", "meaning": meaning,
            "range": "unbounded, signed; per image the map sums to f(x) - f(reference) averaged over the paths "
                     "(completeness)"}


def artifact_metadata(checkpoint: dict[str, Any], ckpt_path: Path, format: str,
                      test_accuracy: float | None, accuracy_note: str) -> dict[str, Any]:
    """The description written beside the artifact and embedded in it."""
    metadata = checkpoint[METADATA_KEY]
    data = metadata["data"]
    hparams = {k: v for k, v in dict(checkpoint["hyper_parameters"]).items() if not k.startswith("_")}
    size, channels = data["image_size"], data["in_chans"]
    kind = KINDS.get(metadata["module"].rpartition(".")[2], "model")
    if kind == "impactx" and hparams.get("training") == "single_stage":
        kind = "impactx_single"
    return {
        "format": format,
        "kind": kind,
        "module": metadata["module"],
        "backbone": hparams.get("backbone"),
        "hyperparameters": plain_data(hparams),
        "dataset": data["name"],
        "data": plain_data({k: data[k] for k in ("class_path", "init_args")}),
        "classes": list(data["class_names"]),
        "input": {
            "shape": ["batch", channels, size, size], "channels": channels, "height": size, "width": size,
            "dtype": "float32", "color": "grayscale" if channels == 1 else "rgb",
            "mean": data["mean"], "std": data["std"],
            "preprocessing": f"resize to {size}x{size}, pixels to [0, 1], then (pixel - mean) / std per channel",
        },
        "outputs": {"probabilities": {"shape": ["batch", len(data["class_names"])], "meaning": "softmax of the logits"}},
        "map": map_description(metadata, format),
        "test_accuracy": test_accuracy,
        "test_accuracy_source": accuracy_note,
        "test_metrics": plain_data(metadata.get("test_metrics") or {}),
        "checkpoint": {"file": ckpt_path.name, "sha256": sha256_file(ckpt_path)},
        "impactx_version": impactx.__version__,
        "trained_with_impactx": metadata.get("impactx_version"),
        "torch_version": torch.__version__.split("+")[0],
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def measure_test_accuracy(module: nn.Module, data: dict[str, Any], batch_size: int = 256) -> float:
    """The module's accuracy on its data module's test split (raises ``FileNotFoundError`` without the files)."""
    cls = _import_class(data["class_path"], "impactx.data")
    args = {k: v for k, v in (data.get("init_args") or {}).items() if k != "maps"}
    datamodule = cls(**{**args, "download": False} if "download" in args else args)
    dataset = datamodule.dataset("test")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    correct = 0
    with torch.no_grad():
        for images, labels, *_ in loader:
            correct += int((module(images).argmax(dim=1) == labels).sum())
    return correct / len(dataset)


def test_accuracy_of(module: nn.Module, checkpoint: dict[str, Any], measure: bool) -> tuple[float | None, str]:
    """The recorded test accuracy (the runner's test step), else the measured one (``measure``), else ``None``."""
    recorded = (checkpoint[METADATA_KEY].get("test_metrics") or {}).get("test/acc")
    if recorded is not None:
        return float(recorded), "recorded by the run's test step"
    if not measure:
        return None, "not measured (--measure_accuracy false)"
    try:
        return measure_test_accuracy(module, checkpoint[METADATA_KEY]["data"]), "measured at export on the test split"
    except (FileNotFoundError, OSError, ExportError) as error:
        return None, f"not measured: test data not found ({str(error).splitlines()[0]})"


# ---------------------------------------------------------------------------------------- write
def _save(network: nn.Module, format: str, path: Path, data: dict[str, Any], text: str) -> None:
    example = example_images(data)
    if format == "exported_program":
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(network, (example,), dynamic_shapes={"images": {0: batch}})
        torch.export.save(program, str(path), extra_files={EMBEDDED_METADATA: text})
    elif format == "torchscript":
        if not isinstance(network, torch.jit.ScriptModule):
            with torch.no_grad():
                network = torch.jit.trace(network, example, check_trace=False)
        torch.jit.save(network, str(path), _extra_files={EMBEDDED_METADATA: text})
    else:
        _save_onnx(network, path, example, text)


def _save_onnx(network: nn.Module, path: Path, example: torch.Tensor, text: str) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError("--format onnx needs onnx, onnxscript and onnxruntime: pip install 'impactx[onnx]'") from None
    with torch.no_grad():
        outputs = network(example)
    names = ["probabilities", "maps"] if isinstance(outputs, tuple) else ["probabilities"]
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(network, (example,), input_names=["images"], output_names=names,
                                dynamic_shapes={"images": {0: batch}}, dynamo=True, verbose=False)
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = EMBEDDED_METADATA, text
    onnx.save(model, str(path))


def export_checkpoint(ckpt_path: str | Path, format: str, output: str | Path, measure_accuracy: bool = True,
                      say: Any = None) -> Path:
    """Export ``ckpt_path`` as ``format`` into the folder ``output``; returns the JSON description's path.

    The folder gets ``ARTIFACT_NAMES[format]``, ``<format>.json`` and the standalone loader
    ``impactx_artifact.py`` (:mod:`impactx.export.standalone`); other formats' files there are kept.
    """
    if format not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, got {format!r}")
    ckpt_path = Path(ckpt_path)
    checkpoint = read_checkpoint(ckpt_path)
    module = rebuild_module(checkpoint)
    accuracy, note = test_accuracy_of(module, checkpoint, measure_accuracy)
    metadata = artifact_metadata(checkpoint, ckpt_path, format, accuracy, note)
    network = build_export_network(module, checkpoint[METADATA_KEY], format)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / ARTIFACT_NAMES[format]
    description = folder / f"{format}.json"
    # The temporary names keep the suffix: torch.export.save warns about a .pt2 file named otherwise.
    tmp_artifact = folder / f".tmp-{os.getpid()}-{artifact.name}"
    tmp_description = folder / f".tmp-{os.getpid()}-{description.name}"
    try:
        with warnings.catch_warnings():
            # Tracing warns about every shape check it freezes; the exported graph is checked by the tests.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
            _save(network, format, tmp_artifact, checkpoint[METADATA_KEY]["data"], canonical_json(metadata))
        record = {"impactx_artifact": ARTIFACT_FORMAT, "artifact": artifact.name,
                  "artifact_sha256": sha256_file(tmp_artifact), "metadata": metadata}
        tmp_description.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp_artifact, artifact)
        os.replace(tmp_description, description)
    finally:
        for leftover in (tmp_artifact, tmp_description):
            leftover.unlink(missing_ok=True)
    shutil.copyfile(standalone.__file__, folder / LOADER_NAME)
    return description
