"""Which way imports run (``../shared/DESIGN.md``): checked on the source, and on what a fresh interpreter loads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _package_files(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def test_impactx_never_imports_callbacks_or_train():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path) if m.split(".")[0] in ("callbacks", "train"))
        for path in _package_files("impactx")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("package", ["impactx.attribution", "impactx.metrics", "impactx.core", "impactx.models"])
def test_library_cores_know_nothing_of_lightning(package):
    paths = _package_files(package) if (ROOT / package.replace(".", "/")).is_dir() else [ROOT / (package.replace(".", "/") + ".py")]
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path) if m.split(".")[0] in ("lightning", "pytorch_lightning"))
        for path in paths
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_metrics_loads_no_attribution_method():
    loaded = _loaded_after("import impactx.metrics")
    assert not {m for m in loaded if m.startswith("impactx.attribution")}
    assert not {"shap", "sklearn", "lightning", "timm"} & {m.split(".")[0] for m in loaded}
    assert "impactx.core" in loaded  # the shared helpers come from the core module


def test_import_attribution_loads_no_optional_reference():
    loaded = _loaded_after("import impactx.attribution")
    assert "impactx.attribution.partition.owen" in loaded  # registered methods are there
    assert not {"shap", "lightning", "callbacks"} & {m.split(".")[0] for m in loaded}


def test_standalone_loader_imports_only_torch_and_the_standard_library():
    """``impactx/export/standalone.py`` is copied beside every artifact and must run where impactx is not."""
    imported = {m.split(".")[0] for m in _imported_modules(ROOT / "impactx/export/standalone.py")}
    allowed = set(sys.stdlib_module_names) | {"torch", "onnxruntime", "__future__"}
    assert imported - allowed == set()
