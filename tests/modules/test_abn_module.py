"""AbnModule: its hyperparameters, the two-branch loss against a hand computation, the early argument checks,
the self-explaining delegation, and a short Lightning fit, checkpoint round trip and predict."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from modules_helpers import TinyData, make_trainer

from impactx.models import is_self_explaining, self_maps
from impactx.models.abn import AttentionBranchNetwork
from impactx.modules.abn import AbnModule

HPARAMS = {
    "backbone": "lenet5", "num_classes": 10, "in_chans": 1, "input_size": 32, "pretrained": False,
    "pretrained_file": None, "attention_stage": -2, "attention_kernel": 3, "attention_weight": 1.0,
    "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "scheduler": "cosine",
    "step_size": 10, "gamma": 0.1, "label_smoothing": 0.0, "compile": False, "channels_last": False,
}


def test_hyperparameters_names_order_and_defaults() -> None:
    signature = inspect.signature(AbnModule.__init__).parameters
    assert {k: v.default for k, v in list(signature.items())[1:]} == HPARAMS
    module = AbnModule()
    assert dict(module.hparams) == HPARAMS
    assert isinstance(module.model, AttentionBranchNetwork) and module.model.stage.output == "conv.2"


@pytest.mark.parametrize(("weight", "smoothing"), [(1.0, 0.0), (0.5, 0.1), (0.0, 0.0)])
def test_loss_is_weighted_attention_ce_plus_perception_ce(weight: float, smoothing: float) -> None:
    torch.manual_seed(0)
    module = AbnModule(num_classes=4, attention_weight=weight, label_smoothing=smoothing).eval()
    images, labels = torch.randn(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 1, 2])
    out = module.compute_loss((images, labels, torch.arange(6)), "val")
    with torch.no_grad():
        branches = module.model.forward_branches(images)
    ce_att = F.cross_entropy(branches.attention_logits, labels, label_smoothing=smoothing)
    ce_per = F.cross_entropy(branches.perception_logits, labels, label_smoothing=smoothing)
    assert not torch.allclose(ce_att, ce_per)
    torch.testing.assert_close(out.loss, weight * ce_att + ce_per)
    torch.testing.assert_close(out.logits, branches.perception_logits)
    torch.testing.assert_close(out.logits, module(images))
    assert set(out.terms) == {"ce_attention", "ce_perception"}
    torch.testing.assert_close(out.terms["ce_attention"], ce_att)
    torch.testing.assert_close(out.terms["ce_perception"], ce_per)
    assert out.loss.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention_weight": -0.1}, "attention_weight must be a finite number >= 0"),
        ({"attention_weight": float("nan")}, "attention_weight"),
        ({"attention_kernel": 2}, "attention_kernel must be a positive odd int"),
        ({"attention_kernel": 0}, "attention_kernel must be a positive int"),
        ({"attention_stage": 1}, r"attention_stage=1 .*valid values: 0 or -2"),
        ({"attention_stage": "last"}, "attention_stage must be an int"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be a number in \[0, 1\)"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_bad_values_fail_on_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AbnModule(**kwargs)


def test_checks_run_before_the_backbone_is_built(monkeypatch) -> None:
    def no_build(*args, **kwargs):
        raise AssertionError("the backbone was built before the arguments were checked")

    monkeypatch.setattr("impactx.modules.abn.create_backbone", no_build)
    with pytest.raises(ValueError, match="attention_kernel"):
        AbnModule(attention_kernel=4)
    with pytest.raises(ValueError, match="attention_weight"):
        AbnModule(attention_weight=-1.0)


def test_explain_delegates_to_the_network() -> None:
    torch.manual_seed(0)
    module = AbnModule(backbone="lenet5", num_classes=3, in_chans=3, input_size=96).eval()
    assert is_self_explaining(module) and not module.explain_needs_grad
    images = torch.randn(2, 3, 96, 96)
    maps = self_maps(module, images)
    assert maps.shape == (2, 1, 96, 96) and maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps, module.model.explain(images))
    extra = module.extra_predictions((images, torch.zeros(2, dtype=torch.long), torch.arange(2)), module(images))
    assert set(extra) == {"map"}
    torch.testing.assert_close(extra["map"], maps)


class _RecordLoss(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_fit_lowers_the_loss_checkpoint_round_trips_and_predict_gives_maps(tmp_path) -> None:
    L.seed_everything(0, verbose=False)
    # One full batch per step: the same items every step, so the training loss must fall.
    data = TinyData(num_classes=3, in_chans=1, image_size=32, n_train=16, n_val=6, batch_size=16)
    module = AbnModule(num_classes=3, in_chans=1, input_size=32, lr=3e-3, scheduler="none", attention_weight=0.5)
    record = _RecordLoss()
    trainer = make_trainer(tmp_path, max_epochs=-1, max_steps=4, callbacks=[record])
    trainer.fit(module, datamodule=data)
    assert len(record.losses) == 4
    assert record.losses[-1] < record.losses[0]
    assert trainer.callback_metrics.keys() >= {"train/loss", "train/ce_attention", "train/ce_perception"}

    path = tmp_path / "abn.ckpt"
    trainer.save_checkpoint(path)
    restored = AbnModule.load_from_checkpoint(path, map_location="cpu").eval()
    module.eval()
    assert dict(restored.hparams) == dict(module.hparams)
    images = data.val_set.images
    with torch.no_grad():
        torch.testing.assert_close(restored(images), module(images))
        torch.testing.assert_close(restored.explain(images), module.explain(images))

    predictions = make_trainer(tmp_path).predict(restored, datamodule=data)
    assert len(predictions) == 1
    batch = predictions[0]
    assert batch["probs"].shape == (6, 3) and batch["map"].shape == (6, 1, 32, 32)
    assert torch.equal(batch["index"], torch.arange(16, 22))
    torch.testing.assert_close(batch["map"], restored.explain(images))
