"""Load an impactx export and run it: ``load(DIR)(images) -> (probabilities, maps)``.

This file needs only torch (and onnxruntime for an ONNX artifact): ``python train.py export`` copies it into
the export folder as ``impactx_artifact.py``, so a viewer, a service or a notebook without impactx can do::

    import sys; sys.path.insert(0, "DIR")
    import impactx_artifact
    model = impactx_artifact.load("DIR")            # or load("DIR", format="onnx") when DIR holds several
    probabilities, maps = model(images)             # images [B,C,H,W] float32, normalised as model.metadata says

An export folder holds, per format, the artifact and a JSON description beside it (``<format>.json``): the
class names, the input's size, channels and normalisation, the map's meaning and range, the test accuracy,
the impactx version and the artifact's sha256. The same description (less the hash) is embedded in the
artifact. :func:`load` refuses, with one line (:class:`ArtifactError`), an artifact whose hash is not the
JSON's, or whose embedded description is not the JSON's, before it runs anything.

Nothing is unpickled beyond tensors: a ``.pt2`` file is loaded with every ``torch.load`` inside forced to
``weights_only`` (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), and one that holds pickled script or opaque objects is
refused; TorchScript files load through TorchScript's own restricted unpickler; ONNX files are protobuf.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_NAMES", "EMBEDDED_METADATA", "ArtifactError", "ExportedModel", "FORMATS",
           "load", "sha256_file"]

ARTIFACT_FORMAT = 1
FORMATS = ("exported_program", "torchscript", "onnx")
ARTIFACT_NAMES = {"exported_program": "model.pt2", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
#: The name of the embedded description: an ``extra_files`` entry (.pt2, TorchScript) or an ONNX metadata key.
EMBEDDED_METADATA = "impactx.json"
_PICKLED_CONSTANT_PREFIXES = ("custom_obj_", "opaque_obj_")


class ArtifactError(Exception):
    """The export folder, its description or its artifact is missing, altered or unusable."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(data: Any) -> str:
    """``data`` as the JSON text embedded in an artifact (sorted keys, so equal data give equal text)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


# -------------------------------------------------------------------------------------- finding
def _read_description(path: Path) -> dict[str, Any]:
    try:
        description = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path} is not a readable JSON description: {error}") from None
    if not isinstance(description, dict) or description.get("impactx_artifact") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path} is not an impactx artifact description (format {ARTIFACT_FORMAT})")
    for key in ("artifact", "artifact_sha256", "metadata"):
        if key not in description:
            raise ArtifactError(f"{path} lacks {key!r}")
    fmt = description["metadata"].get("format") if isinstance(description["metadata"], dict) else None
    if fmt not in FORMATS:
        raise ArtifactError(f"{path} names the format {fmt!r}, expected one of {FORMATS}")
    return description


def _descriptions(folder: Path) -> dict[str, Path]:
    found = {}
    for candidate in sorted(folder.glob("*.json")):
        with contextlib.suppress(ArtifactError):
            found[_read_description(candidate)["metadata"]["format"]] = candidate
    return found


def find_description(path: str | Path, format: str | None = None) -> Path:
    """The JSON description to load: ``path`` itself (a ``.json``), the one beside an artifact file, or the one
    in a folder (of ``format`` when the folder holds several)."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise ArtifactError(f"format must be one of {FORMATS}, got {format!r}")
    if path.is_file() and path.suffix == ".json":
        return path
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise ArtifactError(f"{path} is not an export folder (run `python train.py export` first)")
    found = _descriptions(folder)
    if path.is_file():
        found = {f: p for f, p in found.items() if json.loads(p.read_text())["artifact"] == path.name}
    if format is not None:
        found = {f: p for f, p in found.items() if f == format}
    if not found:
        wanted = f" for the format {format!r}" if format else ""
        raise ArtifactError(f"{path} holds no impactx artifact description{wanted}")
    if len(found) > 1:
        raise ArtifactError(f"{folder} holds the formats {sorted(found)}: pass format= (or --format) to choose one")
    return next(iter(found.values()))


# -------------------------------------------------------------------------------------- loading
@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` in the body is ``weights_only`` (torch.export.load falls back to full pickle)."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def _check_pt2_archive(path: Path) -> None:
    """Refuse a .pt2 archive with entries that ``torch.export.load`` would unpickle in full."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise ArtifactError(f"{path} is not a .pt2 archive") from None
    for name in names:
        if os.path.basename(name).startswith(_PICKLED_CONSTANT_PREFIXES):
            raise ArtifactError(f"{path} holds pickled objects ({name}); impactx artifacts never do, not loaded")


def _load_exported_program(path: Path, device: str) -> tuple[Any, str]:
    _check_pt2_archive(path)
    extra = {EMBEDDED_METADATA: ""}
    try:
        with _weights_only_loads():
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as error:
        raise ArtifactError(f"{path} could not be loaded as an ExportedProgram: {type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''}") from error
    return program.module().to(device), extra[EMBEDDED_METADATA]


def _load_torchscript(path: Path, device: str) -> tuple[Any, str]:
    extra = {EMBEDDED_METADATA: ""}
    try:
        with warnings.catch_warnings():  # deprecated since torch 2.10, still the one format with autograd.grad
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load` is deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as error:
        raise ArtifactError(f"{path} could not be loaded as TorchScript: {type(error).__name__}") from error
    text = extra[EMBEDDED_METADATA]
    return module.eval(), text.decode() if isinstance(text, bytes) else text


