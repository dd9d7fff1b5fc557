"""Backbones: shapes, the M/head split, input checks, and timm's real pretrained loading from a local file."""

from __future__ import annotations

import pytest
import timm
import torch

from impactx.models import Backbone, PretrainedWeightsError, create_backbone


@pytest.mark.parametrize(
    ("in_chans", "size"), [(1, 32), (3, 32), (1, 28), (3, 96)],
)
def test_lenet5_shapes_and_split(in_chans: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_backbone("lenet5", num_classes=7, in_chans=in_chans, input_size=size)
    x = torch.randn(3, in_chans, size, size)
    features = model.features(x)
    assert features.shape == (3, 84)
    torch.testing.assert_close(model(x), model.head(features))
    assert model(x).shape == (3, 7)


def test_lenet5_classic_layout_at_32() -> None:
    """LeNet-5 at 32x32: conv 5x5 -> 28x28x6, pool -> 14, conv 5x5 -> 10x10x16, pool -> 5x5x16 = 400 -> 120 -> 84."""
    model = create_backbone("lenet5", 10, in_chans=3, input_size=32)
    conv_out = model.features.conv(torch.zeros(1, 3, 32, 32))
    assert conv_out.shape == (1, 16, 5, 5)
    n_params = sum(p.numel() for p in model.parameters())
    # conv1 3*6*25+6, conv2 6*16*25+16, fc 400*120+120, 120*84+84, head 84*10+10
    assert n_params == (3 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_100", "resnet18", "tv:resnet18"])
def test_factory_families(name: str) -> None:
    model = create_backbone(name, num_classes=5, in_chans=3, input_size=32)
    assert isinstance(model, Backbone)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    feats = model.features(x)
    assert feats.shape == (2, model.num_features)
    torch.testing.assert_close(model(x), model.head(feats))


def test_wrong_image_size_is_a_clear_error() -> None:
    model = create_backbone("lenet5", 10, in_chans=1, input_size=32)
    with pytest.raises(ValueError, match=r"LeNet-5 built for \[B,1,32,32\].*\[2, 3, 32, 32\]"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="input_size >= 28"):
        create_backbone("lenet5", 10, in_chans=1, input_size=16)
    with pytest.raises(ValueError, match="input_size >= 32"):
        create_backbone("resnet18", 10, in_chans=3, input_size=8)


def test_unknown_backbone_and_bad_args() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'not_a_net'"):
        create_backbone("not_a_net", 10)
    with pytest.raises(ValueError, match="num_classes"):
        create_backbone("lenet5", 0)
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_backbone("lenet5", 10, pretrained=True)


def test_pretrained_loads_through_timm_from_a_local_file(tmp_path) -> None:
    """timm's own pretrained loader (pretrained=True) reading a weights file written here."""
    torch.manual_seed(1)
    source = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone("resnet18", num_classes=10, in_chans=3, input_size=32, pretrained_file=str(path))
    torch.testing.assert_close(model.features.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.features.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_pretrained_without_network_fails_clearly(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PretrainedWeightsError, match="mobilenetv2_100.*pretrained_file"):
        create_backbone("mobilenetv2_100", num_classes=10, in_chans=3, input_size=32, pretrained=True)
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        create_backbone("resnet18", 10, pretrained_file=str(tmp_path / "missing.pth"))
