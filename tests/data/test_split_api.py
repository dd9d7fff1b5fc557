"""``dataset(split, augment)`` and ``predict_split``: any split with or without augmentation, cached per variant."""

import pytest
import torch

from impactx.data import SPLITS, DigitsDataModule


def _images(dataset, n: int = 16) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(n)])


def test_train_without_augmentation_is_the_plain_image_every_time():
    dm = DigitsDataModule(seed=0, augment=True)
    full_images = dm.full_split("train")[0].tensors[0]  # stored normalised, never augmented
    plain = dm.dataset("train", augment=False)
    torch.manual_seed(0)
    first = _images(plain)
    torch.manual_seed(1)
    torch.testing.assert_close(_images(plain), first, rtol=0, atol=0)
    torch.testing.assert_close(first, full_images[plain.indices[:16]], rtol=0, atol=0)
    assert plain.indices == dm.dataset("train").indices  # same items, same order


def test_default_train_split_augments_and_varies_across_reads():
    dm = DigitsDataModule(seed=0, augment=True)
    augmented = dm.dataset("train")
    assert augmented is dm.dataset("train", augment=True)  # None = the module's augment for train
    torch.manual_seed(0)
    first, second = _images(augmented), _images(augmented)
    assert not torch.equal(first, second)
    assert not torch.equal(first, _images(dm.dataset("train", augment=False)))


def test_none_means_the_split_default():
    plain_module = DigitsDataModule(seed=0, augment=False)
    aug_module = DigitsDataModule(seed=0, augment=True)
    assert plain_module.dataset("train") is plain_module.dataset("train", augment=False)
    for split in ("val", "test"):
        assert aug_module.dataset(split) is aug_module.dataset(split, augment=False)


def test_augmentation_on_request_for_any_split():
    dm = DigitsDataModule(seed=0, augment=False)  # the module's option only sets the default
    torch.manual_seed(0)
    for split in SPLITS:
        images = _images(dm.dataset(split, augment=True))
        assert not torch.equal(images, _images(dm.dataset(split)))
    assert dm.dataset("val", augment=True) is dm.dataset("val", augment=True)  # cached per (split, augment)
    assert dm.dataset("val", augment=True) is not dm.dataset("val")


@pytest.mark.parametrize("split", SPLITS)
def test_predict_split_in_index_order_and_unaugmented(split):
    dm = DigitsDataModule(seed=0, augment=True, batch_size=100, predict_split=split)
    dm.setup("predict")
    assert (split, False) in dm._splits and (split, True) not in dm._splits  # setup built the predict split
    plain = dm.dataset(split, augment=False)
    expected_index = list(plain.indices) if split != "test" else list(range(len(plain)))
    for seed in (0, 1):  # two passes give the same images
        torch.manual_seed(seed)
        batches = list(dm.predict_dataloader())
        images = torch.cat([b[0] for b in batches])
        index = torch.cat([b[2] for b in batches])
        assert index.tolist() == expected_index  # every item once, unshuffled
        torch.testing.assert_close(images, torch.stack([item[0] for item in plain]), rtol=0, atol=0)
    if split == "train":
        train_positions, _ = dm.split_positions()
        assert index.tolist() == train_positions


def test_predict_split_defaults_to_test():
    dm = DigitsDataModule()
    assert dm.predict_split == "test" and dm.hparams["predict_split"] == "test"
    assert len(dm.predict_dataloader().dataset) == len(dm.dataset("test"))


@pytest.mark.parametrize("value", ["trian", "predict", "", None, 0])
def test_bad_predict_split_names_the_value(value):
    with pytest.raises(ValueError, match="predict_split") as info:
        DigitsDataModule(predict_split=value)
    assert repr(value) in str(info.value)
    assert all(split in str(info.value) for split in SPLITS)


def test_bad_split_names_the_value():
    with pytest.raises(ValueError, match="'validation'"):
        DigitsDataModule().dataset("validation")
