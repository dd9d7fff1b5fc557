"""impactx's entry point.

    python train.py                                   # the default experiment: fit, then test (configs/default.yaml)
    python train.py fit --config configs/cifar10_lenet5_baseline.yaml
    python train.py test --config configs/default.yaml --ckpt_path logs/.../best.ckpt
    python train.py fit --config configs/default.yaml --print_config   # the resolved config
    python train.py maps --config configs/default.yaml --ckpt_path logs/.../best.ckpt --maps.dir maps
    python train.py run --config configs/cifar10_lenet5_impactx.yaml  # every step of an experiment, resumable
    python train.py export --ckpt_path logs/.../stage2.ckpt --format onnx --output model/   # a self-explaining artifact
    python train.py explain --model model/ digit.png                  # its prediction and map of an image
    python train.py --help

A LightningCLI: every constructor argument of the model, the data module, the trainer and its callbacks
is a config key. ``configs/base.yaml`` (trainer, loggers, checkpointing) is loaded first, as the default
config of every subcommand, so an experiment file holds only what differs from it.

Mistakes in the command line or its files stop before anything runs, with one message on stderr and no
traceback: a wrong key or value (the parser's message) or a value a constructor rejects (e.g. an unknown
backbone) exit with status 2; missing files (data set, pretrained weights, checkpoint) exit with status 1.
A run that fails before its first step leaves no log or W&B run folder behind. Any other exception is a
bug and shows its traceback. ``IMPACTX_DEBUG=1`` (or jsonargparse's ``JSONARGPARSE_DEBUG=1``) shows the
full traceback for the user errors too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, instantiate_class
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from impactx.data import DatasetNotFoundError, ImageDataModule
from impactx.export import ArtifactError, ExportError
from impactx.loggers import (
    RunIdentity,
    dataset_name,
    describe_wandb_runs,
    finish_wandb_runs,
    json_safe,
    log_export_artifact,
    model_name,
    wandb_loggers,
)
from impactx.maps import MapStoreError
from impactx.maps.map_pass import MapPassOptions, run_map_pass
from impactx.maps.progress import MapPassProgressBar
from impactx.models import PretrainedWeightsError
from impactx.modules.base import resolve_precision
from runs import ExperimentRunner, RunOptions

CONFIGS = Path(__file__).resolve().parent / "configs"
BASE_CONFIG = CONFIGS / "base.yaml"
DEFAULT_CONFIG = CONFIGS / "default.yaml"
# Dataclass options of the impactx subcommands: `--maps.<field> V` / `--run.<field>=V` are merged into one
# `--maps={field: V, ...}` before parsing (jsonargparse 4.53 under LightningCLI keeps only the last nested key of an
# optional dataclass), and the dict is turned into the dataclass by `options_from`.
OPTION_GROUPS = {"maps": MapPassOptions, "run": RunOptions}
SUBCOMMANDS = ("fit", "validate", "test", "predict", "maps", "run")
# Subcommands with their own parser (impactx.export.cli): no trainer, data or config file.
ARTIFACT_SUBCOMMANDS = ("export", "explain")
DEBUG_VARIABLES = ("IMPACTX_DEBUG", "JSONARGPARSE_DEBUG")


# ------------------------------------------------------------------------------------ user errors
class CheckpointNotFoundError(FileNotFoundError):
    """``--ckpt_path`` names a local file that does not exist."""


class CommandLineError(Exception):
    """A user's mistake, reported by ``main`` as its message alone with exit ``status`` (no traceback)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


#: Files the command line points at are missing or unusable: exit status 1.
#: A map store is missing, incomplete, or of other maps: exit status 1 too.
#: An export's checkpoint or an export folder is missing, altered or unusable: exit status 1.
MISSING_FILE_ERRORS = (DatasetNotFoundError, PretrainedWeightsError, CheckpointNotFoundError, MapStoreError,
                       ExportError, ArtifactError)
