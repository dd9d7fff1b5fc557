"""ImpactxModule: Eq. 1 by hand, M bitwise unchanged by stage 2, LEP from A or fresh, clear errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from impactx.modules import ClassifierModule, ImpactxModule
from impactx.modules.impactx import impactx_loss


class WithTargets(Dataset):
    """``n`` random ``[1,28,28]`` images, labels from the pixels, and a target map marking the left half."""

    def __init__(self, n: int = 16, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 1, 28, 28, generator=gen)
        self.labels = (self.images[:, 0, :, :14].mean(dim=(1, 2)) > 0).long()
        self.maps = torch.zeros(n, 1, 28, 28)
        self.maps[..., :14] = 1.0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), i, self.maps[i]


def _trainer(max_steps: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=10, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


@pytest.fixture
def stage1_checkpoint(tmp_path):
    torch.manual_seed(0)
    a = ClassifierModule(num_classes=2, in_chans=1, input_size=28)
    trainer = _trainer(2)
    loader = DataLoader([item[:3] for item in WithTargets()], batch_size=8)
    trainer.fit(a, train_dataloaders=loader)
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    return path, a


def _stage2(path, **overrides) -> ImpactxModule:
    options = dict(num_classes=2, in_chans=1, input_size=28, stage1_checkpoint=str(path), latent_dim=16,
                   decoder_width=8, classifier_hidden=8, lam=0.7, lr=0.01)
    return ImpactxModule(**{**options, **overrides})


def test_stage2_loss_is_equation_1_on_a_hand_built_batch(stage1_checkpoint) -> None:
    path, _ = stage1_checkpoint
    module = _stage2(path)
    images, labels, index, maps = (torch.stack([WithTargets()[i][0] for i in range(5)]), torch.tensor([0, 1, 1, 0, 1]),
                                   torch.arange(5), torch.rand(5, 1, 28, 28))
    out = module.compute_loss((images, labels, index, maps), "train")
    logits = module(images)
    decoded = module.explain(images)
    ce = -(logits.log_softmax(dim=1)[torch.arange(5), labels]).mean()
    mse = ((decoded - maps) ** 2).sum() / maps.numel()
    torch.testing.assert_close(out.loss, ce + 0.7 * mse)
    torch.testing.assert_close(out.terms["ce"], ce)
    torch.testing.assert_close(out.terms["mse"], mse)
    torch.testing.assert_close(out.logits, logits)
    # no map (validation, test): the cross-entropy alone
    torch.testing.assert_close(module.compute_loss((images, labels, index), "test").loss, ce)


def test_impactx_loss_rejects_maps_of_another_size() -> None:
    with pytest.raises(ValueError, match=r"target maps \[2, 1, 8, 8\] do not fit the decoder's maps \[2, 1, 28, 28\]"):
        impactx_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, 28, 28),
                     torch.zeros(2, 1, 8, 8), 1.0)


def test_stage2_leaves_m_bitwise_unchanged_and_trains_the_rest(stage1_checkpoint) -> None:
    path, a = stage1_checkpoint
    module = _stage2(path)
    a_state = {k: v.clone() for k, v in a.model.state_dict().items()}
    for key, value in module.net.extractor.state_dict().items():
        assert torch.equal(value, a_state[key]), key  # M is A
    lep_before = {k: v.clone() for k, v in module.net.lep.state_dict().items()}
    c_before = [p.clone() for p in module.net.classifier.parameters()]
    trainable = {id(p) for p in module.trainable_parameters()}
    assert not trainable & {id(p) for p in module.net.extractor.parameters()}  # the optimiser never sees M
    _trainer(4).fit(module, train_dataloaders=DataLoader(WithTargets(), batch_size=8, shuffle=True))
    for key, value in module.net.extractor.state_dict().items():
        assert torch.equal(value, a_state[key]), key
    assert any(not torch.equal(v, lep_before[k]) for k, v in module.net.lep.state_dict().items())
    assert any(not torch.equal(p, q) for p, q in zip(module.net.classifier.parameters(), c_before, strict=True))


def test_lep_from_stage1_or_fresh(stage1_checkpoint) -> None:
    path, a = stage1_checkpoint
    from_a = _stage2(path).net.lep.features.state_dict()
    torch.manual_seed(1)
    fresh = _stage2(path, lep_init="fresh").net.lep.features.state_dict()
    for key, value in a.model.features.state_dict().items():
        assert torch.equal(from_a[key], value)
    assert not all(torch.equal(fresh[k], v) for k, v in a.model.features.state_dict().items())


def test_single_stage_trains_m_too() -> None:
    module = ImpactxModule(num_classes=2, in_chans=1, input_size=28, training="single_stage", latent_dim=8,
                           decoder_width=4, classifier_hidden=8)
    assert all(p.requires_grad for p in module.net.extractor.parameters())
    before = [p.clone() for p in module.net.extractor.parameters()]
    _trainer(2).fit(module, train_dataloaders=DataLoader(WithTargets(), batch_size=8))
    assert any(not torch.equal(p, q) for p, q in zip(module.net.extractor.parameters(), before, strict=True))


def test_checkpoint_round_trip_without_the_stage1_file(stage1_checkpoint, tmp_path) -> None:
    path, _ = stage1_checkpoint
    module = _stage2(path)
    trainer = _trainer(1)
    trainer.fit(module, train_dataloaders=DataLoader(WithTargets(), batch_size=8))
    trainer.save_checkpoint(tmp_path / "stage2.ckpt")
    restored = ImpactxModule.load_from_checkpoint(tmp_path / "stage2.ckpt", stage1_checkpoint=None)
    x = WithTargets()[0][0][None]
    torch.testing.assert_close(restored.explain(x), module.explain(x))
    assert restored.hparams.lam == 0.7


def test_clear_errors(stage1_checkpoint, tmp_path) -> None:
    path, _ = stage1_checkpoint
    with pytest.raises(ValueError, match="stage1_checkpoint .*missing.ckpt does not exist"):
        _stage2(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="training must be one of"):
        _stage2(path, training="three_stage")
    with pytest.raises(ValueError, match="lam must be >= 0"):
        _stage2(path, lam=-1.0)
    module = _stage2(path)
    with pytest.raises(ValueError, match="must carry target maps"):
        module.compute_loss((torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), torch.arange(2)), "train")
    with pytest.raises(ValueError, match="stage 2 from a trained classifier A"):
        _trainer(1).fit(_stage2(path, stage1_checkpoint=None), train_dataloaders=DataLoader(WithTargets(), batch_size=8))
