"""BaseModule: optimiser and schedule from hyperparameters, trainable parameters, indexed predictions, the
data-module check and the loss/accuracy logging, each observed through a real (tiny, CPU) Trainer run."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from modules_helpers import IndexedTensors, TinyData, TinyModule, make_trainer
from torch.utils.data import DataLoader, Subset

from impactx.modules import BaseModule, OptimizerSettings


class OptimizerProbe(L.Callback):
    """Records the optimisers and scheduler configs the trainer built, and the lr at every training batch."""

    def __init__(self) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.scheduler_configs: list = []
        self.lrs: list[tuple[int, float]] = []  # (epoch, lr of group 0) per training batch

    def on_train_start(self, trainer, pl_module) -> None:
        self.optimizers = list(trainer.optimizers)
        self.scheduler_configs = list(trainer.lr_scheduler_configs)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))

    def lr_per_epoch(self) -> list[float]:
        """One lr per epoch; asserts it stayed constant within the epoch (an ``interval="epoch"`` schedule)."""
        epochs = sorted({e for e, _ in self.lrs})
        per_epoch = []
        for epoch in epochs:
            values = {lr for e, lr in self.lrs if e == epoch}
            assert len(values) == 1, f"lr changed inside epoch {epoch}: {values}"
            per_epoch.append(values.pop())
        return per_epoch


def fit(tmp_path, module: BaseModule, max_epochs: int = 1, **trainer_kwargs) -> OptimizerProbe:
    probe = OptimizerProbe()
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, max_epochs=max_epochs, callbacks=[probe], **trainer_kwargs)
    trainer.fit(module, datamodule=TinyData())
    return probe


# ------------------------------------------------------------------------------------------- optimisers
@pytest.mark.parametrize(
    ("settings", "cls", "expected"),
    [
        (dict(optimizer="adam", lr=0.02), torch.optim.Adam, dict(lr=0.02, weight_decay=0.0)),
        (dict(optimizer="adam", lr=0.02, weight_decay=0.01), torch.optim.Adam, dict(lr=0.02, weight_decay=0.01)),
        (dict(optimizer="adamw", lr=0.003, weight_decay=0.05), torch.optim.AdamW, dict(lr=0.003, weight_decay=0.05)),
        (dict(optimizer="sgd", lr=0.1, momentum=0.8, weight_decay=5e-4), torch.optim.SGD,
         dict(lr=0.1, momentum=0.8, weight_decay=5e-4, nesterov=True)),
        (dict(optimizer="sgd", lr=0.1, momentum=0.0), torch.optim.SGD, dict(lr=0.1, momentum=0.0, nesterov=False)),
    ],
    ids=["adam", "adam-wd", "adamw-wd", "sgd-nesterov", "sgd-plain"],
)
def test_each_optimizer_is_built_with_its_settings(tmp_path, settings, cls, expected) -> None:
    module = TinyModule(scheduler="none", **settings)
    before = [p.detach().clone() for p in module.parameters()]
    probe = fit(tmp_path, module)
    assert len(probe.optimizers) == 1
    optimizer = probe.optimizers[0]
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    for key, value in expected.items():
        assert group[key] == pytest.approx(value), key
    # Over every parameter of the module (none is frozen here), and the run actually trained with it.
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in module.parameters()}
    assert all(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True)), "no step taken"


# ------------------------------------------------------------------------------------------- schedules
def test_scheduler_none_builds_no_scheduler_and_keeps_lr(tmp_path) -> None:
    probe = fit(tmp_path, TinyModule(scheduler="none", lr=0.05), max_epochs=3)
    assert probe.scheduler_configs == []
    assert probe.lr_per_epoch() == pytest.approx([0.05, 0.05, 0.05])


def test_scheduler_cosine_anneals_over_max_epochs_per_epoch(tmp_path) -> None:
    lr, epochs = 0.05, 4
    probe = fit(tmp_path, TinyModule(scheduler="cosine", lr=lr), max_epochs=epochs)
    (config,) = probe.scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert config.scheduler.T_max == epochs and config.scheduler.eta_min == 0
    assert config.interval == "epoch"
    expected = [lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert probe.lr_per_epoch() == pytest.approx(expected)


def test_scheduler_step_decays_by_gamma_every_step_size_epochs(tmp_path) -> None:
    lr = 0.05
    probe = fit(tmp_path, TinyModule(scheduler="step", lr=lr, step_size=2, gamma=0.5), max_epochs=5)
    (config,) = probe.scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.StepLR)
    assert (config.scheduler.step_size, config.scheduler.gamma, config.interval) == (2, 0.5, "epoch")
    assert probe.lr_per_epoch() == pytest.approx([lr, lr, lr / 2, lr / 2, lr / 4])


def test_cosine_refuses_an_unbounded_run(tmp_path) -> None:
    with pytest.raises(ValueError, match="scheduler='cosine' anneals over the trainer's max_epochs.*-1"):
        fit(tmp_path, TinyModule(scheduler="cosine"), max_epochs=-1, max_steps=3)
    fit(tmp_path, TinyModule(scheduler="step"), max_epochs=-1, max_steps=3)  # a step schedule needs no length


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(optimizer="rmsprop"), r"optimizer must be one of \('adam', 'adamw', 'sgd'\), got 'rmsprop'"),
        (dict(scheduler="linear"), r"scheduler must be one of \('none', 'cosine', 'step'\), got 'linear'"),
        (dict(lr=0.0), r"lr must be a number in \(0.0, inf\), got 0.0"),
        (dict(lr=-1e-3), r"lr must be a number in \(0.0, inf\)"),
        (dict(lr=float("nan")), r"lr must be a number"),
        (dict(lr="fast"), r"lr must be a number .*'fast'"),
        (dict(weight_decay=-0.1), r"weight_decay must be a number in \[0.0, inf\), got -0.1"),
        (dict(momentum=1.0), r"momentum must be a number in \[0.0, 1.0\), got 1.0"),
        (dict(momentum=-0.5), r"momentum must be a number in \[0.0, 1.0\)"),
        (dict(step_size=0), r"step_size must be a positive int, got 0"),
        (dict(step_size=2.5), r"step_size must be a positive int, got 2.5"),
        (dict(gamma=0.0), r"gamma must be a number in \(0.0, inf\), got 0.0"),
        (dict(gamma=True), r"gamma must be a number"),
        (dict(num_classes=1), r"num_classes must be an integer >= 2, got 1"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_settings_fail_on_construction_with_a_clear_error(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TinyModule(**kwargs)


def test_optimizer_settings_defaults_are_the_base_modules_defaults() -> None:
    """One set of defaults: the base module's signature and OptimizerSettings agree."""
    import dataclasses
    import inspect

    signature = inspect.signature(BaseModule.__init__).parameters
    for f in dataclasses.fields(OptimizerSettings):
        assert signature[f.name].default == f.default, f.name


