"""Maps joined to their images (under shuffling and joint augmentation), refusal of a store of other data,
and the refresh callback rewriting the rows from the model being trained."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from callbacks.map_refresh import MapRefresh
from impactx.attribution import attribute
from impactx.data import DigitsDataModule
from impactx.maps import MAP_SPLIT, MapKey, MapStore, MapStoreError
from impactx.maps.map_pass import MapPassOptions, run_map_pass
from impactx.modules import ClassifierModule


def image_store(tmp_path, data: DigitsDataModule, **key_changes) -> MapStore:
    """A store whose row i is the (unaugmented) image of index i, so a map can be checked against its image."""
    fields = dict(dataset=data.name, split=MAP_SPLIT, preprocessing=data.preprocessing(), explainer="ig",
                  options={}, target="label", model="0" * 64)
    fields.update(key_changes)
    items = data.map_dataset()
    store = MapStore.create(tmp_path, MapKey(**fields), n=len(items), map_shape=(1, 32, 32))
    store.write(np.arange(len(items)), torch.stack([items[i][0] for i in range(len(items))]))
    store.mark_complete()
    return store


def test_shuffled_augmented_batches_carry_their_own_transformed_maps(tmp_path):
    plain = DigitsDataModule()
    store = image_store(tmp_path, plain)
    data = DigitsDataModule(augment=True, batch_size=32, maps=str(store.path), map_normalisation="none")
    data.setup("fit")
    blank = data._blank_value()[0]
    unaugmented = plain.map_dataset()
    moved = 0
    torch.manual_seed(3)
    for b, (images, labels, index, maps) in enumerate(data.train_dataloader()):
        assert maps.shape == (images.shape[0], 1, 32, 32) and maps.dtype == torch.float32
        same = (maps == images) | ((maps == 0) & (images == blank))  # padding: blank image, zero map
        assert bool(same.all()), f"batch {b}: a map does not follow its image's augmentation"
        originals = torch.stack([unaugmented[int(i)][0] for i in index])
        assert torch.equal(labels, torch.tensor([unaugmented[int(i)][1] for i in index]))
        moved += int((images != originals).flatten(1).any(dim=1).sum())
        if b == 3:
            break
    assert moved > 100  # the augmentation really moved the images (and so their maps)
    val = next(iter(data.val_dataloader()))
    assert len(val) == 3  # validation items are not joined


def test_unaugmented_join_reads_normalised_rows(tmp_path):
    plain = DigitsDataModule()
    store = image_store(tmp_path, plain)
    data = DigitsDataModule(maps=str(store.path))  # default max_abs normalisation
    image, _, index, target = data.dataset("train")[5]
    raw = store.read([index], normalisation="none")[0]
    torch.testing.assert_close(target, raw / raw.abs().max())
    assert torch.equal(image, plain.map_dataset()[index][0])


@pytest.mark.parametrize(
    "changes,field",
    [({"dataset": "mnist"}, "dataset"), ({"split": "test"}, "split"), ({"preprocessing": "other"}, "preprocessing")],
)
def test_a_store_of_other_data_is_refused(tmp_path, changes, field):
    store = image_store(tmp_path, DigitsDataModule(), **changes)
    with pytest.raises(MapStoreError, match=rf"holds maps of another {field}: store has"):
        DigitsDataModule(maps=str(store.path)).check_data("fit")


def test_an_incomplete_store_is_refused(tmp_path):
    data = DigitsDataModule()
    items = data.map_dataset()
    key = MapKey(dataset=data.name, split=MAP_SPLIT, preprocessing=data.preprocessing(), explainer="ig",
                 options={}, target="label", model="0" * 64)
    store = MapStore.create(tmp_path, key, n=len(items), map_shape=(1, 32, 32))
    store.write(np.arange(100), torch.zeros(100, 1, 32, 32))
    with pytest.raises(MapStoreError, match=f"incomplete: {len(items) - 100} of {len(items)} maps"):
        DigitsDataModule(maps=str(store.path)).check_data("fit")


def test_a_store_of_another_digits_split_is_refused(tmp_path):
    store = image_store(tmp_path, DigitsDataModule(seed=0))
    with pytest.raises(MapStoreError, match="another preprocessing"):
        DigitsDataModule(seed=1, maps=str(store.path)).check_data("fit")
    with pytest.raises(MapStoreError, match="manifest.json is missing"):
        DigitsDataModule(maps=str(tmp_path / "nothing")).check_data("fit")


def test_refresh_rewrites_the_rows_from_the_model_being_trained(tmp_path):
    torch.manual_seed(0)
    module = ClassifierModule(backbone="lenet5", num_classes=10, in_chans=1, input_size=32, lr=0.01)
    plain = DigitsDataModule(batch_size=128)
    quiet = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                 enable_progress_bar=False, enable_model_summary=False)
    folder = run_map_pass(L.Trainer(**quiet), module, plain,
                          MapPassOptions(method="ig", options={"n_steps": 4}, dir=str(tmp_path), batch_size=256))
    before = MapStore.open(folder).read(range(1437), normalisation="none")
    data = DigitsDataModule(batch_size=128, maps=str(folder))
    refresh = MapRefresh(every_n_epochs=1, warmup_epochs=1, batch_size=256)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, callbacks=[refresh], **quiet)
    trainer.fit(module, datamodule=data)
    store = MapStore.open(folder)
    assert store.manifest["refreshes"] == 1  # after epoch 2 only (one warm-up epoch)
    after = store.read(range(1437), normalisation="none")
    items = plain.map_dataset()
    x = torch.stack([items[i][0] for i in range(0, 1437, 97)])
    y = torch.tensor([items[i][1] for i in range(0, 1437, 97)])
    expected = attribute("ig", module.eval(), x, y, n_steps=4).sum(dim=1, keepdim=True)
    torch.testing.assert_close(after[::97], expected, rtol=1e-4, atol=1e-6)  # the trained model's maps
    change = float(trainer.callback_metrics["maps/mean_abs_change"])
    torch.testing.assert_close(torch.tensor(change), (after - before).abs().flatten(1).mean(1).mean(), rtol=1e-4, atol=0)
    corr = float(trainer.callback_metrics["maps/rank_correlation"])
    assert change > 0 and -1.0 <= corr < 1.0
    assert refresh.due(1) and not refresh.due(0)


@pytest.mark.ddp
def test_refresh_on_two_ddp_processes_rewrites_every_row(tmp_path):
    """Sharded over 2 gloo ranks and gathered: every row of the store is rewritten from the trained model."""
    torch.manual_seed(0)
    module = ClassifierModule(backbone="lenet5", num_classes=10, in_chans=1, input_size=32, lr=0.01)
    plain = DigitsDataModule(batch_size=128)
    quiet = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False)
    folder = run_map_pass(L.Trainer(devices=1, **quiet), module, plain,
                          MapPassOptions(method="ig", options={"n_steps": 2}, dir=str(tmp_path), batch_size=100))
    data = DigitsDataModule(batch_size=128, maps=str(folder))
    trainer = L.Trainer(devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                        callbacks=[MapRefresh(every_n_epochs=1, warmup_epochs=0, batch_size=100)], **quiet)
    trainer.fit(module, datamodule=data)
    store = MapStore.open(folder)
    assert store.manifest["refreshes"] == 1 and store.manifest["refreshing"] is False
    items = plain.map_dataset()
    rows = list(range(0, 1437, 53))  # from both ranks' shards (batches of 100 alternate between ranks)
    x = torch.stack([items[i][0] for i in rows])
    y = torch.tensor([items[i][1] for i in rows])
    expected = attribute("ig", module.eval(), x, y, n_steps=2).sum(dim=1, keepdim=True)
    torch.testing.assert_close(store.read(rows, normalisation="none"), expected, rtol=1e-4, atol=1e-6)
