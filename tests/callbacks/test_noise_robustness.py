"""NoiseRobustness end to end (whole test split, CSV/PNG, inference mode, compare), the comparison figure and its CLI."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks import NoiseRobustness, plot_noise_comparison
from callbacks.noise_robustness import MERGED_COLUMNS, NOISE_COLUMNS, main, read_noise_csvs
from impactx.data import DigitsDataModule
from impactx.metrics.functional.noise_accuracy import DEFAULT_NOISE_LEVELS, noise_accuracy_curve
from impactx.modules import ClassifierModule

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_digits() -> DigitsDataModule:
    """90 test images in batches of 32, 32 and 26 (an uneven last batch)."""
    return DigitsDataModule(batch_size=32, test_fraction=0.05)


@pytest.fixture(scope="module")
def trained() -> ClassifierModule:
    """A LeNet-5 fitted for a few steps, so its accuracy is well above chance and falls under noise."""
    L.seed_everything(0, verbose=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    module = ClassifierModule(backbone="lenet5", num_classes=10, in_chans=1, input_size=32)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=3, limit_train_batches=20, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, test_fraction=0.05))
    torch.set_num_threads(threads)
    return module.eval()


def whole_split(datamodule: DigitsDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole test split: ``images [N,1,32,32]``, ``labels [N]``."""
    dataset = datamodule.dataset("test")
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])



