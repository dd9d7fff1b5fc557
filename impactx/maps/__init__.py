"""Target maps on disk: the store (one map per item of a split, resumable, verified on open) and its key.

The map pass that fills a store (``impactx.maps.map_pass``, ``python train.py maps``) and the refresh inside
``fit`` (``impactx.maps.refresh``) are imported from their modules: they need Lightning and the explainers.
"""

from impactx.maps.key import MAP_SPLIT, MapKey
from impactx.maps.masks import mask_store
from impactx.maps.store import NORMALISATIONS, MapStore, MapStoreError, normalise_maps

__all__ = ["MAP_SPLIT", "NORMALISATIONS", "MapKey", "MapStore", "MapStoreError", "mask_store", "normalise_maps"]
