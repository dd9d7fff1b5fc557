"""``python train.py export`` and ``python train.py explain``: outputs, per-file errors, one-line failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from impactx.export import load
from impactx.export.explain import normalise, read_image, save_example_image

ROOT = Path(__file__).resolve().parents[2]


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "WANDB_MODE": "offline"})


def _one_line(result: subprocess.CompletedProcess, status: int, text: str) -> None:
    assert result.returncode == status, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and text in lines[0], result.stderr


def test_export_command_writes_artifact_json_and_loader(exported, tmp_path, capsys) -> None:
    train.main(["export", "--ckpt_path", str(exported["impactx"]["checkpoint"]), "--format", "torchscript",
                "--output", str(tmp_path / "out"), "--measure_accuracy", "false"])
    out = capsys.readouterr().out
    assert "exported impactx (lenet5 on digits) as torchscript" in out and "python train.py explain" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "impactx_artifact.py", "model.torchscript.pt", "torchscript.json"]
    assert load(tmp_path / "out").metadata["kind"] == "impactx"


def test_export_errors_are_one_line_and_leave_nothing(exported, tmp_path) -> None:
    _one_line(_train(["export", "--ckpt_path", "missing.ckpt", "--output", "out"], tmp_path), 1, "is not a file")
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "old.ckpt")
    _one_line(_train(["export", "--ckpt_path", "old.ckpt", "--output", "out"], tmp_path), 1, "no impactx metadata")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    _one_line(_train(["export", "--ckpt_path", "junk.ckpt", "--output", "out"], tmp_path), 1, "weights_only")
    result = _train(["export", "--ckpt_path", str(exported["abn"]["checkpoint"]), "--format", "keras",
                     "--output", "out"], tmp_path)
    assert result.returncode == 2 and "keras" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _digit_png(digits, folder: Path) -> Path:
    return save_example_image(digits, folder, position=3)


def test_explain_draws_good_images_and_reports_bad_ones(exported, digits, tmp_path) -> None:
    good = _digit_png(digits, tmp_path)
    jpeg = tmp_path / "digit.jpg"
    Image.open(good).save(jpeg, format="JPEG", quality=95)
    rgb = tmp_path / "colour.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(rgb)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = _train(["explain", "--model", str(exported["impactx"]["dir"]), "--format", "onnx", "--output",
                     str(tmp_path / "figures"), str(good), str(tmp_path / "missing.png"), str(rgb), str(broken),
                     str(jpeg)], tmp_path)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors), result.stderr
    assert "missing.png: no such file" in errors[0]
    assert "colour.png: a RGB image (3 channels); the model takes grayscale" in errors[1]
    assert "broken.png" in errors[2]
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["digit.explained.png", f"{good.stem}.explained.png"]
    with Image.open(tmp_path / "figures" / figures[1]) as figure:
        assert figure.format == "PNG" and figure.size[0] > 2 * figure.size[1]  # three panels side by side


def test_explain_json_prints_the_numbers_of_the_model(exported, digits, tmp_path, capsys) -> None:
    image = _digit_png(digits, tmp_path)
    with pytest.raises(SystemExit) as stop:
        train.main(["explain", "--model", str(exported["abn"]["dir"]), "--format", "exported_program", "--json",
                    "--top_k", "4", "--output", str(tmp_path / "figures"), str(image), str(tmp_path / "nope.png")])
    assert stop.value.code == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["errors"] == [f"{tmp_path / 'nope.png'}: no such file"] and "nope.png" in captured.err
    (result,) = report["results"]
    model = load(exported["abn"]["dir"], format="exported_program")
    probabilities, maps = model(normalise(read_image(image, 1, (32, 32)), digits.mean, digits.std))
    order = probabilities[0].argsort(descending=True)[:4]
    assert [t["class"] for t in result["top"]] == [str(int(i)) for i in order]
    assert [t["probability"] for t in result["top"]] == pytest.approx(probabilities[0, order].tolist(), abs=1e-6)
    assert np.allclose(np.array(result["map"]["values"]), maps[0, 0].numpy(), atol=1e-5)
    assert Path(result["figure"]).is_file()


def test_saved_example_image_reads_back_as_the_test_image(digits, tmp_path) -> None:
    """The PNG the default run saves is the test image itself, up to 8-bit rounding."""
    path = save_example_image(digits, tmp_path, position=5)
    label = digits.dataset("test")[5][1]
    assert path.name == f"test-5-{label}.png"
    again = normalise(read_image(path, 1, (32, 32)), digits.mean, digits.std)[0]
    assert float((again - digits.dataset("test")[5][0]).abs().max()) <= 0.5 / 255 / digits.std[0] + 1e-6


def test_images_of_other_sizes_are_resized(tmp_path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.full((64, 48), 255, dtype=np.uint8)).save(path)
    image = read_image(path, 1, (32, 32))
    assert image.shape == (32, 32, 1) and np.allclose(image, 1.0)


def test_explain_bad_top_k_is_a_usage_error(exported, tmp_path) -> None:
    _one_line(_train(["explain", "--model", str(exported["abn"]["dir"]), "--top_k", "0", "x.png"], tmp_path), 2,
              "--top_k must be >= 1")
    _one_line(_train(["explain", "--model", str(tmp_path / "none"), "x.png"], tmp_path), 1, "not an export folder")