#: What a constructor raises when it rejects a config value: exit status 2.
REJECTED_VALUE_ERRORS = (ValueError, TypeError, MisconfigurationException)


class ImpactxTrainer(Trainer):
    """Lightning's Trainer plus the ``maps`` and ``run`` subcommands."""

    def run(self, model: Any, datamodule: Any = None, run: RunOptions | None = None) -> dict[str, Any]:
        """Every step of the configured experiment, resumable, ending in ``results.json`` (see :mod:`runs`).

        Baseline and ABN: fit, test. Two-stage IMPACTX: fit A (stage 1), the map pass, fit LEP, D and C with M
        frozen (stage 2), test both. Single-stage IMPACTX: the map pass of the initial model, one fit with the
        store refreshed every ``refresh_every`` epochs, test. Each step builds its own trainer from the
        ``--trainer.*`` configuration, so this method only runs through ``python train.py run``.

        Args:
            model: the configured module (its class and hyperparameters choose the method).
            datamodule: the configured data module.
            run: what is evaluated at the end and where the run is kept (``--run.*``).
        """
        raise RuntimeError("Trainer.run is the `python train.py run` subcommand; it needs the CLI's configuration")

    def maps(
        self,
        model: Any,
        datamodule: Any = None,
        ckpt_path: str | None = None,
        maps: MapPassOptions | None = None,
    ) -> Path:
        """Compute the target-map store of a trained model over the train split (resumable, all devices).

        Args:
            model: the trained module (the config's ``model``), its weights read from ``ckpt_path``.
            datamodule: the config's ``data``; its full train split is explained, without augmentation.
            ckpt_path: the checkpoint of the model to explain (required).
            maps: what to compute and where (``--maps.method``, ``--maps.options``, ``--maps.dir``, ...).
        """
        if ckpt_path is None:
            raise CommandLineError("maps needs --ckpt_path: the checkpoint of the model whose maps to compute", 2)
        return run_map_pass(self, model, datamodule, options_from("maps", maps), ckpt_path)


def merge_option_groups(args: list[str]) -> list[str]:
    """``args`` with every ``--maps.<field>`` / ``--run.<field>`` (``=V`` or `` V``) merged into one
    ``--maps=<YAML dict>`` / ``--run=<YAML dict>`` after the other arguments (later values win)."""
    merged: dict[str, dict[str, Any]] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        group = next((g for g in OPTION_GROUPS if arg.startswith(f"--{g}.")), None)
        if group is None:
            rest.append(arg)
            i += 1
            continue
        key, has_value, value = arg[len(group) + 3:].partition("=")
        if not has_value:
            if i + 1 >= len(args):
                raise CommandLineError(f"{arg} expects a value", 2)
            value, i = args[i + 1], i + 1
        merged.setdefault(group, {})[key] = yaml.safe_load(value)
        i += 1
    return [*rest, *(f"--{g}={json.dumps(v)}" for g, v in merged.items())]


def options_from(group: str, value: Any) -> Any:
    """The ``OPTION_GROUPS[group]`` dataclass from the parsed value (``None``, a dict, or already the dataclass)."""
    cls = OPTION_GROUPS[group]
    if value is None or isinstance(value, cls):
        return value or cls()
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    try:
        return cls(**dict(value))
    except (TypeError, ValueError) as error:
        raise CommandLineError(f"--{group}: {error}", 2) from None


def debug_requested() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in DEBUG_VARIABLES)


def _raised_by_jsonargparse(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}jsonargparse{os.sep}" in tb.tb_frame.f_code.co_filename


def constructor_error(error: BaseException) -> BaseException:
    """The exception a constructor raised, under the ones jsonargparse wraps it in during instantiation."""
    while _raised_by_jsonargparse(error) and error.__cause__ is not None:
        error = error.__cause__
    return error


_PARSER_NOISE = re.compile(
    r"^\s*(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:"
    r"|- Expected a <class 'NoneType'>|Given value type: .*)$"
)


