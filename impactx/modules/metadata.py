"""Self-describing checkpoints: what ``python train.py export`` needs, saved under ``checkpoint["impactx"]``.

Every checkpoint a :class:`~impactx.modules.base.BaseModule` saves carries, besides Lightning's
``hyper_parameters`` and ``state_dict``::

    checkpoint["impactx"] = {
        "format": 1,
        "impactx_version": "0.1.0",
        "module": "impactx.modules.impactx.ImpactxModule",   # the class the hyperparameters rebuild
        "data": {"class_path", "name", "num_classes", "in_chans", "image_size", "mean", "std", "class_names",
                 "map_normalisation", "init_args"},          # None when saved without a data module
        "explainer": {"source": ..., ...},                    # where the exported maps come from
        "explain_references": tensor [R,C,H,W],              # only for EG: unaugmented train images
        "test_metrics": {"test/acc": ..., ...},               # added by the runner after its test step
    }

Only plain data and tensors, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EG_REFERENCES", "EG_SAMPLES", "IG_STEPS", "MAP_SOURCES", "METADATA_FORMAT", "METADATA_KEY",
    "checkpoint_metadata", "data_description", "explainer_config", "plain_data", "record_test_metrics",
]

METADATA_KEY = "impactx"
METADATA_FORMAT = 1
#: ``decoder``: IMPACTX's D(LEP(x)); ``attention``: ABN's attention map; ``ig`` / ``eg``: gradient maps of a
#: plain classifier (exported as the TorchScript artifact's ``explain`` method only).
MAP_SOURCES = ("decoder", "attention", "ig", "eg")
IG_STEPS = 32
EG_REFERENCES = 16
EG_SAMPLES = 32
REFERENCE_SEED = 0


def plain_data(value: Any) -> Any:
    """``value`` as JSON-able data (tuples to lists, numpy scalars to numbers); unknown objects as their repr."""
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return repr(value)


def data_description(datamodule: Any) -> dict[str, Any] | None:
    """The data module's identity, shape and normalisation; ``None`` for ``None`` or for a data module that does
    not declare them (``num_classes``, ``in_chans``, ``image_size``, ``mean``, ``std``: any
    :class:`~impactx.data.ImageDataModule` does)."""
    required = ("num_classes", "in_chans", "image_size", "mean", "std")
    if datamodule is None or any(getattr(datamodule, name, None) is None for name in required):
        return None
    hparams = getattr(datamodule, "hparams", {}) or {}
    cls = type(datamodule)
    return {
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "name": getattr(datamodule, "name", cls.__name__),
        "num_classes": int(datamodule.num_classes),
        "in_chans": int(datamodule.in_chans),
        "image_size": int(datamodule.image_size),
        "mean": [float(m) for m in datamodule.mean],
        "std": [float(s) for s in datamodule.std],
        "class_names": [str(c) for c in getattr(datamodule, "class_names", None) or range(datamodule.num_classes)],
        "map_normalisation": getattr(datamodule, "map_normalisation", None),
        "init_args": plain_data({k: v for k, v in dict(hparams).items() if not str(k).startswith("_")}),
    }


def explainer_config(module: Any) -> dict[str, Any]:
    """Where an export of ``module`` takes its maps from (``module.map_source``), and with what settings."""
    source = getattr(module, "map_source", "ig")
    if source not in MAP_SOURCES:
        raise ValueError(f"{type(module).__name__}.map_source must be one of {MAP_SOURCES}, got {source!r}")
    hp = module.hparams
    if source == "decoder":
        return {"source": source, "target_method": hp.get("target_method"),
                "target_options": plain_data(hp.get("target_options")), "training": hp.get("training")}
    if source == "attention":
        return {"source": source, "attention_stage": hp.get("attention_stage")}
    if source == "ig":
        return {"source": source, "n_steps": IG_STEPS, "method": "gausslegendre", "baseline": "blank",
                "output": "logit", "target": "pred"}
    return {"source": source, "n_references": EG_REFERENCES, "n_samples": EG_SAMPLES, "seed": REFERENCE_SEED,
            "output": hp.get("output", "logit"), "target": "pred", "trained_references": hp.get("references")}


def explain_references(datamodule: Any, count: int = EG_REFERENCES, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """``count`` unaugmented train images ``[R,C,H,W]``, drawn under ``seed`` (the same for every call)."""
    dataset = datamodule.dataset("train", augment=False)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    return torch.stack([dataset[i][0] for i in picks]).float()


def checkpoint_metadata(module: Any, datamodule: Any) -> dict[str, Any]:
    """``checkpoint["impactx"]`` of ``module`` trained on ``datamodule`` (module docstring)."""
    import impactx

    cls = type(module)
    metadata: dict[str, Any] = {
        "format": METADATA_FORMAT,
        "impactx_version": impactx.__version__,
        "module": f"{cls.__module__}.{cls.__qualname__}",
        "data": data_description(datamodule),
        "explainer": explainer_config(module),
    }
    if metadata["explainer"]["source"] == "eg" and datamodule is not None:
        cached = getattr(module, "_explain_references", None)
        if cached is None:
            cached = explain_references(datamodule)
            module._explain_references = cached
        metadata["explain_references"] = cached.detach().cpu().clone()
    return metadata


def record_test_metrics(ckpt_path: str | Path, metrics: dict[str, float]) -> None:
    """Write ``metrics`` into ``checkpoint["impactx"]["test_metrics"]`` of ``ckpt_path`` (atomically); the file
    is not touched when it already records exactly these."""
    path = Path(ckpt_path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    metrics = {k: float(v) for k, v in metrics.items()}
    if checkpoint.get(METADATA_KEY, {}).get("test_metrics") == metrics:
        return
    checkpoint.setdefault(METADATA_KEY, {})["test_metrics"] = metrics
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
