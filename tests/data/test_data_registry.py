"""The registry, argument validation, saved hyperparameters and a Lightning round trip."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from impactx.data import DATAMODULES, DigitsDataModule, ImageDataModule, create_datamodule

NAMES = ["digits", "digits_canvas", "mnist", "cifar10", "cifar100", "stl10", "imagefolder"]


def _kwargs(name: str, tmp_path) -> dict:
    return {"root": str(tmp_path)} if name == "imagefolder" else {"data_dir": str(tmp_path)}


def test_registry_names():
    assert sorted(DATAMODULES) == sorted(NAMES)
    assert all(issubclass(cls, ImageDataModule) for cls in DATAMODULES.values())


@pytest.mark.parametrize("name", NAMES)
def test_create_and_hparams_round_trip(name, tmp_path):
    dm = create_datamodule(name, batch_size=7, seed=3, **_kwargs(name, tmp_path))
    assert isinstance(dm, DATAMODULES[name]) and dm.name == name
    assert dm.hparams["batch_size"] == 7 and dm.hparams["seed"] == 3
    assert type(dm)(**dm.hparams).hparams == dm.hparams  # checkpoints can rebuild the module


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        create_datamodule("imagenet")
    assert "imagenet" in str(info.value)
    assert all(name in str(info.value) for name in NAMES)
    assert isinstance(create_datamodule("Digits"), DigitsDataModule)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "arg, value",
    [
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("val_fraction", "0.1"),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("num_workers", -1),
        ("seed", -1),
        ("predict_split", "trian"),
    ],
)
def test_bad_arguments_name_the_value(name, arg, value, tmp_path):
    with pytest.raises(ValueError, match=arg) as info:
        create_datamodule(name, **{arg: value}, **_kwargs(name, tmp_path))
    assert repr(value) in str(info.value)


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        images, labels, index = batch
        self.seen += index.tolist()
        return nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels, _ = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(images), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_and_checkpoint_carry_the_hparams(tmp_path):
    dm = DigitsDataModule(batch_size=128, seed=1)
    model = _Tiny()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert sorted(model.seen) == sorted(int(i) for i in dm.dataset("train").indices)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["datamodule_hyper_parameters"]["seed"] == 1
    restored = DigitsDataModule.load_from_checkpoint(tmp_path / "last.ckpt")
    assert restored.split_positions() == dm.split_positions()