def short_parser_message(message: str) -> str:
    """jsonargparse's message without the lines that list every type of a union it tried."""
    return "\n".join(line for line in message.splitlines() if not _PARSER_NOISE.match(line))


def user_error(error: BaseException) -> tuple[int, str] | None:
    """``(exit status, message)`` when ``error`` is a user's mistake, ``None`` when it is a bug."""
    if isinstance(error, ArgumentError):
        return 2, short_parser_message(str(error))
    if isinstance(error, CommandLineError):
        return error.status, str(error)
    if isinstance(error, MISSING_FILE_ERRORS):
        return 1, str(error)
    return None


# ----------------------------------------------------------------------------- early-failure cleanup
class _FirstStep(Callback):
    """Notes whether the run has started a step (training, validation, test or predict batch)."""

    def __init__(self) -> None:
        self.started = False

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.started = True

    def on_validation_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.started = self.started or not trainer.sanity_checking

    def on_test_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.started = True

    def on_predict_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.started = True


class RunFolders:
    """The log folders a run may create under its roots (``default_root_dir``, each logger's ``save_dir``).

    Made before anything is instantiated, it remembers which folders (two levels under each root, e.g.
    ``logs/<name>/version_N`` and ``logs/wandb/<run>``) and W&B ``latest`` links already exist, so
    :meth:`remove_new` deletes only what this run created.
    """

    def __init__(self, roots: list[str]) -> None:
        self.roots = [Path(r).absolute() for r in dict.fromkeys(roots)]
        self.existing: set[Path] = set()
        self.links: dict[Path, str] = {}
        for root in self.roots:
            self.existing.update(p for p in [root, *root.parents] if p.exists())
            self.existing.update([*root.glob("*"), *root.glob("*/*")])
            for link in (root / "wandb").glob("*"):
                if link.is_symlink():
                    self.links[link] = os.readlink(link)

    def remove_new(self, trainer: Trainer | None) -> None:
        """Delete the run folders of ``trainer``'s loggers that are new, then new folders left empty."""
        removed: list[Path] = []
        for logger in trainer.loggers if trainer is not None and trainer.is_global_zero else []:
            if getattr(logger, "_experiment", None) is None:
                continue  # no experiment, nothing written
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                folder = Path(run.dir).absolute().parent  # <save_dir>/wandb/offline-run-<time>-<id>
                run.finish(exit_code=1)
            else:
                folder = Path(logger.log_dir).absolute()  # CSV / TensorBoard: <save_dir>/<name>/version_N
            if folder not in self.existing and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        self._restore_links(removed)
        for folder in [*removed, *self.roots]:
            for candidate in [folder, *folder.parents]:
                if not candidate.exists():
                    continue
                if candidate in self.existing or not candidate.is_dir() or any(candidate.iterdir()):
                    break
                candidate.rmdir()

    def _restore_links(self, removed: list[Path]) -> None:
        """W&B points ``latest-run``, ``debug.log`` ... at the newest run: point them back or drop them."""
        for root in self.roots:
            for link in (root / "wandb").glob("*"):
                if not link.is_symlink():
                    continue
                target = Path(os.path.join(link.parent, os.readlink(link))).absolute()
                if any(target == r or r in target.parents for r in removed):
                    link.unlink()
                    if link in self.links:
                        link.symlink_to(self.links[link])


