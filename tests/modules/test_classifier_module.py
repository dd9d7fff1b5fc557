"""ClassifierModule over BaseModule: the same hyperparameters as before the base existed (old checkpoints
load), cross-entropy as the loss, and the base's optimiser/predict wiring on a real backbone."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from modules_helpers import TinyData, make_trainer
from torch.utils.data import DataLoader

import impactx.modules
from impactx.modules import BaseModule, ClassifierModule, OptimizerSettings

# The constructor of ClassifierModule as checkpoints and configs know it (names, order, defaults).
LEGACY_HPARAMS = {
    "backbone": "lenet5", "num_classes": 10, "in_chans": 1, "input_size": 32, "pretrained": False,
    "pretrained_file": None, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9,
    "scheduler": "cosine", "step_size": 10, "gamma": 0.1, "label_smoothing": 0.0,
}
SWITCHES = {"compile": False, "channels_last": False}  # added later, at the end, with defaults old checkpoints get


def test_hyperparameters_keep_their_names_order_and_defaults() -> None:
    signature = inspect.signature(ClassifierModule.__init__).parameters
    assert {k: v.default for k, v in list(signature.items())[1:]} == {**LEGACY_HPARAMS, **SWITCHES}
    assert list(signature)[1:] == [*LEGACY_HPARAMS, *SWITCHES]
    assert dict(ClassifierModule().hparams) == {**LEGACY_HPARAMS, **SWITCHES}


def test_a_checkpoint_in_the_old_format_loads(tmp_path) -> None:
    """A checkpoint written before the base class (same hparams, state_dict keys ``model.*``) rebuilds the
    same module with the same settings and the same outputs."""
    hparams = {**LEGACY_HPARAMS, "optimizer": "sgd", "lr": 0.05, "momentum": 0.5, "scheduler": "step",
               "step_size": 3, "gamma": 0.2, "label_smoothing": 0.1}
    L.seed_everything(0, verbose=False)
    reference = ClassifierModule(**hparams).eval()
    assert all(k.startswith("model.") for k in reference.state_dict()), "the base must not add persistent state"
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": reference.state_dict(), "hyper_parameters": hparams, "hparams_name": "kwargs",
                "pytorch-lightning_version": "2.5.0", "epoch": 3, "global_step": 30}, path)

    restored = ClassifierModule.load_from_checkpoint(path, map_location="cpu").eval()
    assert dict(restored.hparams) == {**hparams, **SWITCHES}
    assert restored.optim_settings == OptimizerSettings("sgd", 0.05, 0.0, 0.5, "step", 3, 0.2)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), reference(x))


def test_compute_loss_is_cross_entropy_with_label_smoothing() -> None:
    module = ClassifierModule(label_smoothing=0.2).eval()
    images, labels = torch.randn(5, 1, 32, 32), torch.tensor([0, 3, 9, 3, 1])
    out = module.compute_loss((images, labels, torch.arange(5)), "val")
    with torch.no_grad():
        logits = module(images)
    assert torch.allclose(out.logits, logits)
    assert torch.allclose(out.loss, F.cross_entropy(logits, labels, label_smoothing=0.2))
    assert not torch.allclose(out.loss, F.cross_entropy(logits, labels))


def test_fit_and_predict_on_lenet(tmp_path) -> None:
    """Two epochs of SGD + step schedule on 32x32 data, then an index-carrying predict pass."""
    data = TinyData(num_classes=10, image_size=32, n_train=16, n_val=6)
    module = ClassifierModule(optimizer="sgd", lr=0.01, momentum=0.9, scheduler="step", step_size=1, gamma=0.5)
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, datamodule=data)
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["nesterov"] is True
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**2)
    loader = DataLoader(data.val_set, batch_size=4, sampler=[5, 3, 1, 0, 2, 4])
    predictions = trainer.predict(module, dataloaders=loader)
    assert torch.cat([p["index"] for p in predictions]).tolist() == [16 + i for i in (5, 3, 1, 0, 2, 4)]
    probs = torch.cat([p["probs"] for p in predictions])
    with torch.no_grad():
        expected = module.eval()(data.val_set.images[[5, 3, 1, 0, 2, 4]]).softmax(dim=1)
    assert torch.allclose(probs, expected, atol=1e-6)


def _base_subclasses() -> list[type[BaseModule]]:
    exported = (getattr(impactx.modules, name) for name in impactx.modules.__all__)
    return [c for c in exported if isinstance(c, type) and issubclass(c, BaseModule) and c is not BaseModule]


@pytest.mark.parametrize("cls", _base_subclasses(), ids=lambda c: c.__name__)
def test_every_exported_module_takes_the_shared_hyperparameters(cls) -> None:
    """Configs and train.py's links address every module by the same names: the data's shape (linked from the
    data module and checked in setup) and the optimiser settings."""
    parameters = inspect.signature(cls.__init__).parameters
    shared = ["num_classes", "in_chans", "input_size", *inspect.signature(OptimizerSettings).parameters]
    assert [name for name in shared if name not in parameters] == []
