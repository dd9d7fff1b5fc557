"""``MapRefresh``: recompute the target-map store from the model being trained, every k epochs after a warm-up."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn

from impactx.core import check_int
from impactx.maps.map_pass import map_explainer
from impactx.maps.refresh import refresh_store
from impactx.maps.store import MapStore


class MapRefresh(Callback):
    """At the end of training epoch ``e`` (1-based) with ``e > warmup_epochs`` and ``(e - warmup_epochs) %
    every_n_epochs == 0``, recompute every row of the data module's map store (``data.maps``) with the store's
    own explainer and options, from the module being trained (or its submodule ``model_attr``), sharded over
    the ranks and gathered (:func:`impactx.maps.refresh.refresh_store`). Logs ``maps/mean_abs_change`` and
    ``maps/rank_correlation`` against the previous values.

    Args:
        every_n_epochs: refresh period in epochs.
        warmup_epochs: epochs before the first refresh.
        batch_size: images per explainer call.
        model_attr: explain ``getattr(pl_module, model_attr)`` instead of the module itself (``None``).
    """

    def __init__(self, every_n_epochs: int = 5, warmup_epochs: int = 5, batch_size: int = 64,
                 model_attr: str | None = None) -> None:
        super().__init__()
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=0)
        self.batch_size = check_int("batch_size", batch_size)
        self.model_attr = model_attr
        self.last_stats = None

    def due(self, epoch: int) -> bool:
        """Whether a refresh follows the 0-based training epoch ``epoch``."""
        done = epoch + 1 - self.warmup_epochs
        return done > 0 and done % self.every_n_epochs == 0

    def _store(self, trainer: L.Trainer) -> MapStore:
        datamodule = trainer.datamodule
        store = getattr(datamodule, "map_store", None) if datamodule is not None else None
        if store is None:
            raise RuntimeError(
                "MapRefresh needs a data module with a map store joined (data option `maps: DIR`), got "
                f"{type(datamodule).__name__}"
            )
        return MapStore.open(store.path, writable=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer.current_epoch):
            return
        store = self._store(trainer)
        model: nn.Module = pl_module if self.model_attr is None else getattr(pl_module, self.model_attr)
        dataset = trainer.datamodule.map_dataset()
        source = map_explainer(store.key, dataset)
        stats = refresh_store(store, model, source, dataset, self.batch_size, pl_module.device)
        self.last_stats = stats
        pl_module.log("maps/mean_abs_change", stats.mean_abs_change, on_epoch=True, sync_dist=False)
        pl_module.log("maps/rank_correlation", stats.rank_correlation, on_epoch=True, sync_dist=False)
