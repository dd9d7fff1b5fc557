"""impactx.report: results.json files -> the Table-2 comparison (markdown + CSV), warnings and errors."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from impactx import report

ROOT = Path(__file__).resolve().parents[1]

BASELINE_ACC = [0.6801, 0.6755, 0.6902]
IMPACTX_ACC = [0.7065, 0.7012, 0.7110]
STAGE1_ACC = [0.6790, 0.6811, 0.6750]
MAP_MSE = [0.0123, 0.0131, 0.0118]
AOPC_SELF = [0.31, 0.29, 0.33]


def _record(method: str, seed: int, test_acc: float, **extra) -> dict:
    experiment = f"cifar10_lenet5_{method}"
    return {
        "format": 1,
        "experiment": experiment,
        "method": method,
        "dataset": "cifar10",
        "backbone": "lenet5",
        "seed": seed,
        "test_acc": test_acc,
        "stage1_test_acc": None,
        "map_mse": None,
        "morf_aopc": None,
        "wall_s": 12.5,
        "finished": f"2026-12-02T14:0{seed}:00+00:00",
        "checkpoint": f"logs/{experiment}/seed{seed}/last.ckpt",
        **extra,
    }


def _write(path: Path, record: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """3 seeds of baseline and of IMPACTX on CIFAR-10 / LeNet-5, one malformed file, one stale duplicate."""
    root = tmp_path / "logs"
    for seed, acc in enumerate(BASELINE_ACC):
        _write(root / "cifar10_lenet5_baseline" / f"seed{seed}" / "results.json", _record("baseline", seed, acc))
    for seed, acc in enumerate(IMPACTX_ACC):
        record = _record(
            "impactx",
            seed,
            acc,
            stage1_test_acc=STAGE1_ACC[seed],
            map_mse=MAP_MSE[seed],
            morf_aopc={"self": AOPC_SELF[seed], "partition": 0.28, "random": 0.05},
        )
        _write(root / "cifar10_lenet5_impactx" / f"seed{seed}" / "run" / "results.json", record)
    # An older run of IMPACTX seed 0 (finished before the one above, with another accuracy): dropped.
    stale = _record("impactx", 0, 0.10, finished="2026-11-30T09:00:00+00:00")
    _write(root / "old" / "cifar10_lenet5_impactx" / "results.json", stale)
    _write(root / "broken" / "results.json", '{"format": 1, "experiment": ')
    return root


def test_collect_skips_malformed_and_keeps_newest_duplicate(logs: Path, capsys) -> None:
    runs = report.collect(logs)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(runs) == 6
    assert sorted(r["test_acc"] for r in runs if r["method"] == "impactx") == sorted(IMPACTX_ACC)
    assert len(err) == 2
    malformed = next(line for line in err if "broken" in line)
    assert malformed.startswith("impactx.report: warning: skipping") and str(logs / "broken" / "results.json") in malformed
    duplicate = next(line for line in err if "duplicate" in line)
    assert "cifar10_lenet5_impactx (impactx) seed 0" in duplicate
    assert f"dropped {logs / 'old' / 'cifar10_lenet5_impactx' / 'results.json'}" in duplicate


def test_same_experiment_and_seed_of_another_method_is_no_duplicate(tmp_path: Path, capsys) -> None:
    _write(tmp_path / "a" / "results.json", _record("impactx", 0, 0.70))
    _write(tmp_path / "b" / "results.json", _record("impactx", 0, 0.69) | {"method": "impactx_single"})
    assert sorted(r["method"] for r in report.collect(tmp_path)) == ["impactx", "impactx_single"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"format": 2}, "format=2"),
        ({"test_acc": 70.65}, "test_acc must be a fraction"),
        ({"seed": "0"}, "seed must be an integer"),
        ({"finished": "yesterday"}, "ISO 8601"),
        ({"morf_aopc": [0.3]}, "morf_aopc"),
        ({"method": None}, "missing method"),
        ({"test_metrics": [0.3]}, "test_metrics must be an object"),
        ({"test_metrics": {"test/ce": "0.1"}}, "test_metrics must map metric names to finite numbers or null"),
        ({"test_metrics": {"test/ce": float("nan")}}, "'test/ce': nan"),
        ({"test_metrics": {"test/ce": True}}, "'test/ce': True"),
    ],
)
def test_schema_violations_are_one_line_warnings(tmp_path: Path, capsys, change: dict, reason: str) -> None:
    path = _write(tmp_path / "a" / "results.json", _record("baseline", 0, 0.5) | change)
    _write(tmp_path / "b" / "results.json", _record("abn", 0, 0.5))
    assert [r["method"] for r in report.collect(tmp_path)] == ["abn"]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and reason in line


def test_table_means_stds_and_paper_numbers(logs: Path) -> None:
    result = report.table(report.collect(logs))
    (row,) = result.rows
    assert (row.dataset, row.backbone, row.backbone_names) == ("cifar10", "LeNet-5", ("lenet5",))
    for method, values in (("baseline", BASELINE_ACC), ("impactx", IMPACTX_ACC)):
        cell = row.accuracy[method]
        assert cell.n == 3
        assert cell.mean == pytest.approx(100 * np.mean(values))
        assert cell.std == pytest.approx(100 * np.std(values, ddof=1))
    assert row.stage1.mean == pytest.approx(100 * np.mean(STAGE1_ACC))
    assert row.stage1.std == pytest.approx(100 * np.std(STAGE1_ACC, ddof=1))
    assert row.map_mse["impactx"].mean == pytest.approx(np.mean(MAP_MSE))
    assert row.morf_aopc["impactx"]["self"].std == pytest.approx(np.std(AOPC_SELF, ddof=1))
    assert row.paper == {"baseline": 67.96, "impactx": 70.65, "abn": 68.49, "wae": 68.10}
    assert "abn" not in row.accuracy and result.aopc_sources == ("self", "partition", "random")


def test_markdown_puts_the_paper_beside_each_method(logs: Path) -> None:
    markdown = report.to_markdown(report.table(report.collect(logs)))
    header = next(line for line in markdown.splitlines() if line.startswith("| Dataset | Model | Baseline A"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Dataset", "Model", "Baseline A", "paper", "stage-1 A", "IMPACTX", "paper", "ABN", "paper", "WAE (paper)",
    ]
    row = next(line for line in markdown.splitlines() if line.startswith("| CIFAR-10 | LeNet-5 | "))
    mean, std = 100 * np.mean(IMPACTX_ACC), 100 * np.std(IMPACTX_ACC, ddof=1)
    assert f"| {mean:.2f} ± {std:.2f} (n=3) | 70.65 |" in row
    assert "| — | 68.49 | 68.10 |" in row  # no ABN runs: the paper's ABN and WAE numbers still stand
    assert "## Explanations" in markdown and "MoRF AOPC (partition)" in markdown


def test_csv_columns_and_values(logs: Path) -> None:
    text = report.to_csv(report.table(report.collect(logs)))
    (row,) = list(csv.DictReader(io.StringIO(text)))
    for method in report.METHODS:
        assert {f"{method}_mean", f"{method}_std", f"{method}_n"} <= row.keys()
    assert {"dataset", "backbone", "stage1_A_mean", "paper_baseline", "paper_impactx", "paper_abn", "paper_wae"} <= row.keys()
    assert {"impactx_map_mse_mean", "impactx_morf_aopc_self_mean", "impactx_morf_aopc_random_std"} <= row.keys()
    assert "baseline_map_mse_mean" not in row
    assert (row["dataset"], row["backbone"], row["impactx_n"], row["abn_n"], row["abn_mean"]) == (
        "cifar10", "LeNet-5", "3", "0", "",
    )
    assert float(row["baseline_mean"]) == pytest.approx(100 * np.mean(BASELINE_ACC))
    assert float(row["baseline_std"]) == pytest.approx(100 * np.std(BASELINE_ACC, ddof=1))
    assert float(row["paper_impactx"]) == 70.65 and float(row["paper_wae"]) == 68.10


def test_rows_follow_the_paper_and_label_backbones(tmp_path: Path) -> None:
    runs = [
        _record("abn", 0, 0.9) | {"dataset": "stl10", "backbone": "tf_efficientnet_b2.ns_jft_in1k"},
        _record("abn", 0, 0.9) | {"dataset": "digits", "backbone": "resnet18_cifar"},
        _record("abn", 0, 0.9) | {"dataset": "cifar100", "backbone": "mobilenetv1_100.ra4_e3600_r224_in1k"},
        _record("abn", 0, 0.9),
    ]
    result = report.table(runs)
    assert [(r.dataset, r.backbone) for r in result.rows] == [
        ("cifar10", "LeNet-5"), ("cifar100", "MobileNet"), ("stl10", "EfficientNet-B2"), ("digits", "resnet18_cifar"),
    ]
    assert result.rows[2].paper["abn"] == 98.59 and result.rows[3].paper == {}
    one_seed = result.rows[0].accuracy["abn"]
    assert (one_seed.n, one_seed.std) == (1, None)
    assert "90.00 (n=1)" in report.to_markdown(result)


def test_main_writes_both_files_atomically(logs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert report.main([str(logs), "--output", str(out)]) == 0
    # no temporary left behind
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.md", "results_experiments.csv"]
    assert (out / "results.md").read_text() == capsys.readouterr().out
    assert (out / "results.csv").read_text().startswith("dataset,backbone,")
    assert (out / "results_experiments.csv").read_text().startswith("experiment,method,dataset,backbone,n,")


def _report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "impactx.report", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_no_results_is_a_one_line_error(tmp_path: Path) -> None:
    _write(tmp_path / "logs" / "run" / "results.json", "not json")
    result = _report("logs", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("impactx.report: warning: skipping logs/run/results.json")
    assert lines[1:] == ["impactx.report: error: no valid results.json found under 'logs'"]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["run"]


@pytest.mark.parametrize("args", [["missing_dir"], [], ["logs", "--bogus"]])
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "logs").mkdir()
    result = _report(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("impactx.report: error: ")


PRIOR_ACC = [0.97, 0.95]
PRIOR_METRICS = [
    {"test/acc": 0.97, "test/loss": 0.10, "test/ce": 0.10, "test/noise_acc_mean": 0.81,
     "test_eval/eg/total_variation": 61.2, "test_eval/eg/morf_aopc": 0.30},
    {"test/acc": 0.95, "test/loss": 0.14, "test/ce": 0.12, "test/noise_acc_mean": 0.79,
     "test_eval/eg/total_variation": 58.4, "test_eval/eg/morf_aopc": None},
]


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Two seeds of an attribution prior (the second lacks one metric), two baseline seeds of which only
    one has test_metrics (the other an older file without the key)."""
    root = tmp_path / "logs"
    for seed, (acc, metrics) in enumerate(zip(PRIOR_ACC, PRIOR_METRICS, strict=True)):
        record = _record("prior", seed, acc, test_metrics=metrics)
        _write(root / "cifar10_lenet5_prior" / f"seed{seed}" / "results.json", record)
    _write(root / "b0" / "results.json", _record("baseline", 0, 0.68, test_metrics={"test/acc": 0.68, "test/ce": 0.9}))
    legacy = _record("baseline", 1, 0.66)
    legacy.pop("test_metrics", None)
    _write(root / "b1" / "results.json", legacy)
    return root