def _load_onnx(path: Path, device: str) -> tuple[Any, str]:
    try:
        import onnxruntime
    except ImportError:
        raise ArtifactError("an ONNX artifact needs onnxruntime: pip install onnxruntime") from None
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else \
        ["CPUExecutionProvider"]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as error:
        raise ArtifactError(f"{path} could not be loaded by onnxruntime: {type(error).__name__}") from error
    return session, session.get_modelmeta().custom_metadata_map.get(EMBEDDED_METADATA, "")


_LOADERS = {"exported_program": _load_exported_program, "torchscript": _load_torchscript, "onnx": _load_onnx}


class ExportedModel:
    """A loaded artifact: ``model(images) -> (probabilities [B,K], maps [B,1,H,W] or None)``.

    ``images`` are ``[B,C,H,W]`` float32, resized to ``metadata["input"]["height"]`` x ``["width"]`` and normalised
    per channel as ``(pixel - mean) / std`` with pixels in ``[0, 1]``. ``maps`` is ``None`` for an artifact that
    carries none (``metadata["map"]["available"]`` is false: a plain classifier's ExportedProgram or ONNX file;
    its TorchScript artifact has the map). Attributes: ``metadata`` (the description), ``format``, ``path``.
    """

    def __init__(self, runner: Any, metadata: dict[str, Any], path: Path, device: str) -> None:
        self.runner = runner
        self.metadata = metadata
        self.format = metadata["format"]
        self.path = path
        self.device = device
        self._map_where = (metadata.get("map") or {}).get("where")

    @property
    def has_maps(self) -> bool:
        return self._map_where is not None

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["classes"])

    def check_images(self, images: Any) -> torch.Tensor:
        """``images`` as a float32 tensor ``[B,C,H,W]`` of this model's shape, or a ``ValueError`` naming both."""
        images = torch.as_tensor(images)
        spec = self.metadata["input"]
        expected = [spec["channels"], spec["height"], spec["width"]]
        if images.ndim != 4 or list(images.shape[1:]) != expected or images.shape[0] < 1:
            raise ValueError(f"images must be [B>=1, {', '.join(map(str, expected))}] (normalised), got "
                             f"{list(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float (normalised as metadata['input'] says), got {images.dtype}")
        return images.to(device=self.device, dtype=torch.float32)

    def __call__(self, images: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = self.check_images(images)
        if self.format == "onnx":
            outputs = self.runner.run(None, {"images": images.cpu().numpy()})
            probabilities = torch.from_numpy(outputs[0])
            return probabilities, torch.from_numpy(outputs[1]) if len(outputs) > 1 else None
        with torch.no_grad():
            outputs = self.runner(images)
        if isinstance(outputs, tuple | list):
            return outputs[0], outputs[1]
        if self._map_where == "explain":
            return outputs, self.explain(images, outputs.argmax(dim=1))
        return outputs, None

    def explain(self, images: Any, target: torch.Tensor | None = None) -> torch.Tensor:
        """The maps ``[B,1,H,W]`` of ``target [B]`` (``None``: the predicted class). Forward-output maps (IMPACTX,
        ABN) are of the model's own choosing and take no target."""
        if self._map_where is None:
            raise ArtifactError(f"the {self.format} artifact of this model carries no map: "
                                f"{self.metadata['map'].get('note', '')}")
        images = self.check_images(images)
        if self._map_where == "forward":
            if target is not None:
                raise ValueError("this model's maps are a forward output and take no target")
            return self(images)[1]
        if torch.is_inference_mode_enabled():
            raise RuntimeError("explain takes gradients: call it outside torch.inference_mode()")
        previous = torch.is_grad_enabled()
        try:
            target = None if target is None else torch.as_tensor(target, device=images.device).long().view(-1)
            return self.runner.explain(images, target)
        finally:
            torch.set_grad_enabled(previous)


def load(path: str | Path, format: str | None = None, device: str = "cpu") -> ExportedModel:
    """The artifact described in ``path`` (an export folder, its JSON, or the artifact file), checked.

    Raises :class:`ArtifactError` (one line) when the description is missing or unreadable, the artifact's sha256
    is not the description's, the embedded description differs from the JSON, or the file does not load.
    """
    json_path = find_description(path, format)
    description = _read_description(json_path)
    metadata = description["metadata"]
    artifact = json_path.parent / description["artifact"]
    if not artifact.is_file():
        raise ArtifactError(f"{json_path} describes {artifact}, which does not exist")
    if sha256_file(artifact) != description["artifact_sha256"]:
        raise ArtifactError(f"{artifact}'s sha256 is not the one {json_path.name} records: the artifact was altered "
                            "or replaced; not loaded")
    runner, embedded = _LOADERS[metadata["format"]](artifact, device)
    try:
        embedded_data = json.loads(embedded)
    except json.JSONDecodeError:
        embedded_data = None
    if embedded_data != metadata:
        raise ArtifactError(f"{json_path.name} does not match the description embedded in {artifact.name}: the JSON "
                            "was edited or belongs to another artifact; not loaded")
    return ExportedModel(runner, metadata, artifact, device)