def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_run_csv(path: Path, label: str, accuracies: list[float], levels: list[float] | None = None) -> Path:
    levels = levels or [0.1 * i for i in range(len(accuracies))]
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["label,noise_level,accuracy"] + [f"{label},{x},{a}" for x, a in zip(levels, accuracies, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def line_data(figure) -> dict[str, list[float]]:
    (ax,) = figure.axes
    return {line.get_label(): [float(v) for v in line.get_ydata()] for line in ax.get_lines()}


def test_curve_covers_the_whole_test_split(make_trainer, small_digits, trained):
    callback = NoiseRobustness(label="base")
    trainer = make_trainer([callback], limit_test_batches=1.0)
    trainer.test(trained, datamodule=small_digits, verbose=False)

    images, labels = whole_split(small_digits)
    assert images.shape[0] == 90
    with torch.no_grad():
        plain = (trained(images).argmax(dim=1) == labels).float().mean()
    expected = noise_accuracy_curve(trained, images, labels).mean(dim=0)

    rows = read_csv(callback.last_files["csv"])
    assert list(rows[0]) == list(NOISE_COLUMNS)
    assert {r["label"] for r in rows} == {"base"}
    assert [float(r["noise_level"]) for r in rows] == pytest.approx(list(DEFAULT_NOISE_LEVELS))
    accuracies = torch.tensor([float(r["accuracy"]) for r in rows])
    torch.testing.assert_close(accuracies, expected, atol=1e-6, rtol=0)
    assert float(accuracies[0]) == pytest.approx(float(plain), abs=1e-6)
    assert float(accuracies[0]) == pytest.approx(float(trainer.callback_metrics["test/acc"]), abs=1e-6)
    assert float(accuracies[0]) > 0.5 and float(accuracies[-1]) < float(accuracies[0])  # a trained model, hurt by noise
    mean = float(trainer.callback_metrics["test/noise_acc_mean"])
    assert mean == pytest.approx(float(expected.mean()), abs=1e-6)

    png = callback.last_files["png"]
    assert png == Path(trainer.log_dir) / "noise_accuracy.png" and png.stat().st_size > 0
    assert callback.last_files["csv"].parent == png.parent
    assert not list(png.parent.glob(".*.tmp*")), "temporary files must be renamed away"
    assert list(line_data(callback.last_figure)) == ["base"]
    (ax,) = callback.last_figure.axes
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None


def test_inference_mode_and_options_match_a_direct_call(make_trainer, small_digits, trained):
    options = dict(noise_levels=[0.0, 0.25, 0.5, 2.0], seed=7, clamp=(-1.0, 2.0))
    callback = NoiseRobustness(**options, internal_batch_size=50)
    trainer = make_trainer([callback], inference_mode=True, limit_test_batches=1.0)
    trainer.test(trained, datamodule=small_digits, verbose=False)

    images, labels = whole_split(small_digits)
    expected = noise_accuracy_curve(trained, images, labels, **options).mean(dim=0)
    torch.testing.assert_close(callback.curve, expected, atol=1e-6, rtol=0)
    rows = read_csv(callback.last_files["csv"])
    assert [float(r["noise_level"]) for r in rows] == [0.0, 0.25, 0.5, 2.0]
    assert {r["label"] for r in rows} == {"run"}  # the CSVLogger's name
    other_seed = noise_accuracy_curve(trained, images, labels, **{**options, "seed": 8}).mean(dim=0)
    assert not torch.equal(expected, other_seed)  # the seed reaches the noise


def test_default_label_without_logger_is_the_module_class(make_trainer, small_digits, trained, tmp_path):
    callback = NoiseRobustness(noise_levels=[0.0, 0.5])
    trainer = make_trainer([callback], logger=False, limit_test_batches=1, default_root_dir=str(tmp_path / "bare"))
    trainer.test(trained, datamodule=small_digits, verbose=False)
    assert callback.last_files["csv"].parent == tmp_path / "bare"
    assert {r["label"] for r in read_csv(callback.last_files["csv"])} == {"ClassifierModule"}


def test_compare_draws_one_curve_per_model_and_averages_seeds(make_trainer, small_digits, trained, tmp_path):
    levels = [0.0, 0.5, 1.0]
    runs = tmp_path / "runs"
    write_run_csv(runs / "eg" / "seed0" / "noise_accuracy.csv", "EG", [0.9, 0.6, 0.2], levels)
    write_run_csv(runs / "eg" / "seed1" / "noise_accuracy.csv", "EG", [0.8, 0.4, 0.1], levels)
    write_run_csv(runs / "ignored.csv", "other", [0.1, 0.1, 0.1], levels)  # not named noise_accuracy.csv
    mgm = write_run_csv(tmp_path / "mgm.csv", "DeepMGM-EG", [0.95, 0.8, 0.5], levels)
    callback = NoiseRobustness(noise_levels=levels, label="Base", compare=[str(runs), str(mgm)])
    make_trainer([callback], limit_test_batches=1.0).test(trained, datamodule=small_digits, verbose=False)

    lines = line_data(callback.last_figure)
    assert list(lines) == ["Base", "EG", "DeepMGM-EG"]
    assert lines["Base"] == pytest.approx(callback.curve.tolist())
    assert lines["EG"] == pytest.approx([0.85, 0.5, 0.15])
    assert lines["DeepMGM-EG"] == pytest.approx([0.95, 0.8, 0.5])
    (ax,) = callback.last_figure.axes
    assert len(ax.collections) == 1  # a band only for EG, the one label with two runs
    assert callback.curves["EG"].runs == (2, 2, 2)
    assert callback.curves["EG"].low == pytest.approx((0.8, 0.4, 0.1))
    # The run's own CSV holds only its own curve.
    assert {r["label"] for r in read_csv(callback.last_files["csv"])} == {"Base"}


def test_plot_noise_comparison_merges_runs_by_label(tmp_path):
    levels = [0.0, 0.5, 1.0]
    base = write_run_csv(tmp_path / "base" / "noise_accuracy.csv", "Base", [0.9, 0.5, 0.1], levels)
    eg0 = write_run_csv(tmp_path / "eg0.csv", "EG", [0.9, 0.6, 0.2], levels)
    eg1 = write_run_csv(tmp_path / "eg1.csv", "EG", [0.7, 0.4, 0.0], levels)
    write_run_csv(tmp_path / "mgm" / "noise_accuracy.csv", "DeepMGM-EG", [0.9, 0.8, 0.6], levels)
    # One file holding two seeds of the same label.
    bgmm = tmp_path / "bgmm.csv"
    bgmm.write_text(
        "label,noise_level,accuracy\n"
        + "".join(f"DeepBGMM-EG,{x},{a}\n" for x, a in zip(levels, [0.92, 0.85, 0.7], strict=True))
        + "".join(f"DeepBGMM-EG,{x},{a}\n" for x, a in zip(levels, [0.96, 0.75, 0.5], strict=True))
    )
    out_png, out_csv = tmp_path / "out" / "cmp.png", tmp_path / "out" / "cmp.csv"
    figure = plot_noise_comparison([base, eg0, eg1, tmp_path / "mgm", bgmm], out_png, out_csv)

    lines = line_data(figure)
    assert list(lines) == ["Base", "EG", "DeepMGM-EG", "DeepBGMM-EG"]
    assert lines["EG"] == pytest.approx([0.8, 0.5, 0.1])
    assert lines["DeepBGMM-EG"] == pytest.approx([0.94, 0.8, 0.6])
    assert len(figure.axes[0].collections) == 2  # bands for EG and DeepBGMM-EG
    assert out_png.stat().st_size > 0

    rows = read_csv(out_csv)
    assert list(rows[0]) == list(MERGED_COLUMNS)
    eg = [r for r in rows if r["label"] == "EG"]
    assert [float(r["accuracy"]) for r in eg] == pytest.approx([0.8, 0.5, 0.1])
    assert [float(r["min"]) for r in eg] == pytest.approx([0.7, 0.4, 0.0])
    assert [float(r["max"]) for r in eg] == pytest.approx([0.9, 0.6, 0.2])
    assert [float(r["std"]) for r in eg] == pytest.approx([0.1 * 2**0.5] * 3)  # sample std of two runs
    assert {r["runs"] for r in eg} == {"2"} and {r["runs"] for r in rows if r["label"] == "Base"} == {"1"}

    # The +-std band: the shaded area spans mean - std .. mean + std.
    figure = plot_noise_comparison([eg0, eg1], tmp_path / "std.png", band="std")
    (band,) = figure.axes[0].collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(0.1 - 0.1 * 2**0.5) and ys.max() == pytest.approx(0.8 + 0.1 * 2**0.5)


def test_bad_compare_path_raises_before_the_test_loop(make_trainer, small_digits, trained, tmp_path):
    missing = tmp_path / "nowhere" / "noise_accuracy.csv"
    batches: list[int] = []

    class Spy(L.Callback):
        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            batches.append(batch_idx)

    callback = NoiseRobustness(compare=[str(missing)])
    with pytest.raises(ValueError, match="nowhere"):
        make_trainer([callback, Spy()]).test(copy.deepcopy(trained), datamodule=small_digits, verbose=False)
    assert batches == [] and not callback.last_files


def test_unreadable_compare_files_name_the_path(tmp_path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match=r"no noise_accuracy\.csv found under the folder .*empty"):
        read_noise_csvs([empty_dir])
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("source,metric,value\nig,morf,0.5\n")
    with pytest.raises(ValueError, match=r"wrong\.csv.*lacks the column\(s\) \['label', 'noise_level', 'accuracy'\]"):
        read_noise_csvs([wrong])
    bad = write_run_csv(tmp_path / "bad.csv", "Base", [0.5])
    bad.write_text(bad.read_text() + "Base,0.1,n/a\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*line 3"):
        read_noise_csvs([bad])


def test_cli_prints_markdown_and_writes_png_and_csv(tmp_path, capsys):
    write_run_csv(tmp_path / "a" / "noise_accuracy.csv", "Base", [0.9, 0.5])
    write_run_csv(tmp_path / "b" / "noise_accuracy.csv", "EG", [0.8, 0.6])
    assert main([str(tmp_path / "fig.png"), str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| label | 0 | 0.1 | mean | runs |"
    assert out[2] == "| Base | 0.900 | 0.500 | 0.700 | 1 |" and out[3] == "| EG | 0.800 | 0.600 | 0.700 | 1 |"
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert [r["label"] for r in read_csv(tmp_path / "fig.csv")] == ["Base", "Base", "EG", "EG"]


def test_cli_missing_file_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    assert main([str(tmp_path / "fig.png"), str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and str(missing) in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "fig.png").exists()


@pytest.mark.slow
def test_cli_module_entry_point_exits_2_without_traceback(tmp_path):
    """``python -m`` through the package: one stderr line (no traceback, no runpy warning about the module)."""
    missing = tmp_path / "missing.csv"
    result = subprocess.run(
        [sys.executable, "-m", "callbacks.noise_robustness", str(tmp_path / "fig.png"), str(missing)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: noise-accuracy CSV {str(missing)!r} does not exist"]


def test_wandb_offline_run_receives_table_and_line_plot(make_trainer, small_digits, trained, tmp_path, monkeypatch):
    import wandb

    from impactx.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path / "wandb_logs"), name="noise-test")
    logged: list[dict] = []
    experiment = logger.experiment
    original_log = experiment.log
    monkeypatch.setattr(experiment, "log", lambda data, *a, **k: (logged.append(data), original_log(data, *a, **k))[1])
    callback = NoiseRobustness(noise_levels=[0.0, 0.5, 1.0])
    try:
        make_trainer([callback], logger=logger).test(trained, datamodule=small_digits, verbose=False)
    finally:
        wandb.finish()
    keys = {k: v for entry in logged for k, v in entry.items()}
    table = keys["test_noise/curves"]
    assert isinstance(table, wandb.Table) and table.columns == list(NOISE_COLUMNS)
    assert [row[0] for row in table.data] == ["noise-test"] * 3  # the W&B run name is the default label
    assert {"test_noise/noise_accuracy_curve", "test_noise/figure", "test/noise_acc_mean"} <= set(keys)


@pytest.mark.ddp
def test_ddp_gives_the_single_process_curve(make_trainer, small_digits, trained, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    levels = [0.0, 0.5, 1.0]
    single = NoiseRobustness(noise_levels=levels, label="m")
    make_trainer([single], limit_test_batches=1.0, logger=CSVLogger(str(tmp_path / "single"), name="run")).test(
        trained, datamodule=small_digits, verbose=False
    )
    ddp = make_trainer(
        [NoiseRobustness(noise_levels=levels, label="m")], strategy="ddp_spawn", devices=2, limit_test_batches=1.0,
        logger=CSVLogger(str(tmp_path / "ddp"), name="run"),
    )
    ddp.test(trained, datamodule=small_digits, verbose=False)  # 90 images: 45 per rank, none repeated
    (path,) = (tmp_path / "ddp").rglob("noise_accuracy.csv")
    assert [float(r["accuracy"]) for r in read_csv(path)] == pytest.approx(single.curve.tolist(), abs=1e-6)
    assert float(ddp.callback_metrics["test/noise_acc_mean"]) == pytest.approx(float(single.curve.mean()), abs=1e-6)