# ---------------------------------------------------------------------------------------- the CLI
class ImpactxCLI(LightningCLI):
    """LightningCLI whose model is told the data's classes, channels and image size.

    It reports constructor errors as :class:`CommandLineError`, checks that the data and the checkpoint
    of a subcommand exist before it builds the trainer (so before any log folder or W&B run exists), and
    removes the folders of a run that fails before its first step. ``check_stage`` names the stage to
    check when there is no subcommand (``run=False``); ``None`` checks nothing then.
    """

    def __init__(self, *args: Any, check_stage: str | None = None, **kwargs: Any) -> None:
        self.check_stage = check_stage
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "maps": {"model", "datamodule"}, "run": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.init_args.input_size", apply_on="instantiate")

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> Trainer:
        """Add a rich progress bar unless the config disables the bar or brings its own."""
        configured = [*(config.get("callbacks") or []), *callbacks]
        if self.subcommand in ("maps", "run"):
            # A map pass is a precompute, not an experiment: no logger, no run folder; images/s on the bar.
            # `run` builds a trainer per step (stage_trainer); this one only carries the configuration.
            config = {**config, "logger": False}
            self.save_config_callback = None  # nor a config.yaml in the log folder
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            bar = MapPassProgressBar(self._map_batch_size()) if self.subcommand == "maps" else RichProgressBar()
            callbacks = [*callbacks, bar]
        precision = resolve_precision(config.get("precision"), config.get("accelerator"), stage=self.subcommand or "fit",
                                      double_backward=getattr(getattr(self, "model", None), "double_backward", False))
        config = {**config, "precision": precision}
        self.first_step = _FirstStep()
        return super()._instantiate_trainer(config, [*callbacks, self.first_step])

    def _map_batch_size(self) -> int:
        return int(options_from("maps", self._get(self.config, "maps")).batch_size)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        stage = {"maps": "fit", "run": "fit"}.get(self.subcommand, self.subcommand) or self.check_stage
        if stage is not None:
            self.check_inputs(stage)
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand not in ("maps", "run"):  # `run` names each step's W&B run in stage_loggers
            identity = self.run_identity(None, job=self.subcommand or "fit")
            describe_wandb_runs(trainer.loggers, identity, self.wandb_config(identity))
        return trainer

    def run_identity(self, stage: str | None, job: str | None = None) -> RunIdentity:
        """The W&B run of ``stage`` (``None``: a plain subcommand): experiment, model, data set, seed."""
        experiment = getattr(self, "_experiment", None) or self._experiment_name()
        return RunIdentity(experiment, model_name(self.model), dataset_name(self.datamodule), self._run_seed(),
                           stage, job)

    def wandb_config(self, identity: RunIdentity) -> dict[str, Any]:
        """The W&B config: the run's identity and the subcommand's full resolved LightningCLI config (trainer, model,
        data, ``run`` options); Lightning adds the model's and data module's hyperparameters at fit/test start."""
        config = json_safe(self.config.get(self.subcommand) if self.subcommand else self.config)
        if self.subcommand == "run":  # every run option, the defaults too (the parsed value is None when none is given)
            config["run"] = json_safe(dataclasses.asdict(options_from("run", config.get("run"))))
        return {"identity": identity.as_config(), "cli": config}

    def instantiate_classes(self) -> None:
        self.run_folders = RunFolders(self._log_roots())
        try:
            super().instantiate_classes()
        except Exception as error:
            self.run_folders.remove_new(None)  # e.g. the W&B logger makes its save_dir when constructed
            cause = constructor_error(error)
            if isinstance(cause, MISSING_FILE_ERRORS):
                raise CommandLineError(str(cause), status=1) from error
            if isinstance(cause, REJECTED_VALUE_ERRORS):
                raise CommandLineError(str(cause), status=2) from error
            raise

    def _log_roots(self) -> list[str]:
        trainer = self._get(self.config, "trainer") or {}
        roots = [trainer.get("default_root_dir") or os.getcwd()]
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
            if init_args is not None and init_args.get("save_dir"):
                roots.append(str(init_args.get("save_dir")))
        return roots

    def check_inputs(self, stage: str) -> None:
        """Fail before the trainer starts when the data of ``stage`` or the checkpoint file is missing."""
        if isinstance(self.datamodule, ImageDataModule) and not self.datamodule.download:
            self.datamodule.check_data(stage)  # with download, prepare_data runs first, before any log folder
        ckpt_path = self._get(self.config, "ckpt_path")
        special = ckpt_path in ("best", "last", "hpc") or str(ckpt_path).startswith("registry")
        if ckpt_path and not special and "://" not in str(ckpt_path) and not Path(ckpt_path).is_file():
            raise CheckpointNotFoundError(f"ckpt_path '{os.path.abspath(ckpt_path)}' is not a file")

    @contextlib.contextmanager
    def removing_folders_if_failed_early(self) -> Iterator[None]:
        """Delete the log folders this run created if the body fails before the run's first step."""
        try:
            yield
        except BaseException:
            if not self.first_step.started:
                self.run_folders.remove_new(self.trainer)
            raise

    def _run_subcommand(self, subcommand: str) -> None:
        with self.removing_folders_if_failed_early():
            super()._run_subcommand(subcommand)

    # ------------------------------------------------------------------------------ `run`: the experiment
    def run(self, model: Any, datamodule: Any = None, run: RunOptions | None = None) -> dict[str, Any]:
        """The ``run`` subcommand (see :meth:`ImpactxTrainer.run`); its results stay in :attr:`run_results`."""
        options = options_from("run", run)
        seed = self._run_seed()
        experiment = options.name or self._experiment_name()
        self._experiment = experiment  # the loggers' name in every step (--run.name renames them too)
        run_dir = Path(options.dir) if options.dir else Path(self.trainer.default_root_dir) / experiment / f"seed{seed}"
        runner = ExperimentRunner(self.stage_trainer, model, datamodule, options, run_dir, experiment, seed)
        self.run_results = runner.run()
        return self.run_results

    def _run_seed(self) -> int:
        """``seed_everything`` as an int (0 when unset or ``true``)."""
        seed = self._get(self.config, "seed_everything")
        return 0 if seed is None or seed is True else int(seed)

    def _experiment_name(self) -> str:
        for logger in self._logger_configs():
            name = (logger.get("init_args") or {}).get("name")
            if name:
                return str(name)
        return type(self.model).__name__

    def _logger_configs(self) -> list[dict[str, Any]]:
        loggers = (self._get(self.config, "trainer") or {}).get("logger")
        if loggers is None or isinstance(loggers, bool):
            return []
        loggers = loggers if isinstance(loggers, list) else [loggers]
        return [lg.as_dict() if hasattr(lg, "as_dict") else dict(lg) for lg in loggers]

    def stage_trainer(self, stage: str, *, max_epochs: int | None = None, callbacks: Any = (),
                      checkpoint_dir: Path | None = None, log: bool = True) -> Trainer:
        """A fresh trainer for one step of ``run``, from the ``--trainer.*`` configuration: its loggers
        (:meth:`stage_loggers`), its callbacks new, ``ModelCheckpoint``
        writing into ``checkpoint_dir`` (dropped when ``None``). ``<name>`` is the experiment's (``--run.name``,
        else the logger's), so two experiments of one config never share a log folder."""
        trainer_config = self._get(self.config, "trainer")
        kwargs = {k: v for k, v in self._get(self.config_init, "trainer").items() if k not in ("logger", "callbacks")}
        loggers = self.stage_loggers(stage) if log else []
        stage_callbacks = []
        configured = trainer_config.get("callbacks") or []
        for config in configured if isinstance(configured, list) else [configured]:
            config = config.as_dict() if hasattr(config, "as_dict") else dict(config)
            callback = instantiate_class((), config)
            if isinstance(callback, ModelCheckpoint):
                if checkpoint_dir is None:
                    continue
                init_args = {**(config.get("init_args") or {}), "dirpath": str(checkpoint_dir)}
                callback = instantiate_class((), {"class_path": config["class_path"], "init_args": init_args})
            stage_callbacks.append(callback)
        stage_callbacks += list(callbacks)
        if kwargs.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in stage_callbacks):
            stage_callbacks.append(MapPassProgressBar(self._model_hparam("target_batch_size", 64)) if stage == "maps"
                                   else RichProgressBar())
        kwargs.update(logger=loggers or False, callbacks=[*stage_callbacks, self.first_step],
                      enable_checkpointing=checkpoint_dir is not None)
        kwargs["precision"] = resolve_precision(kwargs.get("precision"), kwargs.get("accelerator"), stage=stage,
                                                double_backward=getattr(self.model, "double_backward", False))
        if max_epochs is not None:
            kwargs["max_epochs"] = max_epochs
        if stage.startswith("test"):
            kwargs["inference_mode"] = False  # gradient reference explainers (ig, eg) at evaluation
        return ImpactxTrainer(**kwargs)

    def stage_loggers(self, stage: str, wandb_only: bool = False) -> list[Any]:
        """The configured loggers of one step of ``run``: CSV, TensorBoard with version ``seed<seed>-<stage>``; W&B
        named by :meth:`run_identity` (``<experiment>-<model>-<dataset>-seed<k>-<stage>``, group ``<experiment>``,
        job type the stage) with the full config."""
        experiment = getattr(self, "_experiment", None)
        loggers = []
        for config in self._logger_configs():
            is_wandb = config["class_path"].endswith("WandbLogger")
            if wandb_only and not is_wandb:
                continue
            init_args = dict(config.get("init_args") or {})
            if experiment:
                init_args["name"] = experiment
            if not is_wandb:
                init_args["version"] = f"seed{self._run_seed()}-{stage}"
            loggers.append(instantiate_class((), {"class_path": config["class_path"], "init_args": init_args}))
        identity = self.run_identity(stage)
        describe_wandb_runs(loggers, identity, self.wandb_config(identity))
        return loggers

    def log_export(self, description_path: Path) -> None:
        """Log the export folder of ``description_path`` as a W&B model artifact in a run of its own (job type
        ``export``) when a W&B logger is configured; recorded offline, uploaded online."""
        loggers = self.stage_loggers("export", wandb_only=True)
        for logger in wandb_loggers(loggers)[:1]:
            description = json.loads(description_path.read_text())
            log_export_artifact(logger, description_path.parent, description, self.run_identity("export"))
        finish_wandb_runs(loggers)

    def _model_hparam(self, name: str, default: Any) -> Any:
        return getattr(self.model, "hparams", {}).get(name, default)


