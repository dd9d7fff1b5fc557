"""The IMPACTX network: shapes for every backbone family and input size, the decoder's layout, M as A, LEP from A."""

from __future__ import annotations

import pytest
import torch

from impactx.models import ImpactxNet, create_backbone, is_self_explaining
from impactx.models.impactx_net import Decoder, decoder_layout


@pytest.mark.parametrize(("size", "start", "blocks"), [(28, 7, 2), (32, 4, 3), (96, 6, 4), (224, 7, 5), (30, 15, 1)])
def test_decoder_layout_doubles_to_the_input_size(size: int, start: int, blocks: int) -> None:
    assert decoder_layout(size) == (start, blocks)
    decoder = Decoder(latent_dim=8, size=size, out_channels=2, width=4)
    assert decoder(torch.rand(3, 8)).shape == (3, 2, size, size)
    upsamplings = sum(isinstance(m, torch.nn.Upsample) for m in decoder.modules())
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in decoder.modules())
    assert upsamplings == blocks and convs == 2 * blocks + 1  # [Conv, Conv, UpSampling] per block, then the map conv


@pytest.mark.parametrize(("in_chans", "size"), [(1, 28), (3, 28), (1, 32), (3, 32), (1, 96), (3, 96)])
@pytest.mark.parametrize("m_cut", ["logits", "features"])
def test_lenet5_shapes_at_every_paper_size(in_chans: int, size: int, m_cut: str) -> None:
    torch.manual_seed(0)
    net = ImpactxNet(create_backbone("lenet5", 7, in_chans=in_chans, input_size=size), m_cut=m_cut,
                     latent_dim=16, decoder_width=8, classifier_hidden=12)
    x = torch.randn(2, in_chans, size, size)
    out = net.forward_all(x)
    assert out.logits.shape == (2, 7) and out.maps.shape == (2, 1, size, size)
    assert out.m.shape == (2, 7 if m_cut == "logits" else 84) and out.z.shape == (2, 16)
    assert ((out.z > 0) & (out.z < 1)).all()  # LEP ends in a sigmoid
    torch.testing.assert_close(net(x), out.logits)
    torch.testing.assert_close(net.explain(x), out.maps)
    assert is_self_explaining(net)


@pytest.mark.parametrize(("name", "size"), [("resnet18_cifar", 32), ("mobilenetv2_100", 64), ("efficientnet_b0", 96),
                                            ("tv:mobilenet_v2", 64), ("resnet18", 96)])
def test_every_backbone_family(name: str, size: int) -> None:
    torch.manual_seed(0)
    net = ImpactxNet(create_backbone(name, 5, in_chans=3, input_size=size), latent_dim=32, decoder_width=8,
                     map_channels=3).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert net(x).shape == (2, 5)
        assert net.explain(x).shape == (2, 3, size, size)


def test_m_is_a_and_lep_starts_from_a_unless_given_features() -> None:
    torch.manual_seed(0)
    a = create_backbone("lenet5", 10, in_chans=1, input_size=32)
    x = torch.randn(4, 1, 32, 32)
    expected_m = a(x).detach()
    net = ImpactxNet(a)
    torch.testing.assert_close(net.forward_all(x).m, expected_m)  # M = A without softmax (paper 3.1)
    lep = net.lep.features.state_dict()
    for key, value in a.features.state_dict().items():
        assert torch.equal(lep[key], value)
    assert net.lep.features is not a.features  # a copy: LEP trains apart from M
    fresh = create_backbone("lenet5", 10, in_chans=1, input_size=32).features
    other = ImpactxNet(create_backbone("lenet5", 10, in_chans=1, input_size=32), fresh)
    assert other.lep.features is fresh


def test_frozen_extractor_stays_in_eval_mode_and_needs_no_gradients() -> None:
    net = ImpactxNet(create_backbone("resnet18_cifar", 3, in_chans=3, input_size=32), latent_dim=8, decoder_width=4,
                     freeze_extractor=True)
    net.train()
    assert not net.extractor.training and net.lep.training and net.decoder.training
    assert not any(p.requires_grad for p in net.extractor.parameters())
    assert all(p.requires_grad for p in net.lep.parameters())
    stats = {k: v.clone() for k, v in net.extractor.state_dict().items()}
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(torch.equal(stats[k], v) for k, v in net.extractor.state_dict().items())  # BatchNorm untouched


def test_wrong_input_and_bad_options_are_clear_errors() -> None:
    net = ImpactxNet(create_backbone("lenet5", 3, in_chans=1, input_size=28), latent_dim=8, decoder_width=4)
    with pytest.raises(ValueError, match=r"images \[B,1,28,28\], got \[2, 1, 32, 32\]"):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="m_cut must be one of"):
        ImpactxNet(create_backbone("lenet5", 3, in_chans=1, input_size=28), m_cut="middle")
    with pytest.raises(ValueError, match="map_channels must be 1 or the input's 1 channels, got 3"):
        ImpactxNet(create_backbone("lenet5", 3, in_chans=1, input_size=28), map_channels=3)
