"""Artifacts outside impactx: a process where impactx, callbacks and Lightning cannot be imported; altered files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from impactx.export import FORMATS, ArtifactError, load
from impactx.export.standalone import sha256_file

BLOCKED = ("impactx", "callbacks", "runs", "lightning", "pytorch_lightning")


def test_artifacts_load_and_run_without_impactx(exported, test_batch, tmp_path) -> None:
    """The copied loader (``impactx_artifact.py``) and the bare runtimes (torch.export.load, torch.jit.load,
    onnxruntime) give the probabilities and maps of the module, in a process that cannot import impactx."""
    expected = {}
    for kind in ("impactx", "baseline"):
        module = exported[kind]["module"]
        with torch.no_grad():
            expected[kind] = module(test_batch).softmax(dim=1)
    torch.save({"images": test_batch, **expected, "maps": exported["impactx"]["module"].explain(test_batch)},
               tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # `import impactx` now raises ImportError
        sys.path = [p for p in sys.path if p not in ("", {os.getcwd()!r})]
        try:
            import impactx
        except ImportError:
            pass
        else:
            raise SystemExit("impactx is importable")
        import torch, onnxruntime
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        images = expected["images"]
        sys.path.insert(0, {str(exported["impactx"]["dir"])!r})
        import impactx_artifact
        for fmt in {FORMATS!r}:
            for kind in ("impactx", "baseline"):
                folder = {str(exported["impactx"]["dir"].parent)!r} + "/" + kind
                probabilities, maps = impactx_artifact.load(folder, format=fmt)(images)
                assert (probabilities - expected[kind]).abs().max() < 1e-4, (fmt, kind)
                if kind == "impactx":
                    assert (maps - expected["maps"]).abs().max() < 1e-4, (fmt, kind)
                else:
                    assert (maps is None) == (fmt != "torchscript"), (fmt, kind)
        folder = {str(exported["impactx"]["dir"])!r}
        probabilities, maps = torch.export.load(folder + "/model.pt2").module()(images)
        assert (maps - expected["maps"]).abs().max() < 1e-5
        probabilities, maps = torch.jit.load(folder + "/model.torchscript.pt")(images)
        assert (maps - expected["maps"]).abs().max() < 1e-5
        session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
        probabilities, maps = session.run(None, {{"images": images.numpy()}})
        assert abs(torch.from_numpy(maps) - expected["maps"]).max() < 1e-4
        print("ok", sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} and sys.modules[m] is not None))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok []"


def _copy(folder, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


@pytest.mark.parametrize("fmt", FORMATS)
def test_altered_artifact_is_refused(exported, tmp_path, fmt) -> None:
    folder = _copy(exported["abn"]["dir"], tmp_path)
    artifact = folder / json.loads((folder / f"{fmt}.json").read_text())["artifact"]
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 is not the one"):
        load(folder, format=fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_edited_description_is_refused(exported, tmp_path, fmt) -> None:
    folder = _copy(exported["abn"]["dir"], tmp_path)
    path = folder / f"{fmt}.json"
    record = json.loads(path.read_text())
    record["metadata"]["classes"][0] = "zero"
    path.write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match="does not match the description embedded"):
        load(folder, format=fmt)


def test_description_of_another_artifact_is_refused(exported, tmp_path) -> None:
    """An artifact swapped in with its hash updated still carries its own description."""
    folder = _copy(exported["abn"]["dir"], tmp_path)
    shutil.copyfile(exported["impactx"]["dir"] / "model.pt2", folder / "model.pt2")
    path = folder / "exported_program.json"
    record = json.loads(path.read_text())
    record["artifact_sha256"] = sha256_file(folder / "model.pt2")
    path.write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match="does not match"):
        load(folder, format="exported_program")


def test_pt2_with_pickled_objects_is_refused(exported, tmp_path) -> None:
    """An archive with an entry torch.export.load unpickles in full (opaque or script objects, when its config
    lists them) is refused before anything is loaded."""
    folder = _copy(exported["abn"]["dir"], tmp_path)
    artifact = folder / "model.pt2"
    with zipfile.ZipFile(artifact) as archive:
        prefix = archive.namelist()[0].split("/")[0]
    with zipfile.ZipFile(artifact, "a") as archive:
        archive.writestr(f"{prefix}/data/constants/opaque_obj_0", b"cos\nsystem\n(S'echo pwned'\ntR.")
    path = folder / "exported_program.json"
    record = json.loads(path.read_text())
    record["artifact_sha256"] = sha256_file(artifact)
    path.write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match="pickled objects"):
        load(folder, format="exported_program")


def test_folder_problems_are_one_line(exported, tmp_path) -> None:
    with pytest.raises(ArtifactError, match="not an export folder"):
        load(tmp_path / "missing")
    with pytest.raises(ArtifactError, match="holds the formats"):
        load(exported["abn"]["dir"])
    with pytest.raises(ArtifactError, match="no impactx artifact description"):
        load(tmp_path)
    folder = _copy(exported["abn"]["dir"], tmp_path)
    (folder / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="does not exist"):
        load(folder, format="onnx")
    model = load(folder / "model.pt2")  # the artifact file itself picks its description
    assert model.format == "exported_program"