def make_cli(
    args: list[str] | None = None,
    run: bool = True,
    default_configs: tuple[Path, ...] = (BASE_CONFIG,),
    check_stage: str | None = None,
) -> ImpactxCLI:
    """The CLI over ``args`` (``None``: the command line); ``default_configs`` load before any ``--config``.

    With ``run=False`` nothing runs and, unless ``check_stage`` names a stage, no data are read.
    """
    if args is None:  # LightningCLI reads sys.argv itself (and warns when given both): merge there
        sys.argv[1:] = merge_option_groups(sys.argv[1:])
    else:
        args = merge_option_groups(list(args))
    parser_kwargs: dict[str, Any] = {
        "default_config_files": [glob.escape(str(p)) for p in default_configs],
        "exit_on_error": False,  # main() prints the parser's message without the usage screen
    }
    if run:
        parser_kwargs = {"exit_on_error": False, **{sub: dict(parser_kwargs) for sub in SUBCOMMANDS}}
    return ImpactxCLI(
        model_class=None,
        trainer_class=ImpactxTrainer,
        datamodule_class=ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
        args=args,
        run=run,
        check_stage=check_stage,
    )


def run_default(extra_args: list[str] | None = None) -> dict[str, Any]:
    """The default experiment (``configs/default.yaml``: two-stage IMPACTX, LeNet-5, digits) through ``run``;
    prints and returns its results. ``extra_args`` (``None``: the command line) go on top of base.yaml and
    default.yaml."""
    args = list(sys.argv[1:] if extra_args is None else extra_args)
    cli = make_cli(["run", *args], default_configs=(BASE_CONFIG, DEFAULT_CONFIG))
    results = cli.run_results
    if cli.trainer.is_global_zero:
        print(summary_text(results))
        print(export_default(results, cli.datamodule, on_export=cli.log_export))
    return results


