"""``ExperimentRunner``: one experiment, every step, resumable; ``results.json`` at the end.

The run folder (``<default_root_dir>/<experiment>/seed<seed>/`` unless ``--run.dir``) holds::

    stage1/  stage1.ckpt     two-stage IMPACTX: A (a ClassifierModule), Lightning's checkpoints and the chosen one
    maps.json  maps/<store>  the target-map store of the train split (two-stage: A's; single-stage: refreshed)
    stage2/  stage2.ckpt     two-stage IMPACTX: LEP, D and C trained with M frozen
    fit/  fit.ckpt           baseline, ABN, attribution prior and single-stage IMPACTX: the one fit
    results.json             test accuracy and every logged test metric (IMPACTX: stage-1 accuracy, map MSE, MoRF AOPC)

The test metrics are also written into the tested checkpoint (``checkpoint["impactx"]["test_metrics"]``), so
``python train.py export`` of it states the model's test accuracy.

Each fit writes Lightning's checkpoints (``last.ckpt`` and the best by the configured monitor) into its own folder
and, when it ends, copies the best (the last when nothing is monitored) to ``<stage>.ckpt`` atomically. Running
the command again skips every stage whose ``<stage>.ckpt`` exists, resumes a fit from its ``last.ckpt``, and
resumes (or skips, when complete) the map pass; so a killed run loses at most the epoch it was in. Every step runs
on every device of the configured trainer (DDP ranks run the runner together; rank 0 writes the files).

Methods (:func:`method_of`): ``baseline`` (``ClassifierModule``), ``abn`` (``AbnModule``), ``impactx``
(``ImpactxModule(training="two_stage")``), ``impactx_single`` (``training="single_stage"``), ``prior``
(``AttributionPriorModule``: one fit, like the baseline).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import lightning as L
from lightning.pytorch.callbacks import Callback

from callbacks.evaluation import ExplanationEvaluation
from callbacks.gallery import ExplanationGallery
from callbacks.map_refresh import MapRefresh
from callbacks.target_error import TargetMapError
from impactx.core import check_int
from impactx.loggers import finish_wandb_runs
from impactx.maps.map_pass import MapPassOptions, run_map_pass
from impactx.maps.store import MapStore
from impactx.modules.attribution_prior import AttributionPriorModule
from impactx.modules.base import BaseModule
from impactx.modules.classifier import ClassifierModule
from impactx.modules.impactx import ImpactxModule
from impactx.modules.metadata import record_test_metrics

__all__ = ["METHODS", "ExperimentRunner", "RunOptions", "TrainerFactory", "method_of"]

METHODS = ("baseline", "abn", "impactx", "impactx_single", "prior")
RESULTS_FORMAT = 1
MAP_PASS_SEED = 0


@dataclass
class RunOptions:
    """What ``python train.py run`` evaluates at the end and where it keeps the run (``--run.*``).

    Attributes:
        name: the experiment's name (``None``: the first logger's ``name``); names the run folder and results.
        dir: the run folder (``None``: ``<default_root_dir>/<experiment>/seed<seed>``).
        eval_images: test images whose MoRF curves score the model's own maps (IMPACTX, ABN), the reference
            explainer's maps on the same model and random maps (0: no evaluation).
        eval_explainer: the reference explainer and options (``None``: IMPACTX's target method, else
            ``{"partition": {"max_evals": 2000}}``, paper 4.2 and 5.2).
        gallery_images: images drawn with their maps and MoRF curves (paper Figs. 3-5; 0: none).
        map_error_images: IMPACTX: test images on which the decoder's maps are compared with target maps (0: none).
    """

    name: str | None = None
    dir: str | None = None
    eval_images: int = 128
    eval_explainer: dict[str, dict[str, Any]] | None = None
    gallery_images: int = 4
    map_error_images: int = 512

    def __post_init__(self) -> None:
        for name in ("eval_images", "gallery_images", "map_error_images"):
            check_int(f"run.{name}", getattr(self, name), minimum=0)
        if self.eval_explainer is not None and len(self.eval_explainer) != 1:
            raise ValueError(f"run.eval_explainer names one explainer, got {sorted(self.eval_explainer)}")


class TrainerFactory(Protocol):
    """Builds the trainer of one step from the experiment's trainer configuration."""

    def __call__(self, stage: str, *, max_epochs: int | None = None, callbacks: Sequence[Callback] = (),
                 checkpoint_dir: Path | None = None, log: bool = True) -> L.Trainer:
        """``stage`` names the step (loggers' versions, run names); ``checkpoint_dir`` is where the step's
        ``ModelCheckpoint`` writes (``None``: no checkpointing); ``log=False``: no logger (the map pass)."""
        ...


def method_of(module: BaseModule) -> str:
    """The experiment's method, from the configured module."""
    if isinstance(module, ImpactxModule):
        return "impactx" if module.hparams.training == "two_stage" else "impactx_single"
    if isinstance(module, ClassifierModule):
        return "baseline"
    if isinstance(module, AttributionPriorModule):
        return "prior"
    if type(module).__name__ == "AbnModule":
        return "abn"
    raise ValueError(f"`run` knows ClassifierModule, AbnModule, ImpactxModule and AttributionPriorModule, got "
                     f"{type(module).__name__}")