# --------------------------------------------------------------------------------- trainable parameters
def test_a_frozen_submodule_is_not_handed_to_the_optimizer(tmp_path) -> None:
    module = TinyModule(freeze_features=True, optimizer="sgd", lr=0.5, scheduler="none")
    frozen_before = [p.detach().clone() for p in module.features.parameters()]
    head_before = [p.detach().clone() for p in module.head.parameters()]
    probe = fit(tmp_path, module, max_epochs=2)
    optimized = {id(p) for g in probe.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in module.head.parameters()}
    assert optimized == {id(p) for p in module.trainable_parameters()}
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, module.features.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(head_before, module.head.parameters(), strict=True))


def test_trainable_parameters_may_return_param_groups(tmp_path) -> None:
    class TwoRates(TinyModule):
        def trainable_parameters(self):
            return [{"params": list(self.features.parameters()), "lr": 1e-4},
                    {"params": list(self.head.parameters())}]

    module = TwoRates(lr=0.03, scheduler="none")
    groups = fit(tmp_path, module).optimizers[0].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 0.03])
    assert [len(g["params"]) for g in groups] == [2, 2]


def test_no_trainable_parameters_is_a_clear_error(tmp_path) -> None:
    module = TinyModule()
    module.requires_grad_(False)
    with pytest.raises(ValueError, match="TinyModule has no trainable parameters"):
        fit(tmp_path, module)


# ----------------------------------------------------------------------------------- indexed predictions
def _check_predictions_join_by_index(module: BaseModule, dataset: IndexedTensors, predictions: list[dict],
                                     expected_indices: list[int]) -> None:
    returned = torch.cat([p["index"] for p in predictions])
    assert sorted(returned.tolist()) == sorted(expected_indices)
    assert returned.tolist() != sorted(expected_indices), "the sampler's order should not be the identity here"
    position = {int(i): k for k, i in enumerate(dataset.indices)}
    module.eval()
    with torch.no_grad():
        for batch in predictions:
            assert batch["probs"].shape == (len(batch["index"]), module.hparams.num_classes)
            for row, index in zip(batch["probs"], batch["index"], strict=True):
                image = dataset[position[int(index)]][0]
                assert torch.allclose(row, module(image[None]).softmax(dim=1)[0], atol=1e-6), int(index)


def test_predict_returns_each_items_index_under_a_reversed_sampler(tmp_path) -> None:
    data = TinyData(n_val=11)
    module = TinyModule()
    dataset = data.val_set  # indices 24..34
    loader = DataLoader(dataset, batch_size=4, sampler=list(reversed(range(len(dataset)))))
    predictions = make_trainer(tmp_path).predict(module, dataloaders=loader)
    assert torch.cat([p["index"] for p in predictions]).tolist() == list(reversed(range(24, 35)))
    _check_predictions_join_by_index(module, dataset, predictions, list(range(24, 35)))


def test_predict_returns_each_items_index_over_a_shuffled_subset(tmp_path) -> None:
    data = TinyData(n_train=30)
    module = TinyModule()
    positions = torch.randperm(30, generator=torch.Generator().manual_seed(3))[:17].tolist()
    loader = DataLoader(Subset(data.train_set, positions), batch_size=5)  # the subset's own order is shuffled
    predictions = make_trainer(tmp_path).predict(module, dataloaders=loader)
    _check_predictions_join_by_index(module, data.train_set, predictions, positions)


