"""``python train.py run``: every step of two-stage IMPACTX, resumed after a crash in stage 2; the other methods'
runs. (Every mode on 2 DDP processes against one: test_one_behaviour.py; killed around the map pass: test_resume.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from train_script import load_train_script

ROOT = Path(__file__).resolve().parents[2]
train = load_train_script("impactx_train_script_runs")

CHEAP = [
    "--trainer.max_epochs=3", "--model.init_args.stage1_epochs=2", "--trainer.enable_progress_bar=false",
    "--model.init_args.target_options={max_evals: 32}", "--run.eval_images=16", "--run.gallery_images=0",
    "--run.map_error_images=32", "--run.eval_explainer={partition: {max_evals: 32}}",
]


@pytest.fixture(autouse=True)
def _plain_command_line(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])


def _run(args: list[str]):
    return train.make_cli(["run", "--config", str(ROOT / "configs/default.yaml"), *CHEAP, *args])


def test_two_stage_run_resumes_after_a_crash_in_stage_2(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMPACTX_CRASH", "1")
    crash = ["--trainer.callbacks+=run_helpers.CrashInStage2"]
    with pytest.raises(RuntimeError, match="crash requested"):
        _run(crash)
    run_dir = tmp_path / "logs/default/seed0"
    stage1 = run_dir / "stage1.ckpt"
    assert stage1.is_file() and (run_dir / "maps.json").is_file()
    assert (run_dir / "stage2/last.ckpt").is_file() and not (run_dir / "stage2.ckpt").exists()
    stage1_weights = torch.load(stage1, map_location="cpu", weights_only=True)["state_dict"]
    store = Path(json.loads((run_dir / "maps.json").read_text())["store"])
    store_time = (store / "maps.npy").stat().st_mtime_ns
    capsys.readouterr()

    monkeypatch.delenv("IMPACTX_CRASH")
    results = _run(crash).run_results
    out = capsys.readouterr().out
    assert "stage1: logs/default/seed0/stage1.ckpt exists, not retrained" in out
    assert "is complete, not recomputed" in out
    assert "stage2: fitting ImpactxModule, resuming logs/default/seed0/stage2/last.ckpt" in out
    # Stage 1 is not retrained (its test metrics are now recorded in the file, its weights are the same).
    recorded = torch.load(stage1, map_location="cpu", weights_only=True)
    assert recorded["state_dict"].keys() == stage1_weights.keys()
    assert all(torch.equal(recorded["state_dict"][k], v) for k, v in stage1_weights.items())
    assert recorded["impactx"]["test_metrics"]["test/acc"] == pytest.approx(results["stage1_test_acc"])
    assert (store / "maps.npy").stat().st_mtime_ns == store_time
    resumed = torch.load(run_dir / "stage2.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] <= 2 and resumed["global_step"] > 0

    written = json.loads((run_dir / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert written["method"] == "impactx" and written["dataset"] == "digits" and written["backbone"] == "lenet5"
    assert 0.5 < written["test_acc"] <= 1 and 0.5 < written["stage1_test_acc"] <= 1
    assert 0 < written["map_mse"] < 1
    assert set(written["morf_aopc"]) == {"self", "partition", "random"}

    # a third run recomputes nothing
    stage1_time = stage1.stat().st_mtime_ns
    again = _run([]).run_results
    out = capsys.readouterr().out
    assert "stage2: logs/default/seed0/stage2.ckpt exists, not retrained" in out
    assert again["test_acc"] == pytest.approx(results["test_acc"])
    assert stage1.stat().st_mtime_ns == stage1_time  # the same test metrics are not written again


@pytest.mark.parametrize("config", ["digits_baseline", "digits_abn"])
def test_one_fit_methods_write_results(config, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = train.make_cli(["run", "--config", str(ROOT / f"configs/{config}.yaml"), "--trainer.max_epochs=2",
                          "--trainer.enable_progress_bar=false", "--run.eval_images=16", "--run.gallery_images=2",
                          "--run.eval_explainer={partition: {max_evals: 32}}"])
    results = json.loads((tmp_path / f"logs/{config}/seed0/results.json").read_text())
    assert results["method"] == config.split("_")[1] and results["test_acc"] == cli.run_results["test_acc"]
    assert (tmp_path / f"logs/{config}/seed0/fit.ckpt").is_file()
    expected = {"partition", "random"} | ({"self"} if config == "digits_abn" else set())
    assert set(results["morf_aopc"]) == expected
    # The tested checkpoint records its test metrics (what an export states as the model's accuracy).
    recorded = torch.load(tmp_path / f"logs/{config}/seed0/fit.ckpt", map_location="cpu", weights_only=True)
    assert recorded["impactx"]["test_metrics"]["test/acc"] == pytest.approx(results["test_acc"])


def test_attribution_prior_run_writes_its_metrics_under_its_own_name(tmp_path, monkeypatch) -> None:
    """``run`` of a prior config: method "prior", every test metric in results.json (noise curve, EG total
    variation), the DeepPrior density in the checkpoint, and ``--run.name`` naming the log folders too."""
    monkeypatch.chdir(tmp_path)
    train.make_cli(["run", "--config", str(ROOT / "configs/digits_prior_mgm_tv.yaml"), "--trainer.max_epochs=1",
                    "--trainer.enable_progress_bar=false", "--run.eval_images=8", "--run.gallery_images=0",
                    "--run.eval_explainer={partition: {max_evals: 16}}", "--run.name=mgm_short"])
    results = json.loads((tmp_path / "logs/mgm_short/seed0/results.json").read_text())
    assert results["method"] == "prior" and results["experiment"] == "mgm_short"
    metrics = results["test_metrics"]
    assert {"test/noise_acc_mean", "test_eval/eg/total_variation", "test/ce"} <= set(metrics)
    assert set(results["morf_aopc"]) == {"eg", "partition", "random"}
    state = torch.load(tmp_path / "logs/mgm_short/seed0/fit.ckpt", map_location="cpu", weights_only=True)
    assert state["state_dict"]["_extra_state"]["density"]["state"]["kind"] == "mgm"
    assert (tmp_path / "logs/mgm_short/seed0-fit/metrics.csv").is_file()
    assert not (tmp_path / "logs/digits_prior_mgm_tv").exists()  # the config's logger name is not used
