"""``train.py`` is a script, not a package module: the tests that drive its CLI load it by path from here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_train_script(name: str) -> ModuleType:
    """Execute ``train.py`` as a fresh module called ``name`` (one per test file, so no state is shared)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
