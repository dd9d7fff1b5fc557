"""The map store: layout readable with numpy alone, round trip, done mask, completion, refusal of other keys."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from impactx.maps.key import MapKey
from impactx.maps.store import MapStore, MapStoreError, normalise_maps


def make_key(**changes) -> MapKey:
    key = MapKey(
        dataset="digits", split="train", preprocessing="Compose(Normalize(mean=[0.5], std=[0.5]))",
        explainer="partition", options={"max_evals": 2000, "seed": 0}, target="label", model="ab" * 32,
    )
    return replace(key, **changes)


def test_round_trip_and_numpy_layout(tmp_path):
    key = make_key()
    store = MapStore.create(tmp_path, key, n=10, map_shape=(1, 4, 4))
    assert store.path == tmp_path / key.folder_name() and store.path.name.startswith("digits-train-partition-")
    rows = torch.randn(3, 1, 4, 4)
    store.write(torch.tensor([7, 0, 3]), rows)
    assert sorted(set(range(10)) - set(store.missing().tolist())) == [0, 3, 7]
    # readable without impactx
    raw = np.load(store.path / "maps.npy", mmap_mode="r")
    assert raw.shape == (10, 1, 4, 4) and raw.dtype == np.float32
    np.testing.assert_array_equal(raw[[7, 0, 3]], rows.numpy())
    assert np.load(store.path / "done.npy").tolist() == [1, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["key"] == key.to_json() and manifest["shape"] == [10, 1, 4, 4] and manifest["completed"] is None
    again = MapStore.open(store.path, key)
    torch.testing.assert_close(again.read([7, 0, 3], normalisation="none"), rows)
    with pytest.raises(MapStoreError, match="still has 7 of 10 rows"):
        store.mark_complete()
    store.write(np.array([1, 2, 4, 5, 6, 8, 9]), torch.zeros(7, 1, 4, 4))
    store.mark_complete()
    assert MapStore.open(store.path).is_complete
    assert not list(tmp_path.glob(".*tmp*")) and not list(store.path.glob(".*tmp*"))


def test_float16_and_create_reopens_an_existing_store(tmp_path):
    key = make_key(dtype="float16")
    store = MapStore.create(tmp_path, key, n=4, map_shape=(1, 2, 2))
    store.write([1], torch.full((1, 1, 2, 2), 0.5))
    assert np.load(store.path / "maps.npy").dtype == np.float16
    reopened = MapStore.create(tmp_path, key, n=4, map_shape=(1, 2, 2))  # resumes, does not wipe
    assert reopened.missing().tolist() == [0, 2, 3]


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", "cd" * 32),
        ("explainer", "ig"),
        ("options", {"max_evals": 500, "seed": 0}),
        ("split", "test"),
        ("dataset", "cifar10"),
        ("preprocessing", "Compose(Normalize(mean=[0.1], std=[0.3]))"),
    ],
)
def test_open_refuses_another_key_naming_the_field(tmp_path, field, value):
    store = MapStore.create(tmp_path, make_key(), n=2, map_shape=(1, 2, 2))
    with pytest.raises(MapStoreError, match=rf"holds other maps: {field}: store has .*, expected ") as info:
        MapStore.open(store.path, make_key(**{field: value}))
    assert "\n" not in str(info.value)


def test_damaged_or_missing_stores_are_refused(tmp_path):
    with pytest.raises(MapStoreError, match="manifest.json is missing"):
        MapStore.open(tmp_path / "nothing")
    store = MapStore.create(tmp_path, make_key(), n=3, map_shape=(1, 2, 2))
    np.save(store.path / "maps.npy", np.zeros((2, 1, 2, 2), dtype=np.float32))
    with pytest.raises(MapStoreError, match=r"maps.npy is float32\[2, 1, 2, 2\], the manifest says float32\[3, 1, 2, 2\]"):
        MapStore.open(store.path)
    manifest = json.loads((store.path / "manifest.json").read_text())
    (store.path / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(MapStoreError, match="format 99"):
        MapStore.open(store.path)


def test_write_checks_shapes_and_rows(tmp_path):
    store = MapStore.create(tmp_path, make_key(), n=3, map_shape=(1, 2, 2))
    with pytest.raises(MapStoreError, match=r"holds maps \[1, 2, 2\]"):
        store.write([0], torch.zeros(1, 1, 3, 3))
    with pytest.raises(MapStoreError, match=r"must lie in \[0, 3\)"):
        store.write([3], torch.zeros(1, 1, 2, 2))
    with pytest.raises(MapStoreError, match="read-only"):
        MapStore.open(store.path).write([0], torch.zeros(1, 1, 2, 2))


def test_normalisations():
    maps = torch.tensor([[[[2.0, -4.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(normalise_maps(maps, "max_abs")[0], maps[0] / 4.0)
    assert torch.equal(normalise_maps(maps, "max_abs")[1], maps[1])  # an all-zero map stays zero
    torch.testing.assert_close(normalise_maps(maps, "minmax")[0], (maps[0] + 4.0) / 6.0)
    assert torch.equal(normalise_maps(maps, "none"), maps)
    with pytest.raises(ValueError, match="normalisation must be one of"):
        normalise_maps(maps, "zscore")


def test_key_checks_and_digest():
    assert make_key().digest() == make_key().digest() and make_key().digest() != make_key(model="00").digest()
    with pytest.raises(ValueError, match="target must be one of"):
        make_key(target="pred")
    with pytest.raises(ValueError, match="dtype must be one of"):
        make_key(dtype="int8")
    tensor_key = make_key(options={"baseline": torch.zeros(2)})
    assert tensor_key.options["baseline"]["tensor"] == [2]
