"""AttributionPriorModule: the penalty's gradient against finite differences, BatchNorm and dropout untouched by
the attribution pass, odd batches, the DeepPrior density in checkpoints, logged terms, refused precision and
compile, gradients in evaluation, and a target-map prior that moves attribution where it is told."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from impactx.modules import AttributionPriorModule
from impactx.modules.attribution_prior import step_seed
from tests.modules.modules_helpers import TinyData


class PoolData(TinyData):
    """TinyData at 32 px with the ``dataset(split, augment)`` the module reads its reference pool from."""

    def __init__(self, **kwargs) -> None:
        super().__init__(num_classes=3, in_chans=1, image_size=32, **kwargs)

    def dataset(self, split: str, augment: bool | None = None):
        return self.train_set if split == "train" else self.val_set


def _trainer(**kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**{**options, **kwargs})


def _module(**kwargs) -> AttributionPriorModule:
    torch.manual_seed(0)
    return AttributionPriorModule(**{"backbone": "lenet5", "num_classes": 3, "in_chans": 1, "input_size": 32,
                                     **kwargs})


class BatchNormDropoutNet(nn.Module):
    """Conv - BatchNorm - ReLU - Dropout - linear, to watch running statistics and dropout draws."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Flatten(), nn.Linear(4 * 32 * 32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _batch(n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=gen), torch.randint(0, 3, (n,), generator=gen), torch.arange(n)


def test_penalty_gradient_equals_finite_differences_in_float64() -> None:
    module = _module(references="train", n_references=2).double()
    module.set_reference_pool(torch.randn(10, 1, 32, 32, dtype=torch.float64))
    images, labels, _ = _batch(3)
    images = images.double()

    def penalty() -> torch.Tensor:
        return module.prior(module.attributions(images, labels))

    weights = [p for p in module.parameters() if p.dim() > 1]
    params = [weights[0], weights[-1]]  # the first convolution and the last linear layer
    grads = torch.autograd.grad(penalty(), params)
    eps = 1e-6
    for param, grad in zip(params, grads, strict=True):
        flat, gflat = param.data.view(-1), grad.view(-1)
        for i in torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(1))[:4].tolist():
            old = float(flat[i])
            flat[i] = old + eps
            up = float(penalty())
            flat[i] = old - eps
            down = float(penalty())
            flat[i] = old
            assert float(gflat[i]) == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("references", ["batch", "mgm"])
def test_attribution_pass_leaves_batchnorm_statistics_and_draws_no_dropout(references) -> None:
    module = _module(references=references)
    module.model = BatchNormDropoutNet()
    if references == "mgm":
        module.set_reference_pool(torch.randn(16, 1, 32, 32))
        module.fit_density()
    plain = copy.deepcopy(module)
    images, labels, index = _batch(6)
    module.train()
    plain.train()
    torch.manual_seed(3)
    out = module.compute_loss((images, labels, index), "train")  # CE forward (train mode) + attribution pass
    torch.manual_seed(3)
    plain.model(images)  # the CE forward alone
    assert out.terms["prior"] > 0
    for (name, a), b in zip(module.model.named_buffers(), plain.model.buffers(), strict=True):
        assert torch.equal(a, b), name  # running_mean, running_var, num_batches_tracked
    assert all(m.training for m in module.model.modules())  # train mode restored
    first = module.attributions(images, labels)
    second = module.attributions(images, labels)
    assert torch.equal(first, second)  # eval mode: no fresh dropout mask


def test_short_and_single_image_batches_train() -> None:
    module = _module(references="batch")
    for n in (7, 1):
        images, labels, index = _batch(n)
        out = module.compute_loss((images, labels, index), "train")
        out.loss.backward()
        assert torch.isfinite(out.loss)
    alone = module.compute_loss(_batch(1), "train")
    assert float(alone.terms["prior"]) == 0.0  # its own reference: zero attribution
    data = PoolData(n_train=11, n_val=4, batch_size=4)  # batches of 4, 4, 3
    _trainer().fit(_module(references="train"), datamodule=data)


def test_batch_references_are_other_images_of_the_batch() -> None:
    module = _module(references="batch", n_references=5)
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 32, 32).contiguous()
    references, alphas = module.path_references(images)
    assert references.shape == (4, 5, 1, 32, 32) and alphas.shape == (4, 5)
    chosen = references[:, :, 0, 0, 0]
    own = torch.arange(4, dtype=torch.float32).view(4, 1)
    assert (chosen != own).all()


