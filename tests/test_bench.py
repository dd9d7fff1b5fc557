"""``python -m bench``: tables printed by the benchmarks are recorded and written as one markdown report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import Table, print_table, recording
from bench.scaling import axis_rows

ROOT = Path(__file__).resolve().parents[1]


def test_print_table_records_what_it_prints(capsys) -> None:
    with recording() as outer:
        with recording() as inner:
            print_table("speeds", ["model", "img/s"], [["lenet5", 1234.5678], ["a|b", 3]])
    print_table("after", ["x"], [[1]])  # outside every recording: printed only
    assert inner.tables == outer.tables == [Table("speeds", ["model", "img/s"], [["lenet5", "1235"], ["a|b", "3"]])]
    assert "lenet5 | 1235" in capsys.readouterr().out
    assert inner.tables[0].markdown().splitlines() == ["| model | img/s |", "|---|---|", "| lenet5 | 1235 |",
                                                       "| a\\|b | 3 |"]


def test_scaling_rows_compare_each_point_with_the_first_of_its_axis() -> None:
    # a cost linear in pixels and in evaluations, constant in batch: x base must equal x setting where it grows
    rows = axis_rows("c", lambda size, batch, evals: size**2 * evals * 1e-6, "s", {"size": [32, 64], "batch": [1, 4],
                     "evals": [100, 400]}, {"size": 32, "batch": 1, "evals": 100})
    by_point = {(r[1], r[2]): (r[5], r[6]) for r in rows}
    assert by_point[("size", 64)] == ("4.00", "4.00")
    assert by_point[("batch", 4)] == ("1.00", "4.00")
    assert by_point[("evals", 400)] == ("4.00", "4.00")


def _run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "report.md"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--output", str(out), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    return proc, out.read_text() if out.is_file() else ""


def test_quick_bench_writes_a_markdown_report(tmp_path) -> None:
    proc, report = _run_bench(tmp_path, "--only", "training")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert report.startswith("# impactx benchmarks: CPU (")
    assert "`python -m bench.training --quick --device cpu`" in report
    assert "| model | module | batch | variant | first s | steps/s | img/s | x fp32 |" in report
    rows = [line for line in report.splitlines() if line.startswith("| lenet5 | abn ")]
    assert {line.split(" | ")[3] for line in rows} >= {"fp32", "bf16", "channels_last"}
    assert "| lenet5 | attribution prior |" in report  # the bf16 error table
    assert "Failed" not in report


def test_cuda_only_modules_are_skipped_on_the_cpu_and_a_missing_gpu_is_a_clear_error(tmp_path) -> None:
    proc, report = _run_bench(tmp_path, "--only", "gpu_check")
    assert proc.returncode == 0 and report.startswith("# impactx benchmarks: CPU (")
    assert "## gpu_check" not in report
    bad = subprocess.run([sys.executable, "-m", "bench", "--device", "cuda:7"], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""})
    assert bad.returncode == 2 and "--device cuda:7: CUDA is not available here" in bad.stderr


@pytest.mark.slow
def test_quick_bench_runs_every_module(tmp_path) -> None:
    proc, report = _run_bench(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("attribution", "explainers", "metrics", "maps", "prior_overhead", "training", "scaling", "export"):
        assert f"## {name} (" in report
    assert "fraction of peak" in report and "Cost growth" in report and "Failed" not in report


def test_a_failing_module_is_reported_and_its_tables_kept(monkeypatch) -> None:
    import bench.training
    from bench.__main__ import Entry, markdown, run_entry

    def broken() -> None:
        print("device: a test")
        print_table("half done", ["a"], [[1]])
        raise RuntimeError("out of memory at batch 4096")

    monkeypatch.setattr(bench.training, "main", broken)
    result = run_entry(Entry("training", ("--quick",)), quick=True, device="cpu")
    assert "RuntimeError: out of memory at batch 4096" in result.error
    assert [t.title for t in result.tables] == ["half done"] and result.notes == ["device: a test"]
    report = markdown({"training": result}, __import__("torch").device("cpu"), True, ["--quick"])
    assert "**half done**" in report and "**Failed:**" in report and "out of memory at batch 4096" in report
