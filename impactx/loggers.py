"""Experiment trackers that never block a run: W&B falls back to offline mode without credentials."""

from __future__ import annotations

import netrc
import os
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
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(name=name, save_dir=save_dir, project=project, log_model=log_model, offline=offline, **kwargs)
