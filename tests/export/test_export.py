"""Exports against the LightningModule they come from: every kind, every format, batches of 1 and 7."""

from __future__ import annotations

import json

import pytest
import torch

from impactx.attribution.ig import IntegratedGradients
from impactx.attribution.paths import path_attribution
from impactx.export import FORMATS, export_checkpoint, load
from impactx.export.exporter import gradient_paths, read_checkpoint
from impactx.modules.metadata import METADATA_KEY
from tests.export.conftest import KINDS, new_module, perturb_batchnorm, save_checkpoint

TOLERANCE = {"exported_program": 1e-5, "torchscript": 1e-5, "onnx": 1e-4}


def black_image(datamodule) -> torch.Tensor:
    """A black image ``[1,C,H,W]`` normalised by the data module (what IG's baseline must be)."""
    mean, std = torch.tensor(datamodule.mean), torch.tensor(datamodule.std)
    size = datamodule.image_size
    return (-mean / std).view(1, -1, 1, 1).expand(1, datamodule.in_chans, size, size)


def reference_maps(kind: str, module, checkpoint, images: torch.Tensor, datamodule) -> torch.Tensor:
    """The maps the artifact must give, computed by impactx itself from the module."""
    if kind in ("impactx", "abn"):
        return module.explain(images)
    metadata = read_checkpoint(checkpoint)[METADATA_KEY]
    model = module.model.eval()
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    if kind == "baseline":
        ig = IntegratedGradients(n_steps=32, baseline=black_image(datamodule)[0], reduce_channels=True)
        return ig(model, images, target)
    references, ref_index, alphas, weights = gradient_paths(metadata)
    batch = images.shape[0]
    maps = path_attribution(model, images, target, references[ref_index].unsqueeze(0).expand(batch, -1, -1, -1, -1),
                            alphas.expand(batch, -1), weights.expand(batch, -1), output="log_prob")
    return maps.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 7])
def test_artifact_equals_the_module(exported, test_batch, digits, kind, fmt, batch) -> None:
    entry = exported[kind]
    module, images = entry["module"], test_batch[:batch]
    model = load(entry["dir"], format=fmt)
    probabilities, maps = model(images)
    with torch.no_grad():
        expected = module(images).softmax(dim=1)
    torch.testing.assert_close(probabilities, expected, atol=TOLERANCE[fmt], rtol=0)
    carries_maps = kind in ("impactx", "abn") or fmt == "torchscript"
    assert model.metadata["map"]["available"] is carries_maps
    if not carries_maps:
        assert maps is None and model.metadata["map"]["where"] is None
        return
    assert maps.shape == (batch, 1, 32, 32)
    expected_maps = reference_maps(kind, module, entry["checkpoint"], images, digits)
    expected_maps = expected_maps.detach()
    scale = max(1.0, float(expected_maps.abs().max()))
    torch.testing.assert_close(maps, expected_maps, atol=TOLERANCE[fmt] * scale, rtol=0)
    assert float(maps.abs().max()) > 0  # not a blank map that matches a blank reference


def test_ig_artifact_is_complete(exported, test_batch, digits) -> None:
    """Completeness, an axiom independent of impactx's IG: each map sums to f(x) - f(black image) of the logit."""
    entry = exported["baseline"]
    model = load(entry["dir"], format="torchscript")
    probabilities, maps = model(test_batch)
    classifier = entry["module"].model
    blank = black_image(digits)
    with torch.no_grad():
        target = probabilities.argmax(dim=1)
        gap = classifier(test_batch).gather(1, target[:, None])[:, 0] - classifier(blank)[0, target]
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), gap, atol=2e-3, rtol=2e-3)


def test_eg_artifact_explains_any_target_deterministically(exported, test_batch) -> None:
    model = load(exported["prior"]["dir"], format="torchscript")
    first = model.explain(test_batch[:3], torch.tensor([0, 1, 2]))
    again = model.explain(test_batch[:3], torch.tensor([0, 1, 2]))
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    other = model.explain(test_batch[:3], torch.tensor([3, 4, 5]))
    assert not torch.allclose(first, other)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        model.explain(test_batch[:1])
    assert torch.is_grad_enabled()


