"""What a map store holds maps *of*: the key that decides whether a store may be reused.

Two stores with equal keys hold the same maps (the explainers are deterministic under their seed), so a
later run reuses a complete store instead of recomputing it, and a store whose key differs from what a
caller asks for is refused with the field that differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from impactx.core import tensor_digest

TARGET_RULES: tuple[str, ...] = ("label",)
"""Which class each map explains: ``"label"``, the true class (IMPACTX 3.3: "the true class attribution map")."""

DTYPES: tuple[str, ...] = ("float32", "float16")

MAP_SPLIT = "train"
"""The split a map pass covers: the full train split (both carves), so row i is the item of index i."""


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dicts, lists, numbers, strings; tensors by shape and content hash."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype), "sha256": tensor_digest(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


@dataclass(frozen=True)
class MapKey:
    """The identity of a map store.

    Attributes:
        dataset: the data set (its data module's ``name``, e.g. ``"digits"``, ``"cifar10"``).
        split: the full split the rows index (``"train"``: row i is the item of index i).
        preprocessing: the deterministic image transform, as text (normalisation, resize, channels).
        explainer: the registered method name (``"partition"``, ``"ig"``, ...).
        options: the explainer's options as built (seed filled in), JSON data.
        target: the target rule (:data:`TARGET_RULES`).
        model: :func:`impactx.core.weights_fingerprint` of the explained model.
        dtype: how values are stored (:data:`DTYPES`).
        precision: the trainer's precision the maps were computed under (``"32-true"``, ``"bf16-mixed"``...).
    """

    dataset: str
    split: str
    preprocessing: str
    explainer: str
    options: dict[str, Any]
    target: str
    model: str
    dtype: str = "float32"
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if self.target not in TARGET_RULES:
            raise ValueError(f"map target must be one of {TARGET_RULES}, got {self.target!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"map dtype must be one of {DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "options", jsonable(dict(self.options)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MapKey:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"map store key lacks the fields {missing}")
        return cls(**{k: data[k] for k in names})

    def digest(self) -> str:
        """A short, stable hash of the key (the store folder's suffix)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def folder_name(self) -> str:
        return f"{self.dataset}-{self.split}-{self.explainer}-{self.digest()}"

    def first_difference(self, other: MapKey, fields_to_check: tuple[str, ...] | None = None) -> str | None:
        """``"field: this != other"`` for the first field (of ``fields_to_check``, default all) that differs."""
        for name in fields_to_check or tuple(f.name for f in fields(self)):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"{name}: store has {_short(mine)}, expected {_short(theirs)}"
        return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 160 else text[:157] + "..."
