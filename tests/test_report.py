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
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.md"]  # no temporary left behind
    assert (out / "results.md").read_text() == capsys.readouterr().out
    assert (out / "results.csv").read_text().startswith("dataset,backbone,")


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