def export_default(results: dict[str, Any], datamodule: Any, on_export: Any = None) -> str:
    """Export the default experiment's model (``<run>/export/``, torch.export) with a test image beside it, then
    call ``on_export(description_path)`` (e.g. :meth:`ImpactxCLI.log_export`); returns the lines that say where
    they are and the ``explain`` command to try."""
    from impactx.export import export_checkpoint
    from impactx.export.explain import save_example_image

    checkpoint = Path(results["checkpoint"])
    folder = checkpoint.parent / "export"
    description = export_checkpoint(checkpoint, "exported_program", folder)
    image = save_example_image(datamodule, folder, position=0)
    if on_export is not None:
        on_export(description)
    return (f"  self-explaining export: {description.parent / json.loads(description.read_text())['artifact']}\n"
            f"  explain a test image: python train.py explain --model {folder} {image}")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def summary_text(results: dict[str, Any]) -> str:
    """The default experiment's summary: accuracies, the decoder's map error, MoRF AOPC of each map source."""
    lines = [f"\nimpactx {results['experiment']} ({results['method']}, {results['backbone']} on {results['dataset']}, "
             f"seed {results['seed']}) in {results['wall_s']:.0f} s"]
    if results.get("stage1_test_acc") is not None:
        lines.append(f"  baseline A (stage 1) test accuracy: {_percent(results['stage1_test_acc'])}")
    lines.append(f"  {results['method']} test accuracy: {_percent(results['test_acc'])}")
    if results.get("map_mse") is not None:
        lines.append(f"  decoder maps' MSE to the target maps (test set): {results['map_mse']:.4f}")
    aopc = results.get("morf_aopc") or {}
    if aopc:
        names = {"self": "the model's own maps", "random": "random maps"}
        lines.append("  MoRF AOPC (higher: the map finds what the decision rests on):")
        lines += [f"    {names.get(k, k + ' on the same model')}: {v:.4f}" for k, v in aopc.items()]
    lines.append(f"  checkpoint: {results['checkpoint']}")
    return "\n".join(lines)