def test_per_experiment_rows_average_the_seeds(mixed: Path, capsys) -> None:
    result = report.experiments(report.collect(mixed))
    assert capsys.readouterr().err == ""
    assert result.metrics == (
        "test/ce", "test/noise_acc_mean", "test_eval/eg/morf_aopc", "test_eval/eg/total_variation",
    )
    baseline, prior = result.rows
    assert (baseline.experiment, baseline.method, baseline.n) == ("cifar10_lenet5_baseline", "baseline", 2)
    assert (prior.experiment, prior.method, prior.dataset, prior.backbone, prior.n) == (
        "cifar10_lenet5_prior", "prior", "cifar10", "lenet5", 2,
    )
    assert prior.accuracy.mean == pytest.approx(96.0) and prior.accuracy.std == pytest.approx(100 * np.std(PRIOR_ACC, ddof=1))
    for key in ("test/ce", "test/noise_acc_mean", "test_eval/eg/total_variation"):
        values = [m[key] for m in PRIOR_METRICS]
        assert prior.metrics[key].n == 2
        assert prior.metrics[key].mean == pytest.approx(np.mean(values))
        assert prior.metrics[key].std == pytest.approx(np.std(values, ddof=1))
    assert prior.metrics["test/ce"].mean == pytest.approx(0.11)
    assert prior.metrics["test_eval/eg/total_variation"].mean == pytest.approx(59.8)
    assert (prior.metrics["test_eval/eg/morf_aopc"].mean, prior.metrics["test_eval/eg/morf_aopc"].n) == (0.30, 1)
    assert baseline.metrics.keys() == {"test/ce"} and baseline.metrics["test/ce"].n == 1
    assert "test/acc" not in result.metrics and "test/loss" not in result.metrics


