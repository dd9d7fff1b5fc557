"""Experiment trackers that never block a run: W&B falls back to offline mode without credentials.

Also what names a W&B run after the science (:class:`RunIdentity`: experiment, model, data set, seed, stage),
gives it the full config (:func:`describe_wandb_runs`), ends it with its stage (:func:`finish_wandb_runs`) and logs
an export as a W&B model artifact (:func:`log_export_artifact`). ``wandb`` is imported only where it is used.
"""

from __future__ import annotations

import json
import netrc
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_credentials_available() -> bool:
    """True when W&B can log in without asking: an API key in the environment or in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc_path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        hosts = netrc.netrc(netrc_path).hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = base_url.split("://", 1)[-1].split("/", 1)[0]
    return host in hosts


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that picks offline mode by itself when no API key is configured.

    ``offline=None`` (the default) means: online only when ``WANDB_API_KEY`` or a ``~/.netrc`` entry for
    the W&B host exists and ``WANDB_MODE`` is not ``offline``/``disabled``. Offline runs are written
    under ``save_dir`` and can be uploaded later with ``wandb sync``. It never shows a login prompt.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = "logs",
        project: str = "impactx",
        log_model: bool | str = False,
        offline: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE", "").lower()
            offline = mode in ("offline", "dryrun", "disabled") or not wandb_credentials_available()
        if offline and log_model:
            log_model = False  # Lightning refuses to upload checkpoints from an offline run
        # Absolute: wandb's core process, shared by every run of this process, resolves a relative run folder
        # against its own working directory, which is where the first run started.
        save_dir = os.path.abspath(save_dir)
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(name=name, save_dir=save_dir, project=project, log_model=log_model, offline=offline, **kwargs)


# ------------------------------------------------------------------------------------------ run identity
@dataclass(frozen=True)
class RunIdentity:
    """What a W&B run is: ``experiment`` (the config's name), ``model`` (backbone), ``dataset``, ``seed`` and,
    inside ``python train.py run``, the ``stage`` (``stage1``, ``stage2``, ``fit``, ``test``, ``test_stage1``,
    ``export``); ``job`` is W&B's ``job_type`` (``None``: the stage, with every test stage as ``test``)."""

    experiment: str
    model: str
    dataset: str
    seed: int
    stage: str | None = None
    job: str | None = None

    @property
    def name(self) -> str:
        """``<experiment>-<model>-<dataset>-seed<k>[-<stage>]``."""
        parts = [self.experiment, self.model, self.dataset, f"seed{self.seed}"]
        return "-".join(parts + ([self.stage] if self.stage else []))

    @property
    def group(self) -> str:
        """Every stage and seed of one experiment in one W&B group."""
        return self.experiment

    @property
    def job_type(self) -> str:
        if self.job:
            return self.job
        stage = self.stage or "fit"
        return "test" if stage.startswith("test") else stage

    def as_config(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "model": self.model, "dataset": self.dataset, "seed": self.seed,
                "stage": self.stage, "job_type": self.job_type}


def model_name(module: Any) -> str:
    """The model's short name in run names: the module's ``backbone`` hyperparameter, else its class name."""
    hparams = getattr(module, "hparams", None) or {}
    backbone = hparams.get("backbone") if hasattr(hparams, "get") else None
    return str(backbone) if isinstance(backbone, str) and backbone else type(module).__name__


def dataset_name(datamodule: Any) -> str:
    """The data set's short name in run names: the data module's ``name``, else its class name."""
    name = getattr(datamodule, "name", None)
    return str(name) if isinstance(name, str) and name else type(datamodule).__name__


def wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    """The Lightning ``WandbLogger`` instances among ``loggers`` (this module's class is one)."""
    return [lg for lg in loggers if isinstance(lg, _LightningWandbLogger)]


def describe_wandb_runs(loggers: Iterable[Any], identity: RunIdentity, config: Mapping[str, Any]) -> None:
    """Give every W&B logger in ``loggers`` whose run is not created yet ``identity``'s name, group and job type,
    and ``config`` (JSON-safe; Lightning adds the model's and data module's hyperparameters at fit/test start).

    Raises ``RuntimeError`` for a logger whose run already exists: W&B fixes these at ``wandb.init``.
    """
    for logger in wandb_loggers(loggers):
        if logger._experiment is not None:
            raise RuntimeError(f"the W&B run {logger._experiment.name!r} already exists; describe it before it starts")
        logger._wandb_init.update(name=identity.name, group=identity.group, job_type=identity.job_type,
                                  config={**dict(logger._wandb_init.get("config") or {}), **config})


def finish_wandb_runs(loggers: Iterable[Any]) -> None:
    """Finish the W&B runs of ``loggers`` that were started (each stage of ``train.py run`` is its own run:
    Lightning would otherwise hand the next stage's logger the unfinished run)."""
    for logger in wandb_loggers(loggers):
        if logger._experiment is not None:
            logger._experiment.finish()


def json_safe(value: Any) -> Any:
    """``value`` (nested dicts, lists, jsonargparse namespaces, paths ...) as JSON types; the rest as ``str``."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def artifact_name(identity: RunIdentity) -> str:
    """A W&B artifact name (letters, digits, ``-``, ``_``, ``.``) for the export of ``identity``'s run."""
    stem = "-".join([identity.experiment, identity.model, identity.dataset, f"seed{identity.seed}"])
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


def log_export_artifact(logger: Any, folder: Path, description: Mapping[str, Any], identity: RunIdentity) -> Any:
    """Log the export ``folder`` (artifact, JSON description, standalone loader) as a W&B artifact of type
    ``"model"`` with ``description`` as its metadata; returns the ``wandb.Artifact``. Online it is uploaded; an
    offline run records it (staged in W&B's local cache) and ``wandb sync`` uploads it with the run."""
    import wandb

    artifact = wandb.Artifact(artifact_name(identity), type="model", metadata=json_safe(description),
                              description=f"self-explaining export of {identity.name}")
    artifact.add_dir(str(folder))
    logger.experiment.log_artifact(artifact, aliases=["latest", f"seed{identity.seed}"])
    return artifact
