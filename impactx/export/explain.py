"""``python train.py explain --model DIR IMAGE...``: an exported model on PNG and JPEG files.

Each image is read, checked against the model's channels (a colour image for a grayscale model, or the other
way round, is an error on that file: converting silently would explain an image the model never saw), resized
to the model's input size (bilinear, antialiased; a non-square image is stretched) and normalised as the
artifact's description says; then the model's prediction and map are drawn into ``<output>/<stem>.explained.png``
(the image, the map over it, the top classes with their probabilities). A bad file is reported in one line
and the others are still processed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from impactx.export.standalone import ExportedModel

__all__ = ["ImageError", "explain_files", "figure_path", "read_image", "save_example_image"]

READABLE_FORMATS = ("PNG", "JPEG")


class ImageError(Exception):
    """An input image is missing, unreadable, not PNG/JPEG, or has the wrong number of channels."""


@dataclass(frozen=True)
class Explanation:
    """One explained image: ``image [H,W,C]`` in ``[0, 1]`` (as the model saw it, before normalisation),
    ``probabilities [K]``, ``map [H,W]`` (``None`` when the artifact carries none)."""

    path: Path
    image: np.ndarray
    probabilities: np.ndarray
    map: np.ndarray | None


def read_image(path: str | Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """``path`` as ``[H,W,C]`` float32 in ``[0, 1]``, resized to ``size = (H, W)``; :class:`ImageError` if unusable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            kind = image.format
            if kind not in READABLE_FORMATS:
                raise ImageError(f"{path}: a {kind} image; explain reads PNG and JPEG")
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            bands = [b for b in image.getbands() if b != "A"]
            if len(bands) not in (1, 3):
                raise ImageError(f"{path}: a {image.mode} image with {len(bands)} colour channels; expected 1 or 3")
            if len(bands) != channels:
                have = "grayscale" if len(bands) == 1 else "RGB"
                want = "grayscale (1 channel)" if channels == 1 else f"RGB ({channels} channels)"
                raise ImageError(f"{path}: a {have} image ({len(bands)} channel{'s' * (len(bands) > 1)}); the model "
                                 f"takes {want}")
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image, dtype=np.float32) / 65535.0
            elif image.mode == "F":
                pixels = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
            else:
                pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PIL can read (explain reads PNG and JPEG)") from None
    except OSError as error:
        raise ImageError(f"{path}: unreadable ({error})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0)
    if tuple(tensor.shape[-2:]) != tuple(size):
        tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return tensor[0].permute(1, 2, 0).numpy()


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``image [H,W,C]`` in ``[0, 1]`` -> the model's input ``[1,C,H,W]``: ``(pixel - mean) / std`` per channel."""
    tensor = torch.from_numpy(image).permute(2, 0, 1).float()
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
    return ((tensor - mean_t) / std_t).unsqueeze(0)


def save_example_image(datamodule: Any, folder: str | Path, position: int = 0) -> Path:
    """Test image ``position`` of ``datamodule``, de-normalised, as an 8-bit PNG in ``folder``, named by its
    label: ``test-<position>-<class>.png``."""
    from PIL import Image

    image, label, _ = datamodule.dataset("test")[position][:3]
    mean = torch.tensor(list(datamodule.mean)).view(-1, 1, 1)
    std = torch.tensor(list(datamodule.std)).view(-1, 1, 1)
    pixels = ((image * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    name = str(datamodule.class_names[int(label)]).replace("/", "_").replace(" ", "_")
    path = Path(folder) / f"test-{position}-{name}.png"
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB").save(
        tmp, format="PNG")
    os.replace(tmp, path)
    return path


def figure_path(output: Path, image: Path, taken: set[Path]) -> Path:
    """``<output>/<stem>.explained.png``, numbered when two inputs share a stem."""
    candidate = output / f"{image.stem}.explained.png"
    n = 2
    while candidate in taken:
        candidate = output / f"{image.stem}-{n}.explained.png"
        n += 1
    taken.add(candidate)
    return candidate


def top_classes(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities)[:k]
    return [{"class": classes[i], "index": int(i), "probability": float(probabilities[i])} for i in order]


MAP_TITLES = {"decoder": "IMPACTX map D(LEP(x))", "attention": "ABN attention map", "ig": "Integrated Gradients",
              "eg": "Expected Gradients"}


def draw(explanation: Explanation, top: list[dict[str, Any]], map_info: dict[str, Any], path: Path) -> None:
    """The image, the map over it and the ``top`` classes (:func:`top_classes`), as a PNG at ``path`` (written to a
    temporary name first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = explanation.image
    shown = image[:, :, 0] if image.shape[2] == 1 else image
    cmap = "gray" if image.shape[2] == 1 else None
    panels = 3 if explanation.map is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.4 * panels, 3.4), gridspec_kw={"width_ratios": [1] * (panels - 1) + [1.3]})
    axes[0].imshow(shown, cmap=cmap, vmin=0, vmax=1)
    axes[0].set_title("input")
    if explanation.map is not None:
        values = explanation.map
        signed = float(values.min()) < 0
        limit = float(np.abs(values).max()) or 1.0
        axes[1].imshow(shown, cmap=cmap, vmin=0, vmax=1)
        overlay = axes[1].imshow(values, cmap="bwr" if signed else "inferno", alpha=0.6,
                                 vmin=-limit if signed else float(values.min()), vmax=limit)
        fig.colorbar(overlay, ax=axes[1], fraction=0.046, pad=0.04)
        axes[1].set_title(MAP_TITLES.get(map_info.get("source"), "map"), fontsize=10)
    for ax in axes[:-1]:
        ax.set_xticks([])
        ax.set_yticks([])
    bars = axes[-1]
    bars.barh(range(len(top))[::-1], [t["probability"] for t in top], color="tab:blue")
    bars.set_yticks(range(len(top))[::-1], [t["class"] for t in top])
    bars.set_xlim(0, 1)
    for row, t in zip(range(len(top))[::-1], top, strict=True):
        bars.text(min(t["probability"] + 0.02, 0.8), row, f"{t['probability']:.3f}", va="center")
    bars.set_title("top classes")
    fig.suptitle(f"{explanation.path.name}: {top[0]['class']} ({top[0]['probability']:.1%})", fontsize=11)
    if explanation.map is None:
        fig.text(0.5, 0.01, "this artifact carries no map: " + str(map_info.get("note", "")), ha="center", fontsize=7,
                 wrap=True)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _rounded(values: np.ndarray, digits: int = 6) -> list[Any]:
    return np.vectorize(lambda v: float(f"{v:.{digits}g}") if math.isfinite(v) else None, otypes=[object])(
        values).tolist()


def explain_files(model: ExportedModel, images: Sequence[str | Path], output: str | Path, top_k: int = 3,
                  draw_figures: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """Explain each file of ``images``; returns ``(results, errors)``: one dict per explained image (its top
    classes, its map's values and the figure's path) and one line per file that could not be explained."""
    spec = model.metadata["input"]
    classes = model.class_names
    size = (spec["height"], spec["width"])
    output = Path(output)
    taken: set[Path] = set()
    results, errors = [], []
    map_info = model.metadata.get("map") or {}
    for name in images:
        path = Path(name)
        try:
            image = read_image(path, spec["channels"], size)
        except ImageError as error:
            errors.append(str(error))
            continue
        probabilities, maps = model(normalise(image, spec["mean"], spec["std"]))
        explanation = Explanation(path, image, probabilities[0].detach().cpu().numpy(),
                                  None if maps is None else maps[0, 0].detach().cpu().numpy())
        top = top_classes(explanation.probabilities, classes, top_k)
        result: dict[str, Any] = {
            "image": str(path),
            "prediction": top[0]["class"],
            "top": top,
            "map": None if explanation.map is None else {
                "shape": list(explanation.map.shape), "min": float(explanation.map.min()),
                "max": float(explanation.map.max()), "values": _rounded(explanation.map),
            },
        }
        if draw_figures:
            output.mkdir(parents=True, exist_ok=True)
            figure = figure_path(output, path, taken)
            draw(explanation, top, map_info, figure)
            result["figure"] = str(figure)
        results.append(result)
    return results, errors