def test_prior_runs_only_in_the_per_experiment_table(mixed: Path) -> None:
    runs = report.collect(mixed)
    result = report.table(runs)
    assert result.methods == ("baseline",) and "prior" not in result.rows[0].accuracy
    markdown = report.to_markdown(result, report.experiments(runs))
    table2, per_experiment = markdown.split("## Per experiment")
    assert "Attribution prior" not in table2 and "cifar10_lenet5_prior" not in table2
    assert not any("prior" in column for column in report.csv_columns(result))
    header = next(line for line in per_experiment.splitlines() if line.startswith("| Experiment"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Experiment", "Method", "Dataset", "Backbone", "n", "Test acc (%)",
        "test/ce", "test/noise_acc_mean", "test_eval/eg/morf_aopc", "test_eval/eg/total_variation",
    ]
    prior = next(line for line in per_experiment.splitlines() if line.startswith("| cifar10_lenet5_prior"))
    std = 100 * np.std(PRIOR_ACC, ddof=1)
    tv_std = np.std([61.2, 58.4], ddof=1)
    assert prior == (
        f"| cifar10_lenet5_prior | Attribution prior | CIFAR-10 | lenet5 | 2 | 96.00 ± {std:.2f} "
        f"| 0.11 ± {np.std([0.10, 0.12], ddof=1):.4g} | 0.8 ± {np.std([0.81, 0.79], ddof=1):.4g} "
        f"| 0.3 (n=1) | 59.8 ± {tv_std:.4g} |"
    )
    baseline = next(line for line in per_experiment.splitlines() if line.startswith("| cifar10_lenet5_baseline"))
    assert baseline.endswith("| 0.9 (n=1) | — | — | — |")


def test_bad_test_metrics_value_skips_the_file_with_one_line(mixed: Path, capsys) -> None:
    bad = _write(mixed / "bad" / "results.json", _record("prior", 5, 0.9, test_metrics={"test/ce": "high"}))
    runs = report.collect(mixed)
    assert 5 not in {r["seed"] for r in runs} and len(runs) == 4
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"impactx.report: warning: skipping {bad}: test_metrics") and "'test/ce'" in line