def test_draws_depend_on_the_image_and_step_not_the_batch() -> None:
    module = _module(references="train", n_references=3)
    module.set_reference_pool(torch.randn(20, 1, 32, 32))
    images, _, _ = _batch(6)
    whole, alphas = module.path_references(images)
    part, part_alphas = module.path_references(images[3:])
    assert torch.equal(whole[3:], part) and torch.equal(alphas[3:], part_alphas)
    assert step_seed(0, 1) != step_seed(0, 0)
    module._trainer = type("T", (), {"global_step": 5})()  # attached at another step: other draws
    later, later_alphas = module.path_references(images)
    module._trainer = None
    assert not torch.equal(later_alphas, alphas)


def test_fit_logs_ce_and_prior_and_trains_the_model() -> None:
    module = _module(references="train", lam=0.1)
    before = copy.deepcopy(module.state_dict())
    trainer = _trainer()
    trainer.fit(module, datamodule=PoolData(n_train=16, n_val=4, batch_size=8))
    metrics = trainer.callback_metrics
    assert {"train/ce", "train/prior", "train/loss"} <= set(metrics)
    assert float(metrics["train/loss"]) == pytest.approx(
        float(metrics["train/ce"]) + 0.1 * float(metrics["train/prior"]), rel=1e-5)
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("prior", ["mgm", "bgmm"])
def test_deepprior_density_survives_a_checkpoint_round_trip(prior, tmp_path) -> None:
    module = _module(references=prior, deepprior_fit_images=16, deepprior_components=2)
    trainer = _trainer()
    trainer.fit(module, datamodule=PoolData(n_train=16, n_val=4, batch_size=8))
    record = module.density_record
    assert record is not None and record["layer"] and record["epoch"] == 0
    path = tmp_path / "prior.ckpt"
    trainer.save_checkpoint(path)
    loaded = AttributionPriorModule.load_from_checkpoint(path, weights_only=True)
    stored = loaded.density_record
    assert stored["layer"] == record["layer"]
    for key, value in record["state"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(stored["state"][key], value), key
        else:
            assert stored["state"][key] == value
    images, _, _ = _batch(4)
    module.trainer = None  # both unattached: the draws of step 0
    loaded.set_reference_pool(module.reference_pool_tensor(torch.device("cpu"), torch.float32))
    torch.testing.assert_close(loaded.path_references(images)[0], module.path_references(images)[0])
    other = _module(references="bgmm" if prior == "mgm" else "mgm")
    with pytest.raises(ValueError, match="stored DeepPrior density is a"):
        other.load_state_dict(loaded.state_dict())
    # a resumed fit keeps the stored density (no refit at fit start)
    resumed = _trainer(max_epochs=2)
    resumed.fit(loaded, datamodule=PoolData(n_train=16, n_val=4, batch_size=8), ckpt_path=str(path))
    assert loaded.density_record["epoch"] == 0


def test_refit_every_refits_the_density() -> None:
    module = _module(references="mgm", deepprior_fit_images=16, refit_every=1)
    _trainer(max_epochs=2).fit(module, datamodule=PoolData(n_train=16, n_val=4, batch_size=8))
    assert module.density_record["epoch"] == 1


def test_precision_16_and_torch_compile_are_refused() -> None:
    data = PoolData(n_train=8, n_val=4, batch_size=4)
    with pytest.raises(ValueError, match="precision='16-mixed'.*bf16-mixed"):
        module = _module()
        module._trainer = type("T", (), {"precision": "16-mixed", "datamodule": None})()
        module.setup("fit")
    with pytest.raises(ValueError, match="refuses torch.compile"):
        _trainer(max_steps=1).fit(torch.compile(_module()), datamodule=data)
    in_place = _module()
    in_place.model.compile()
    with pytest.raises(ValueError, match="refuses torch.compile"):
        _trainer(max_steps=1).fit(in_place, datamodule=data)


@pytest.mark.parametrize("references", ["train", "mgm", "bgmm"])
def test_bf16_mixed_trains(references) -> None:
    module = _module(references=references, deepprior_fit_images=8, deepprior_components=2)
    _trainer(max_steps=2, precision="bf16-mixed").fit(module, datamodule=PoolData(n_train=8, n_val=4, batch_size=4))
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_eval_prior_needs_gradients_in_test_and_validation() -> None:
    data = PoolData(n_train=8, n_val=4, batch_size=4)
    module = _module(eval_prior=True)
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        _trainer().test(module, datamodule=data)
    with pytest.raises(RuntimeError, match="inference_mode=False"):  # at setup, before any training step
        _trainer().fit(module, datamodule=data)
    trainer = _trainer(inference_mode=False)
    trainer.test(module, datamodule=data)
    assert "test/prior" in trainer.callback_metrics
    fitting = _trainer(inference_mode=False)
    fitting.fit(_module(eval_prior=True), datamodule=data)
    assert "val/prior" in fitting.callback_metrics and "train/prior" in fitting.callback_metrics
    plain = _trainer()
    plain.test(_module(), datamodule=data)  # without eval_prior: inference mode is fine, CE only
    assert "test/prior" not in plain.callback_metrics and "test/ce" in plain.callback_metrics


def test_bad_arguments_fail_on_construction() -> None:
    with pytest.raises(ValueError, match="references must be one of"):
        _module(references="data")
    with pytest.raises(ValueError, match="lam must be a number >= 0"):
        _module(lam=-1.0)
    with pytest.raises(ValueError, match="unknown prior"):
        _module(prior="smoothness")
    with pytest.raises(ValueError, match="layer 'conv9' is not a module"):
        _module(references="mgm", deepprior_layer="conv9")
    with pytest.raises(ValueError, match="eval_prior cannot score prior 'outside_region'"):
        _module(prior="outside_region", eval_prior=True)
    module = _module(references="train")
    with pytest.raises(RuntimeError, match="set_reference_pool"):
        module.compute_loss(_batch(2), "train")


def _two_place_task(n: int, seed: int):
    """Class 0/1 readable in two places: a bright (class 1) or dark (class 0) 6x6 square top-left AND the same
    square bottom-right, on noise. The target map marks the top-left square."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = 0.3 * torch.randn(n, 1, 32, 32, generator=gen)
    sign = (2 * labels - 1).float().view(n, 1, 1, 1)
    images[:, :, 4:10, 4:10] += sign
    images[:, :, 22:28, 22:28] += sign
    target = torch.zeros(n, 1, 32, 32)
    target[:, :, 2:12, 2:12] = 1.0
    return images, labels, target


def _fraction_in_right_square(module: AttributionPriorModule, images, labels) -> float:
    phi = module.attributions(images, labels).detach().abs().sum(dim=1)
    return float(phi[:, 20:30, 20:30].sum() / phi.sum())


def test_target_map_prior_moves_attribution_into_the_marked_region() -> None:
    images, labels, target = _two_place_task(192, 0)
    test_images, test_labels, _ = _two_place_task(64, 1)
    fractions = {}
    for lam in (0.0, 2.0):
        module = _module(num_classes=2, prior="outside_region", lam=lam, references="train", lr=3e-3)
        module.set_reference_pool(images[:64])
        optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
        loader = DataLoader(TensorDataset(images, labels, torch.arange(len(images)), target), batch_size=32,
                            shuffle=True, generator=torch.Generator().manual_seed(0))
        module.train()
        for _ in range(4):
            for batch in loader:
                optimizer.zero_grad()
                module.compute_loss(tuple(batch), "train").loss.backward()
                optimizer.step()
        module.eval()
        accuracy = float((module(test_images).argmax(1) == test_labels).float().mean())
        assert accuracy > 0.9, (lam, accuracy)
        fractions[lam] = _fraction_in_right_square(module, test_images, test_labels)
    assert fractions[2.0] < 0.5 * fractions[0.0], fractions


def test_target_map_prior_without_a_store_fails_at_setup() -> None:
    from impactx.data import DigitsDataModule

    module = _module(num_classes=10, prior="outside_region")
    with pytest.raises(ValueError, match="joins none: set its maps option"):
        _trainer(max_steps=1).fit(module, datamodule=DigitsDataModule(batch_size=32))


@pytest.mark.parametrize(("attribution", "options"), [("input_x_gradient", {}), ("gradcam", {}),
                                                      ("smoothgrad", {"method": "gradient", "n_samples": 2})])
def test_other_differentiable_methods_train_the_prior(attribution, options) -> None:
    """The penalty of a survey method is that of the method's own maps of the true class, and its parameter
    gradient equals finite differences (so a fit trains through it)."""
    from impactx.attribution import create_explainer

    module = _module(attribution=attribution, attribution_options=options).double()
    images, labels, _ = _batch(3)
    images = images.double()
    reference = create_explainer(attribution, **options)
    with torch.no_grad():
        expected = module.prior(reference(module.model, images, labels))
    assert float(module.prior(module.attributions(images, labels))) == pytest.approx(float(expected), rel=1e-10)
    weight = [p for p in module.parameters() if p.dim() > 1][0]
    (grad,) = torch.autograd.grad(module.prior(module.attributions(images, labels)), weight)
    flat = weight.data.view(-1)
    old, eps = float(flat[5]), 1e-6
    flat[5] = old + eps
    up = float(module.prior(module.attributions(images, labels)))
    flat[5] = old - eps
    down = float(module.prior(module.attributions(images, labels)))
    flat[5] = old
    assert float(grad.view(-1)[5]) == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9)


def test_non_differentiable_attribution_is_refused() -> None:
    with pytest.raises(ValueError, match="guided_backprop.*not differentiable"):
        _module(attribution="guided_backprop")
    with pytest.raises(ValueError, match="background"):
        _module(attribution="wg")