def test_extra_predictions_are_added_row_aligned(tmp_path) -> None:
    class WithMargin(TinyModule):
        def extra_predictions(self, batch, logits):
            return {"label": batch[1], "top2": logits.topk(2, dim=1).values}

    data = TinyData()
    loader = DataLoader(data.val_set, batch_size=4, sampler=list(reversed(range(len(data.val_set)))))
    predictions = make_trainer(tmp_path).predict(WithMargin(), dataloaders=loader)
    for batch in predictions:
        assert set(batch) == {"probs", "index", "label", "top2"}
        assert batch["top2"].shape == (len(batch["index"]), 2)
        assert torch.equal(batch["label"], data.val_set.labels[batch["index"] - 24])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (lambda batch, logits: {"index": batch[2] * 0}, "may not replace 'index'"),
        (lambda batch, logits: {"probs": logits}, "may not replace 'probs'"),
        (lambda batch, logits: {"sum": logits.sum()}, r"extra prediction 'sum' has shape \[\], expected \[4, ...\]"),
        (lambda batch, logits: {"first": logits[:1]}, r"extra prediction 'first' has shape \[1, 3\]"),
    ],
    ids=["index", "probs", "scalar", "wrong-rows"],
)
def test_bad_extra_predictions_are_refused(tmp_path, extra, message) -> None:
    class Bad(TinyModule):
        def extra_predictions(self, batch, logits):
            return extra(batch, logits)

    loader = DataLoader(TinyData().val_set, batch_size=4)
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path).predict(Bad(), dataloaders=loader)


def test_predict_without_an_index_is_a_clear_error(tmp_path) -> None:
    dataset = torch.utils.data.TensorDataset(torch.randn(6, 1, 4, 4), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"predict batches must be \(image, label, index, ...\).*got 2"):
        make_trainer(tmp_path).predict(TinyModule(), dataloaders=DataLoader(dataset, batch_size=3))


# ------------------------------------------------------------------------------------ data-module check
@pytest.mark.parametrize(
    ("model_kwargs", "message"),
    [
        (dict(num_classes=4), "gives num_classes=3 but the model .TinyModule. was built for num_classes=4"),
        (dict(in_chans=3), "gives in_chans=1 but the model .TinyModule. was built for in_chans=3"),
        (dict(input_size=5), "gives image_size=4 but the model .TinyModule. was built for input_size=5"),
    ],
    ids=["num_classes", "in_chans", "image_size"],
)
@pytest.mark.parametrize("entry", ["fit", "validate", "predict"])
def test_a_mismatched_data_module_fails_in_setup(tmp_path, model_kwargs, message, entry) -> None:
    trainer = make_trainer(tmp_path, limit_val_batches=1)
    with pytest.raises(ValueError, match="data module TinyData " + message):
        getattr(trainer, entry)(TinyModule(**model_kwargs), datamodule=TinyData())


# ------------------------------------------------------------------------------------------------ logging
def test_loss_accuracy_and_terms_are_logged_per_stage(tmp_path) -> None:
    data = TinyData(n_val=11, batch_size=4)  # val batches of 4, 4 and 3 items
    module = TinyModule(lr=0.05)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=None)
    trainer.fit(module, datamodule=data)
    assert {"train/loss_step", "train/loss_epoch", "train/acc", "train/ce_epoch", "val/loss", "val/acc",
            "val/ce"} <= set(trainer.logged_metrics)

    module.eval()
    with torch.no_grad():
        logits = module(data.val_set.images)
    accuracy = (logits.argmax(dim=1) == data.val_set.labels).float().mean()
    loss = F.cross_entropy(logits, data.val_set.labels)  # the mean over items, not over batches
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        metrics = run(module, datamodule=data, verbose=False)[0]
        assert metrics[f"{stage}/acc"] == pytest.approx(float(accuracy), abs=1e-6)
        assert metrics[f"{stage}/loss"] == pytest.approx(float(loss), abs=1e-5)
        assert metrics[f"{stage}/ce"] == pytest.approx(float(loss), abs=1e-5)
    assert 0.0 < float(accuracy) < 1.0  # a partly right model, so a wrong accuracy would show


def test_a_term_named_like_the_loss_is_refused(tmp_path) -> None:
    from impactx.modules import LossOutput

    class Clash(TinyModule):
        def compute_loss(self, batch, stage):
            out = super().compute_loss(batch, stage)
            return LossOutput(out.loss, out.logits, {"acc": out.loss})

    with pytest.raises(ValueError, match="loss term name 'acc' would overwrite train/acc"):
        fit(tmp_path, Clash())


def test_compute_loss_must_be_implemented(tmp_path) -> None:
    class NoLoss(BaseModule):
        def __init__(self) -> None:
            super().__init__(3)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x):
            return self.head(x.flatten(1))

    with pytest.raises(NotImplementedError, match="NoLoss must implement compute_loss"):
        fit(tmp_path, NoLoss())