def test_null_test_metrics_is_accepted(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "results.json", _record("prior", 0, 0.9, test_metrics=None))
    (row,) = report.experiments(report.collect(tmp_path)).rows
    assert (row.metrics, report.experiments(report.collect(tmp_path)).metrics) == ({}, ())
    assert report.table(report.collect(tmp_path)).rows == []


def test_experiments_csv_is_written(mixed: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert report.main([str(mixed), "--output", str(out)]) == 0
    assert "## Per experiment" in capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO((out / "results_experiments.csv").read_text())))
    assert list(rows[0])[:7] == ["experiment", "method", "dataset", "backbone", "n", "test_acc_mean", "test_acc_std"]
    assert list(rows[0])[7:10] == ["test/ce_mean", "test/ce_std", "test/ce_n"]
    baseline, prior = rows
    assert (prior["experiment"], prior["method"], prior["n"]) == ("cifar10_lenet5_prior", "prior", "2")
    assert float(prior["test_acc_mean"]) == pytest.approx(96.0)
    assert float(prior["test_eval/eg/total_variation_mean"]) == pytest.approx(59.8)
    assert float(prior["test_eval/eg/total_variation_std"]) == pytest.approx(np.std([61.2, 58.4], ddof=1))
    assert (prior["test_eval/eg/morf_aopc_n"], prior["test_eval/eg/morf_aopc_std"]) == ("1", "")
    assert (baseline["test/noise_acc_mean_mean"], baseline["test/noise_acc_mean_n"]) == ("", "0")
    assert float(baseline["test_acc_mean"]) == pytest.approx(67.0)