def init_args(hparams: Any) -> dict[str, Any]:
    """A module's saved hyperparameters as constructor arguments (without LightningCLI's ``_class_path``)."""
    return {k: v for k, v in dict(hparams).items() if not k.startswith("_")}


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class ExperimentRunner:
    """Runs one configured experiment end to end (module docstring).

    Args:
        make_trainer: the trainer of each step (:class:`TrainerFactory`).
        module: the configured module (its class and hyperparameters define the method).
        datamodule: the configured data module.
        options: :class:`RunOptions`.
        run_dir: the run folder.
        experiment: the experiment's name (in ``results.json``).
        seed: the run's seed (``seed_everything``), set again before every module is built.
        say: where progress lines go (rank 0 only).
    """

    def __init__(self, make_trainer: TrainerFactory, module: BaseModule, datamodule: Any, options: RunOptions,
                 run_dir: Path, experiment: str, seed: int, say: Callable[[str], None] = print) -> None:
        self.make_trainer = make_trainer
        self.module = module
        self.datamodule = datamodule
        self.options = options
        self.run_dir = Path(run_dir)
        self.experiment = experiment
        self.seed = int(seed)
        self.method = method_of(module)
        self._say = say
        self.is_global_zero = True

    # ------------------------------------------------------------------------------------------ steps
    def say(self, message: str) -> None:
        if self.is_global_zero:
            self._say(f"[{self.experiment} seed {self.seed}] {message}")

    def fit(self, stage: str, module: BaseModule, datamodule: Any, max_epochs: int | None = None,
            callbacks: Sequence[Callback] = ()) -> Path:
        """Fit ``module`` as step ``stage`` unless ``<stage>.ckpt`` exists; resume from ``<stage>/last.ckpt``."""
        final = self.run_dir / f"{stage}.ckpt"
        if final.is_file():
            self.say(f"{stage}: {final} exists, not retrained")
            return final
        folder = self.run_dir / stage
        last = folder / "last.ckpt"
        trainer = self.make_trainer(stage, max_epochs=max_epochs, callbacks=callbacks, checkpoint_dir=folder)
        self.is_global_zero = trainer.is_global_zero
        self.say(f"{stage}: fitting {type(module).__name__}" + (f", resuming {last}" if last.is_file() else ""))
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else ""
        tmp = final.with_name(f".{final.name}.tmp")
        if not best:
            trainer.save_checkpoint(tmp)  # collective; rank 0 writes
        elif trainer.is_global_zero:
            shutil.copyfile(best, tmp)
        if trainer.is_global_zero:
            os.replace(tmp, final)
        finish_wandb_runs(trainer.loggers)  # each step is a W&B run of its own (RunIdentity's stage, job type)
        trainer.strategy.barrier(f"{stage}-checkpoint")
        self.say(f"{stage}: {final}" + (f" (best: {Path(best).name})" if best else ""))
        return final

    def map_pass(self, model: BaseModule, datamodule: Any, ckpt_path: Path | None) -> Path:
        """The train split's target-map store of ``model`` (``ckpt_path`` weights): made, resumed or reused."""
        record = self.run_dir / "maps.json"
        if record.is_file():
            folder = Path(json.loads(record.read_text())["store"])
            store = MapStore.open(folder)
            if store.is_complete:
                self.say(f"maps: {folder} is complete, not recomputed")
                return folder
        options = self._target_options()
        trainer = self.make_trainer("maps", log=False)
        self.is_global_zero = trainer.is_global_zero
        start = time.perf_counter()
        folder = run_map_pass(trainer, model, datamodule, options, ckpt_path)
        seconds = time.perf_counter() - start
        n = len(datamodule.map_dataset())
        self.say(f"maps: {n} maps in {seconds:.0f} s ({n / max(seconds, 1e-9):.1f} img/s) -> {folder}")
        if trainer.is_global_zero:
            _write_json_atomically(record, {"store": str(folder), "seconds": seconds, "images": n})
        trainer.strategy.barrier("maps-record")
        return folder

    def test(self, stage: str, module: BaseModule, datamodule: Any, ckpt_path: Path,
             callbacks: Sequence[Callback] = ()) -> dict[str, float]:
        """``trainer.test`` of ``ckpt_path`` with ``callbacks``; the logged metrics as floats, also recorded in the
        checkpoint (``checkpoint["impactx"]["test_metrics"]``, so an export states its test accuracy)."""
        trainer = self.make_trainer(stage, callbacks=callbacks)
        self.is_global_zero = trainer.is_global_zero
        results = trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt_path))
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        if trainer.is_global_zero and metrics:
            record_test_metrics(ckpt_path, metrics)
        finish_wandb_runs(trainer.loggers)
        trainer.strategy.barrier(f"{stage}-metrics")
        return metrics

    # ------------------------------------------------------------------------------------ evaluation
    def _reference_explainer(self) -> dict[str, dict[str, Any]]:
        if self.options.eval_explainer is not None:
            return dict(self.options.eval_explainer)
        spec = (self._target_options() if isinstance(self.module, ImpactxModule) else MapPassOptions()).spec()
        return {spec.name: dict(spec.options)}

    def _target_options(self) -> MapPassOptions:
        """The map pass of IMPACTX's targets, from the module's ``target_*`` hyperparameters."""
        hp = self.module.hparams
        return MapPassOptions(method=hp.target_method, options=hp.target_options, dir=str(self.run_dir / "maps"),
                              batch_size=hp.target_batch_size, seed=MAP_PASS_SEED)

    def evaluation_callbacks(self, map_reference: str | None = None, map_errors: bool = False) -> list[Callback]:
        """MoRF of the model's own maps, the reference explainer's and random maps; the gallery; the map MSE."""
        reference = self._reference_explainer()
        found: list[Callback] = []
        if self.options.eval_images:
            found.append(ExplanationEvaluation(
                explainers={**reference, "random": {}}, metrics=["morf"], num_images=self.options.eval_images,
                seed=self.seed, target="pred",
            ))
        if self.options.gallery_images:
            found.append(ExplanationGallery(explainers=reference, num_images=self.options.gallery_images,
                                            seed=self.seed, target="pred"))
        if map_errors and self.options.map_error_images:
            found.append(TargetMapError(
                explainer=reference, reference_checkpoint=map_reference, num_images=self.options.map_error_images,
                normalisation=self.datamodule.map_normalisation, seed=self.seed,
            ))
        return found

    # ------------------------------------------------------------------------------------------ runs
    def _seeded(self) -> None:
        L.seed_everything(self.seed, workers=True, verbose=False)

    def _with_maps(self, store: Path) -> Any:
        datamodule = self.datamodule
        return type(datamodule)(**{**init_args(datamodule.hparams), "maps": str(store)})

    def run(self) -> dict[str, Any]:
        """Every step of the experiment; returns (and writes, on rank 0) ``results.json``."""
        start = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {"stage1_test_acc": None, "map_mse": None}
        if self.method == "impactx":
            final, metrics, extra = self._two_stage()
        elif self.method == "impactx_single":
            final, metrics, extra = self._single_stage()
        else:
            final = self.fit("fit", self.module, self.datamodule)
            self._seeded()
            metrics = self.test("test", self.module, self.datamodule, final, self.evaluation_callbacks())
            extra = {}
        results.update(extra)
        results.update({
            "format": RESULTS_FORMAT, "experiment": self.experiment, "method": self.method,
            "dataset": getattr(self.datamodule, "name", type(self.datamodule).__name__),
            "backbone": self.module.hparams.get("backbone"), "seed": self.seed,
            "test_acc": metrics.get("test/acc"),
            "morf_aopc": {key.split("/")[1]: value for key, value in metrics.items()
                          if key.startswith("test_eval/") and key.endswith("/morf_aopc")} or None,
            "test_metrics": {k: (v if math.isfinite(v) else None) for k, v in metrics.items()},
            "wall_s": time.perf_counter() - start,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": str(final),
        })
        if metrics.get("test/map_mse") is not None:
            results["map_mse"] = metrics["test/map_mse"]
        if self.is_global_zero:
            _write_json_atomically(self.run_dir / "results.json", results)
        return results

    def _two_stage(self) -> tuple[Path, dict[str, float], dict[str, Any]]:
        hp = self.module.hparams
        self._seeded()
        stage1 = self.module.stage1_module()  # type: ignore[attr-defined]
        stage1_ckpt = self.fit("stage1", stage1, self.datamodule, max_epochs=hp.stage1_epochs)
        store = self.map_pass(stage1, self.datamodule, stage1_ckpt)
        self._seeded()
        stage2 = type(self.module)(**{**init_args(hp), "stage1_checkpoint": str(stage1_ckpt)})
        joined = self._with_maps(store)
        stage2_ckpt = self.fit("stage2", stage2, joined)
        self._seeded()
        stage1_metrics = self.test("test_stage1", stage1, self.datamodule, stage1_ckpt)
        self._seeded()
        callbacks = self.evaluation_callbacks(map_reference=str(stage1_ckpt), map_errors=True)
        metrics = self.test("test", stage2, joined, stage2_ckpt, callbacks)
        return stage2_ckpt, metrics, {"stage1_test_acc": stage1_metrics.get("test/acc"), "store": str(store)}

    def _single_stage(self) -> tuple[Path, dict[str, float], dict[str, Any]]:
        hp = self.module.hparams
        self._seeded()
        module = type(self.module)(**init_args(hp))
        store = self.map_pass(module, self.datamodule, None)  # the maps of the model at initialisation
        joined = self._with_maps(store)
        refresh = MapRefresh(every_n_epochs=hp.refresh_every, warmup_epochs=hp.refresh_warmup,
                             batch_size=hp.target_batch_size)
        final = self.fit("fit", module, joined, callbacks=[refresh])
        self._seeded()
        metrics = self.test("test", module, joined, final, self.evaluation_callbacks(map_errors=True))
        return final, metrics, {"store": str(store)}