def run_artifact_subcommand(subcommand: str, args: list[str]) -> int:
    """``export`` or ``explain`` (:mod:`impactx.export.cli`); returns the exit status. A value the command
    rejects (``--top_k 0``) is a :class:`CommandLineError` with status 2."""
    from impactx.export.cli import UsageError, explain_command, export_command

    try:
        if subcommand == "export":
            export_command(args)
            return 0
        return explain_command(args)
    except UsageError as error:
        raise CommandLineError(str(error), 2) from error


def main(argv: list[str] | None = None) -> None:
    """Run ``argv`` (``None``: the command line); a user's mistake exits with its message, not a traceback."""
    args = sys.argv[1:] if argv is None else argv
    subcommand = next((a for a in args if a in SUBCOMMANDS), None)
    if args and args[0] in ARTIFACT_SUBCOMMANDS:
        subcommand = args[0]
    try:
        if subcommand in ARTIFACT_SUBCOMMANDS:
            status = run_artifact_subcommand(subcommand, list(args[1:]))
            if status:
                raise SystemExit(status)
        elif subcommand is None and not any(a in ("-h", "--help", "--print_config") for a in args):
            run_default(argv)
        else:
            make_cli(argv)
    except Exception as error:
        report = user_error(error)
        if report is None or debug_requested():
            raise
        status, message = report
        command = f"python train.py {subcommand} --help" if subcommand else "python train.py --help"
        hint = f"{command} lists every key; " if isinstance(error, ArgumentError) else ""
        sys.stderr.write(f"error: {message}\n({hint}IMPACTX_DEBUG=1 shows the full traceback)\n")
        raise SystemExit(status) from None


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
