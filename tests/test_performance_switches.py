"""The precision default and the speed switches: bf16 on a CUDA GPU with bf16, fp32 on CPU; compile refused on
double-backward paths; channels-last changes the memory format, not the outputs or the gradients."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from impactx.modules import AbnModule, AttributionPriorModule, ClassifierModule, ImpactxModule
from impactx.modules.base import resolve_precision

ROOT = Path(__file__).resolve().parents[1]


def _cuda(monkeypatch, available: bool, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize("accelerator", ["auto", "gpu", "cuda", None])
def test_unset_precision_is_bf16_mixed_on_a_cuda_device_with_bf16(monkeypatch, accelerator) -> None:
    _cuda(monkeypatch, available=True, bf16=True)
    assert resolve_precision(None, accelerator) == "bf16-mixed"


@pytest.mark.parametrize(("available", "bf16", "accelerator"), [
    (False, False, "auto"),   # CPU-only machine
    (True, False, "auto"),    # a GPU without bf16 (pre-Ampere)
    (True, True, "cpu"),      # a GPU machine told to train on the CPU
])
def test_unset_precision_is_32_true_elsewhere(monkeypatch, available, bf16, accelerator) -> None:
    _cuda(monkeypatch, available, bf16)
    assert resolve_precision(None, accelerator) == "32-true"


def test_the_map_pass_stays_fp32_unless_configured(monkeypatch) -> None:
    _cuda(monkeypatch, available=True, bf16=True)
    assert resolve_precision(None, "auto", stage="maps") == "32-true"
    assert resolve_precision("bf16-mixed", "auto", stage="maps") == "bf16-mixed"
    assert resolve_precision(None, "auto", stage="test") == "bf16-mixed"


def test_double_backward_losses_stay_fp32_unless_configured(monkeypatch) -> None:
    _cuda(monkeypatch, available=True, bf16=True)
    assert AttributionPriorModule.double_backward and not ClassifierModule.double_backward
    assert resolve_precision(None, "auto", double_backward=True) == "32-true"
    assert resolve_precision("bf16-mixed", "auto", double_backward=True) == "bf16-mixed"  # allowed when asked


def test_a_configured_precision_is_kept(monkeypatch) -> None:
    _cuda(monkeypatch, available=True, bf16=True)
    assert resolve_precision("32-true", "auto") == "32-true"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"


def test_base_config_leaves_precision_unset_and_train_py_resolves_it_on_this_cpu(tmp_path, monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU default")
    spec = importlib.util.spec_from_file_location("impactx_train_script_precision", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cli = train.make_cli(["--config", str(ROOT / "configs" / "digits_baseline.yaml")], run=False)
    assert cli.config.trainer.precision is None
    assert cli.trainer.precision == "32-true"


def test_compile_is_refused_where_the_loss_needs_double_backward() -> None:
    with pytest.raises(ValueError, match=r"AttributionPriorModule cannot use compile=True.*double backward"):
        AttributionPriorModule(compile=True)
    AttributionPriorModule(compile=False)  # the default stays allowed


@pytest.mark.parametrize("cls", [ClassifierModule, ImpactxModule, AbnModule])
def test_compile_is_offered_where_there_is_no_double_backward(cls) -> None:
    module = cls(compile=True)
    assert module.hparams.compile is True
    module.apply_speed_switches()
    assert module._compiled_call_impl is not None  # self(x) now runs the compiled forward
    assert all(not k.startswith("_orig_mod") for k in module.state_dict())  # checkpoints keep their keys


@pytest.mark.parametrize("name", ["compile", "channels_last"])
def test_switches_must_be_booleans(name) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be true or false, got 'yes'"):
        ClassifierModule(**{name: "yes"})


def _pair(cls, **kw):
    torch.manual_seed(0)
    plain = cls(backbone="resnet18_cifar", in_chans=3, **kw)
    fast = cls(backbone="resnet18_cifar", in_chans=3, channels_last=True, **kw)
    fast.load_state_dict(plain.state_dict())
    fast.apply_speed_switches()
    return plain, fast


@pytest.mark.parametrize("cls", [ClassifierModule, AbnModule, ImpactxModule])
def test_channels_last_gives_the_same_outputs_and_gradients(cls, one_thread) -> None:
    plain, fast = _pair(cls)
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3])
    batch = fast.channels_last_batch((x, labels, torch.arange(4)))
    assert batch[0].is_contiguous(memory_format=torch.channels_last) and torch.equal(batch[0], x)
    plain.eval(), fast.eval()
    torch.testing.assert_close(fast(batch[0]), plain(x), rtol=1e-4, atol=1e-5)
    plain.train(), fast.train()
    for module, images in ((plain, x), (fast, batch[0])):
        F.cross_entropy(module(images), labels).backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_channels_last_leaves_other_batch_entries_alone() -> None:
    module = ClassifierModule(channels_last=True)
    maps = torch.rand(2, 1, 32, 32)
    batch = module.channels_last_batch((torch.rand(2, 1, 32, 32), torch.zeros(2), torch.arange(2), maps))
    assert batch[3] is maps
    assert ClassifierModule().channels_last_batch(batch) is batch  # off: untouched


def test_the_training_and_predict_steps_feed_channels_last_images(recwarn) -> None:
    module = ClassifierModule(in_chans=3, channels_last=True)
    module.apply_speed_switches()
    seen = []
    module.model.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    batch = (torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), torch.arange(2))
    module.training_step(batch, 0)  # logs nothing without a trainer (a warning)
    module.predict_step(batch, 0)
    assert seen == [True, True]


@pytest.mark.slow
def test_compiled_forward_matches_eager(one_thread) -> None:
    torch.manual_seed(0)
    eager = ClassifierModule().eval()
    compiled = ClassifierModule(compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.apply_speed_switches()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
