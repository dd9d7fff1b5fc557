"""ExplanationEvaluation end to end: logged scalars, CSV, PNG, the seeded subset, grad-mode errors, W&B offline."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from callbacks import ExplanationEvaluation, log_key
from impactx.attribution import available, create_explainer
from impactx.metrics import DeletionAUC, LeRF, MoRF, NoiseAccuracy, Sparseness


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def subset_batch(datamodule, positions: torch.Tensor, split: str = "test"):
    items = [datamodule.dataset(split)[int(i)] for i in positions]
    images = torch.stack([item[0] for item in items])
    labels = torch.tensor([item[1] for item in items])
    return images, labels


def csv_curve(rows, source: str, metric: str) -> torch.Tensor:
    return torch.tensor([float(r["value"]) for r in rows if (r["source"], r["metric"], r["quantity"]) == (source, metric, "curve")])


def csv_scalar(rows, source: str, metric: str, quantity: str) -> float:
    (row,) = [r for r in rows if (r["source"], r["metric"], r["quantity"]) == (source, metric, quantity)]
    return float(row["value"])


def test_ig_evaluation_writes_csv_png_and_logs_the_metric_values(make_trainer, digits, lenet):
    metrics = {"morf": {}, "lerf": {}, "deletion": {"n_steps": 16}, "sparseness": {}, "noise_accuracy": {}}
    callback = ExplanationEvaluation(explainers={"ig": {"n_steps": 8}}, metrics=metrics, num_images=32, batch_size=16)
    trainer = make_trainer([callback])
    trainer.test(lenet, datamodule=digits, verbose=False)

    # Reference: the same subset explained and scored directly through the public APIs, in one batch.
    positions = callback.positions["test"]
    images, labels = subset_batch(digits, positions)
    with torch.no_grad():
        targets = lenet(images).argmax(dim=1)
    maps = create_explainer("ig", n_steps=8)(lenet, images, targets).sum(dim=1, keepdim=True)
    expected = {}
    for name, metric in (("morf", MoRF()), ("lerf", LeRF()), ("deletion", DeletionAUC(n_steps=16))):
        metric.update(lenet, images, targets, maps)
        expected[name] = metric.compute()
    sparseness = Sparseness()
    sparseness.update(maps)
    noise = NoiseAccuracy()
    noise.update(lenet, images, labels)  # the model's accuracy is scored against the true labels

    rows = read_csv(callback.last_files["csv"])
    for name, summary in (("morf", "aopc"), ("lerf", "aopc"), ("deletion", "auc")):
        torch.testing.assert_close(csv_curve(rows, "ig", name), expected[name]["curve"], atol=1e-5, rtol=1e-4)
        assert csv_scalar(rows, "ig", name, summary) == pytest.approx(float(expected[name][summary]), abs=1e-5)
        logged = trainer.callback_metrics[log_key("test", "eval", "ig", name, summary)]
        assert float(logged) == pytest.approx(csv_scalar(rows, "ig", name, summary), abs=1e-6)
    assert csv_scalar(rows, "ig", "sparseness", "value") == pytest.approx(float(sparseness.compute()), abs=1e-5)
    torch.testing.assert_close(csv_curve(rows, "model", "noise_accuracy"), noise.compute()["curve"])
    assert float(trainer.callback_metrics["test_eval/ig/sparseness"]) == pytest.approx(float(sparseness.compute()), abs=1e-5)
    assert "test_eval/model/noise_accuracy_mean" in trainer.callback_metrics
    assert {r["stage"] for r in rows} == {"test"}

    # The PNG: the saved file has the figure's pixel size; every panel has labelled axes and a legend.
    png = callback.last_files["png"]
    assert png.parent == Path(trainer.log_dir) and png.exists()
    figure = callback.last_figure
    width, height = figure.get_size_inches() * figure.dpi
    with Image.open(png) as image:
        assert image.size == (round(width), round(height))
    panels = [ax for ax in figure.axes if ax.has_data()]
    assert [ax.get_title() for ax in panels] == [
        "MoRF (most relevant first)", "LeRF (least relevant first)", "Deletion", "Accuracy under Gaussian noise",
    ]
    for ax in panels:
        assert ax.get_xlabel() and ax.get_ylabel()
        assert ax.get_legend() is not None
    assert [t.get_text() for t in panels[0].get_legend().get_texts()] == ["ig"]
    assert not list(png.parent.glob(".*.tmp*")), "temporary files must be renamed away"


def test_subset_is_fixed_by_the_seed(make_trainer, digits, self_explaining):
    def run(seed: int) -> tuple[torch.Tensor, list[dict[str, str]]]:
        callback = ExplanationEvaluation(metrics=["morf", "sparseness"], num_images=24, batch_size=24, seed=seed)
        make_trainer([callback]).test(self_explaining, datamodule=digits, verbose=False)
        return callback.positions["test"], read_csv(callback.last_files["csv"])

    first, rows_first = run(0)
    second, rows_second = run(0)
    other, _ = run(1)
    n_test = len(digits.dataset("test"))
    assert first.shape == (24,) and first.unique().numel() == 24 and 0 <= int(first.min()) and int(first.max()) < n_test
    assert torch.equal(first, second)
    assert [r["value"] for r in rows_first] == [r["value"] for r in rows_second]
    assert not torch.equal(first, other)


def test_gradient_explainer_under_inference_mode_raises_a_clear_error(make_trainer, digits, lenet):
    callback = ExplanationEvaluation(explainers={"ig": {"n_steps": 8}}, num_images=8)
    trainer = make_trainer([callback], inference_mode=True)
    with pytest.raises(RuntimeError, match=r"'ig'.*Trainer\(inference_mode=False\).*--trainer.inference_mode=false"):
        trainer.test(lenet, datamodule=digits, verbose=False)


def test_self_maps_need_no_gradients_and_match_the_metrics(make_trainer, digits, self_explaining):
    callback = ExplanationEvaluation(metrics={"morf": {"n_steps": 8}, "sparseness": {}}, num_images=16, batch_size=8)
    trainer = make_trainer([callback], inference_mode=True)  # Lightning's default: no gradients possible
    trainer.test(self_explaining, datamodule=digits, verbose=False)

    images, labels = subset_batch(digits, callback.positions["test"])
    with torch.no_grad():
        targets = self_explaining(images).argmax(dim=1)
        maps = self_explaining.explain(images)
    morf, sparseness = MoRF(n_steps=8), Sparseness()
    morf.update(self_explaining, images, targets, maps)
    sparseness.update(maps)
    result = callback.results["test"]["self"]
    torch.testing.assert_close(result["morf"].curve, morf.compute()["curve"], atol=1e-6, rtol=1e-5)
    assert float(trainer.callback_metrics["test_eval/self/morf_aopc"]) == pytest.approx(float(morf.compute()["aopc"]), abs=1e-6)
    assert float(trainer.callback_metrics["test_eval/self/sparseness"]) == pytest.approx(float(sparseness.compute()), abs=1e-6)


def test_partition_runs_under_inference_mode(make_trainer, digits, lenet):
    assert "partition" in available()
    callback = ExplanationEvaluation(
        explainers={"partition": {"max_evals": 40}}, metrics={"morf": {"n_steps": 4}}, num_images=4, batch_size=4
    )
    trainer = make_trainer([callback], inference_mode=True)
    trainer.test(lenet, datamodule=digits, verbose=False)
    assert torch.isfinite(trainer.callback_metrics["test_eval/partition/morf_aopc"])


def test_validation_every_n_epochs_logs_and_writes_per_epoch(make_trainer, digits, self_explaining):
    import copy

    module = copy.deepcopy(self_explaining)
    callback = ExplanationEvaluation(metrics=["sparseness", "morf"], num_images=8, every_n_val_epochs=2, on_test=False)
    trainer = make_trainer([callback], max_epochs=2, limit_train_batches=1, num_sanity_val_steps=1)
    trainer.fit(module, datamodule=digits)
    assert "val_eval/self/sparseness" in trainer.callback_metrics
    files = sorted(p.name for p in Path(trainer.log_dir).glob("explanation_eval_*.csv"))
    assert files == ["explanation_eval_val_epoch001.csv"]  # epoch 0 not due, sanity check skipped
    rows = read_csv(Path(trainer.log_dir) / files[0])
    assert {r["stage"] for r in rows} == {"val"} and {r["epoch"] for r in rows} == {"1"}


def test_gradient_explainer_in_validation_follows_the_loop_grad_mode(make_trainer, digits, lenet):
    """Validation inside fit runs under no_grad (gradients can be re-enabled), trainer.validate() under
    inference mode (they cannot): the explainer works in the first and gets the clear error in the second."""
    import copy

    module = copy.deepcopy(lenet).train()
    callback = ExplanationEvaluation(
        explainers={"ig": {"n_steps": 4}}, metrics=["sparseness"], num_images=8, every_n_val_epochs=1, on_test=False
    )
    trainer = make_trainer([callback], inference_mode=True, max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=digits)
    assert 0.0 < float(trainer.callback_metrics["val_eval/ig/sparseness"]) < 1.0  # IG maps are not all zero
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        trainer.validate(module, datamodule=digits, verbose=False)


def test_wandb_offline_run_receives_the_curve_table(make_trainer, digits, self_explaining, tmp_path, monkeypatch):
    from impactx.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path / "wandb_logs"), name="callback-test")
    logged: list[dict] = []
    experiment = logger.experiment
    original_log = experiment.log
    monkeypatch.setattr(experiment, "log", lambda data, *a, **k: (logged.append(data), original_log(data, *a, **k))[1])
    callback = ExplanationEvaluation(metrics={"morf": {"n_steps": 4}, "deletion": {"n_steps": 4}}, num_images=8)
    try:
        make_trainer([callback], logger=logger).test(self_explaining, datamodule=digits, verbose=False)
        run_dir = Path(experiment.dir).parent
    finally:
        import wandb

        wandb.finish()
    import wandb

    keys = {k: v for entry in logged for k, v in entry.items()}
    table = keys["test_eval/curves"]
    assert isinstance(table, wandb.Table)
    assert table.columns == ["source", "metric", "x", "value"]
    assert len(table.data) == 2 * 5  # two curve metrics of 5 points, one source
    assert {"test_eval/morf_curve", "test_eval/deletion_curve", "test_eval/curves_figure"} <= set(keys)
    assert list(run_dir.rglob("*.table.json")), f"no table file in the offline run folder {run_dir}"


def test_explain_metrics_re_explain_with_the_module_own_maps(make_trainer, digits, self_explaining):
    """Max-sensitivity and randomisation call the source again (on noisy inputs, on randomised copies)."""
    from impactx.metrics import MaxSensitivity, ModelParameterRandomisation

    metrics = {"max_sensitivity": {"n_samples": 3}, "randomisation": {}}
    callback = ExplanationEvaluation(metrics=metrics, num_images=6, batch_size=6)
    trainer = make_trainer([callback], inference_mode=True)
    trainer.test(self_explaining, datamodule=digits, verbose=False)

    images, _ = subset_batch(digits, callback.positions["test"])
    with torch.no_grad():
        targets = self_explaining(images).argmax(dim=1)

    def explain(model, x, y):
        return model.explain(x)

    sensitivity = MaxSensitivity(explain, n_samples=3)
    randomisation = ModelParameterRandomisation(self_explaining, explain)
    with torch.no_grad():
        sensitivity.update(self_explaining, images, targets)
        randomisation.update(self_explaining, images, targets)
    result = callback.results["test"]["self"]
    assert float(result["max_sensitivity"].scalars[""]) == pytest.approx(float(sensitivity.compute()), rel=1e-5)
    expected_curve = randomisation.compute()["curve"]
    torch.testing.assert_close(result["randomisation"].curve, expected_curve, atol=1e-5, rtol=1e-5)
    assert len(expected_curve) == len(randomisation.layer_names) > 1
    assert float(trainer.callback_metrics["test_eval/self/randomisation_mean"]) == pytest.approx(
        float(expected_curve.nanmean()), abs=1e-5
    )


def test_localisation_metrics_read_the_object_masks_of_the_items(make_trainer, lenet):
    """On ``digits_canvas`` the suite gets each evaluated item's mask by index; the logged values equal the
    metrics fed directly with the same subset, maps and masks."""
    from impactx.data import CanvasDigitsDataModule
    from impactx.metrics import PointingGame, RelevanceMassAccuracy

    canvas = CanvasDigitsDataModule(batch_size=32)
    metrics = {"pointing_game": {}, "relevance_mass_accuracy": {"abs": True}, "entropy_complexity": {}}
    callback = ExplanationEvaluation(explainers={"gradcam": {}}, metrics=metrics, num_images=24, batch_size=10)
    make_trainer([callback]).test(lenet, datamodule=canvas, verbose=False)
    positions = callback.positions["test"]
    images, labels = subset_batch(canvas, positions)
    index = torch.tensor([canvas.dataset("test")[int(i)][2] for i in positions])
    with torch.no_grad():
        targets = lenet(images).argmax(dim=1)
    maps = create_explainer("gradcam", reduce_channels=True)(lenet, images, targets)
    masks = canvas.masks("test", index)
    for name, metric in (("pointing_game", PointingGame()), ("relevance_mass_accuracy", RelevanceMassAccuracy(abs=True))):
        metric.update(maps, masks)
        logged = callback.results["test"]["gradcam"][name].scalars
        assert float(next(iter(logged.values()))) == pytest.approx(float(metric.compute()), abs=1e-6), name


def test_localisation_metrics_without_masks_are_a_clear_error(make_trainer, digits, lenet):
    callback = ExplanationEvaluation(explainers={"gradcam": {}}, metrics=["pointing_game"], num_images=4)
    with pytest.raises(ValueError, match="object masks.*DigitsDataModule"):
        make_trainer([callback]).test(lenet, datamodule=digits, verbose=False)