def test_eg_references_are_unaugmented_train_images(exported, digits) -> None:
    metadata = read_checkpoint(exported["prior"]["checkpoint"])[METADATA_KEY]
    references = metadata["explain_references"]
    train = torch.stack([item[0] for item in digits.dataset("train", augment=False)])
    assert references.shape == (16, 1, 32, 32)
    distances = torch.cdist(references.flatten(1), train.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    distances = distances.min(dim=1).values
    assert float(distances.max()) < 1e-5


def test_batchnorm_backbone_exports_in_eval_mode(tmp_path, digits, test_batch) -> None:
    """With BatchNorm, an artifact traced in training mode (batch statistics) would differ from the module."""
    torch.manual_seed(0)
    module = new_module("abn", backbone="mobilenetv2_050")
    perturb_batchnorm(module)
    module.eval()
    checkpoint = save_checkpoint(module, digits, tmp_path / "abn.ckpt")
    for fmt in ("exported_program", "onnx"):
        export_checkpoint(checkpoint, fmt, tmp_path / "out", measure_accuracy=False)
        probabilities, maps = load(tmp_path / "out", format=fmt)(test_batch)
        with torch.no_grad():
            torch.testing.assert_close(probabilities, module(test_batch).softmax(dim=1), atol=TOLERANCE[fmt], rtol=0)
        torch.testing.assert_close(maps, module.explain(test_batch), atol=TOLERANCE[fmt], rtol=0)


def test_checkpoint_describes_itself(exported, digits) -> None:
    """Read with weights_only; holds the module class, the data's normalisation, classes and the explainer."""
    sources = {"impactx": "decoder", "abn": "attention", "baseline": "ig", "prior": "eg"}
    for kind, entry in exported.items():
        metadata = torch.load(entry["checkpoint"], map_location="cpu", weights_only=True)[METADATA_KEY]
        assert metadata["module"].startswith("impactx.modules.") and metadata["format"] == 1
        data = metadata["data"]
        assert data["class_path"] == "impactx.data.digits.DigitsDataModule"
        assert data["mean"] == list(digits.mean) and data["std"] == list(digits.std)
        assert data["class_names"] == [str(i) for i in range(10)] and data["image_size"] == 32
        assert metadata["explainer"]["source"] == sources[kind]
        assert ("explain_references" in metadata) is (kind == "prior")


def test_description_states_what_the_issue_lists(exported) -> None:
    record = json.loads((exported["impactx"]["dir"] / "onnx.json").read_text())
    meta = record["metadata"]
    assert record["artifact"] == "model.onnx" and len(record["artifact_sha256"]) == 64
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["input"]["channels"] == 1 and meta["input"]["height"] == meta["input"]["width"] == 32
    assert meta["input"]["mean"] and meta["input"]["std"]
    assert meta["map"]["where"] == "forward" and "decoder" in meta["map"]["meaning"] and meta["map"]["range"]
    assert meta["impactx_version"] and meta["checkpoint"]["sha256"]
    # No test step ran: the accuracy was measured at export, on the digits test split.
    assert meta["test_accuracy_source"].startswith("measured") and 0 <= meta["test_accuracy"] <= 1
    baseline = json.loads((exported["baseline"]["dir"] / "exported_program.json").read_text())["metadata"]
    assert baseline["map"]["available"] is False and "torchscript" in baseline["map"]["note"]
    assert baseline["test_accuracy"] is None and "not measured" in baseline["test_accuracy_source"]


def test_recorded_test_metrics_are_the_ones_exported(exported, tmp_path) -> None:
    from impactx.modules.metadata import record_test_metrics

    checkpoint = tmp_path / "tested.ckpt"
    checkpoint.write_bytes(exported["abn"]["checkpoint"].read_bytes())
    record_test_metrics(checkpoint, {"test/acc": 0.875, "test/loss": 0.5})
    meta = json.loads(export_checkpoint(checkpoint, "exported_program", tmp_path / "out").read_text())["metadata"]
    assert meta["test_accuracy"] == 0.875 and meta["test_metrics"]["test/loss"] == 0.5
    assert meta["test_accuracy_source"] == "recorded by the run's test step"


def test_loaded_model_checks_its_input(exported) -> None:
    model = load(exported["abn"]["dir"], format="exported_program")
    with pytest.raises(ValueError, match=r"\[B>=1, 1, 32, 32\]"):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))

