"""The Attention Branch Network over impactx's backbones: stage discovery per family, shapes at sizes other
than 32/224, the attention really multiplying the perception branch's features, gradients into both
branches, no state left behind by a forward, and eval-mode explanations that leave BatchNorm alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from impactx.core import state_versions
from impactx.models import Backbone, create_backbone, explain_needs_grad, is_self_explaining, self_maps
from impactx.models.abn import AbnOutput, AttentionBranchNetwork, check_attention_kernel
from impactx.models.stages import SpatialStage, spatial_stages

pytestmark = pytest.mark.usefixtures("one_thread")

K = 5


def _abn(name: str, in_chans: int = 3, size: int = 64, **kwargs) -> AttentionBranchNetwork:
    torch.manual_seed(0)
    return AttentionBranchNetwork(create_backbone(name, K, in_chans=in_chans, input_size=size), **kwargs)


def _no_hooks(module: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


# ------------------------------------------------------------------------------------------ stage discovery
def _children(prefix: str, n: int, start: int = 0) -> list[tuple[str, ...]]:
    return [(f"{prefix}{i}",) for i in range(start, start + n)]


STAGE_LISTS = {
    "lenet5": [("conv.0", "conv.1", "conv.2"), ("conv.3", "conv.4", "conv.5")],
    "mobilenetv2_100": _children("blocks.", 7),
    "mobilenetv1_100": _children("blocks.", 5),
    "efficientnet_b0": _children("blocks.", 7),
    "efficientnet_b2": _children("blocks.", 7),
    "resnet18_cifar": _children("layer", 4, start=1),
    "tv:resnet18": _children("layer", 4, start=1),
    "resnet18": _children("layer", 4, start=1),
    "convnext_atto": _children("stages.", 4),
    "regnetx_002": _children("s", 4, start=1),
    "tv:mobilenet_v2": _children("features.", 19),
    "tv:vgg11": [  # split after each max-pool
        ("features.0", "features.1", "features.2"),
        ("features.3", "features.4", "features.5"),
        tuple(f"features.{i}" for i in range(6, 11)),
        tuple(f"features.{i}" for i in range(11, 16)),
        tuple(f"features.{i}" for i in range(16, 21)),
    ],
}


@pytest.mark.parametrize("name", list(STAGE_LISTS))
def test_spatial_stages_of_each_family(name: str) -> None:
    backbone = create_backbone(name, K, in_chans=3, input_size=32)
    stages = spatial_stages(backbone)
    assert [stage.members for stage in stages] == STAGE_LISTS[name]
    for stage in stages:
        assert stage.output == stage.members[-1]
        backbone.features.get_submodule(stage.output)  # names resolve under backbone.features


def test_lenet5_stage_outputs_are_the_pooled_maps() -> None:
    backbone = create_backbone("lenet5", K, in_chans=1, input_size=32).eval()
    first, second = spatial_stages(backbone)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        f1 = first.copy(backbone.features)(x)
        f2 = second.copy(backbone.features)(f1)
        torch.testing.assert_close(f1, backbone.features.conv[:3](x))
        torch.testing.assert_close(f2, backbone.features.conv(x))  # conv.6 is Identity at 32
    assert f1.shape == (2, 6, 14, 14) and f2.shape == (2, 16, 5, 5)


def test_unknown_family_is_a_clear_error() -> None:
    backbone = Backbone(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), 4, K, in_chans=3, input_size=2, name="mystery")
    with pytest.raises(ValueError, match=r"backbone 'mystery'.*supported families: lenet5.*resnet.*blocks.*features"):
        spatial_stages(backbone)
    with pytest.raises(ValueError, match="mystery"):
        AttentionBranchNetwork(backbone)


class _TokenBlocks(nn.Module):
    """A ``blocks`` model whose stages output tokens ``[B,N,C]`` (a ViT-like trunk): not spatial."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.flatten(2).transpose(1, 2)).mean(1)


def test_non_spatial_stages_are_a_clear_error() -> None:
    backbone = Backbone(_TokenBlocks(), 4, K, in_chans=4, input_size=8, name="tokens")
    with pytest.raises(ValueError, match=r"stage 'blocks.0' of backbone 'tokens' must .*feature map \[B,C,h,w\]"):
        AttentionBranchNetwork(backbone, attention_stage=0)


@pytest.mark.parametrize("stage", [1, -1, 2, -3])
def test_bad_attention_stage_names_the_value_and_the_range(stage: int) -> None:
    backbone = create_backbone("lenet5", K, in_chans=1, input_size=32)
    with pytest.raises(ValueError, match=rf"attention_stage={stage} .*'lenet5' with 2 spatial stages.*valid values: 0 or -2"):
        AttentionBranchNetwork(backbone, attention_stage=stage)


def test_attention_stage_range_for_four_stages() -> None:
    backbone = create_backbone("resnet18_cifar", K, in_chans=3, input_size=32)
    with pytest.raises(ValueError, match=r"attention_stage=3 .*layer4.*valid values: 0..2 or -4..-2"):
        AttentionBranchNetwork(backbone, attention_stage=3)
    with pytest.raises(ValueError, match="attention_stage must be an int"):
        AttentionBranchNetwork(backbone, attention_stage=True)
    net = AttentionBranchNetwork(backbone, attention_stage=-4)
    assert net.attention_stage == 0 and net.stage == SpatialStage(("layer1",))


@pytest.mark.parametrize("kernel", [0, 2, -3, 4, True, 3.0])
def test_attention_kernel_must_be_a_positive_odd_int(kernel) -> None:
    with pytest.raises(ValueError, match="attention_kernel"):
        check_attention_kernel(kernel)
    with pytest.raises(ValueError, match="attention_kernel"):
        AttentionBranchNetwork(create_backbone("lenet5", K, in_chans=1, input_size=32), attention_kernel=kernel)


# ------------------------------------------------------------------------------------------------- shapes
def _check_shapes(net: AttentionBranchNetwork, x: torch.Tensor, feature_side: int) -> AbnOutput:
    b, _, h, w = x.shape
    net.eval()
    with torch.no_grad():
        out = net.forward_branches(x)
        logits = net(x)
        maps = net.explain(x)
    assert isinstance(out, AbnOutput)
    assert out.perception_logits.shape == (b, K) and out.attention_logits.shape == (b, K)
    assert out.attention_map.shape == (b, 1, feature_side, feature_side)
    torch.testing.assert_close(logits, out.perception_logits)
    assert maps.shape == (b, 1, h, w)
    for att in (out.attention_map, maps):
        assert torch.isfinite(att).all() and att.min() >= 0 and att.max() <= 1
    torch.testing.assert_close(maps, F.interpolate(out.attention_map, size=(h, w), mode="bilinear", align_corners=False))
    return out


@pytest.mark.parametrize(("in_chans", "size", "side"), [(1, 28, 14), (3, 28, 14), (1, 32, 14), (3, 32, 14),
                                                        (1, 96, 46), (3, 96, 46)])
def test_lenet5_shapes(in_chans: int, size: int, side: int) -> None:
    net = _abn("lenet5", in_chans, size)
    _check_shapes(net, torch.randn(2, in_chans, size, size), side)


@pytest.mark.parametrize(
    ("name", "size", "stage", "side"),
    [
        ("mobilenetv2_100", 96, -2, 3),  # blocks.5: stride 32
        ("mobilenetv2_100", 64, 2, 8),  # blocks.2: stride 8
        ("tv:mobilenet_v2", 64, -2, 2),  # features.17: stride 32
        ("efficientnet_b0", 64, -3, 4),  # blocks.4: stride 16
        ("resnet18_cifar", 32, -2, 8),  # layer3 (8x8); the copied layer4 halves it, the map is resized back
        ("resnet18", 48, -2, 3),  # timm ResNet: layer3 at stride 16 of 48
    ],
)
def test_shapes_of_other_backbones(name: str, size: int, stage: int, side: int) -> None:
    net = _abn(name, 3, size, attention_stage=stage)
    _check_shapes(net, torch.randn(2, 3, size, size), side)


def test_downsampling_copy_is_resized_to_the_feature_map() -> None:
    """resnet18_cifar: layer4's copy works at 4x4, the map is resized bilinearly to layer3's 8x8."""
    net = _abn("resnet18_cifar", 3, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = net.backbone.features.layer3(net.backbone.features.layer2(net.backbone.features.layer1(
            net.backbone.features.relu(net.backbone.features.bn1(net.backbone.features.conv1(x))))))
        branch = net.attention_branch
        g = F.relu(branch.norm_classes(branch.to_classes(branch.norm(branch.next_stage(f)))))
        coarse = torch.sigmoid(branch.map_norm(branch.map_conv(g)))
        out = net.forward_branches(x)
    assert f.shape[-2:] == (8, 8) and coarse.shape[-2:] == (4, 4)
    expected = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.attention_map, expected)
    torch.testing.assert_close(out.attention_logits, branch.classifier(g).mean(dim=(2, 3)))


def test_attention_kernel_sets_the_map_convolution() -> None:
    net = _abn("lenet5", 1, 32, attention_kernel=5)
    assert net.attention_branch.map_conv.kernel_size == (5, 5) and net.attention_branch.map_conv.padding == (2, 2)
    _check_shapes(net, torch.randn(2, 1, 32, 32), 14)


# --------------------------------------------------------------------------------- the attention is used
def test_lenet5_perception_runs_on_f_times_att_plus_f() -> None:
    net = _abn("lenet5", 1, 32).eval()
    features = net.backbone.features
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        out = net.forward_branches(x)
        f = features.conv[:3](x)
        attention_logits, att = net.attention_branch(f)
        by_hand = net.backbone.head(features.fc(features.conv[3:](f * att + f)))
        plain = net.backbone(x)
    torch.testing.assert_close(out.attention_map, att)
    torch.testing.assert_close(out.attention_logits, attention_logits)
    torch.testing.assert_close(out.perception_logits, by_hand)
    assert not torch.allclose(out.perception_logits, plain, atol=1e-4)


@pytest.mark.parametrize(("name", "in_chans", "size"), [("lenet5", 1, 32), ("mobilenetv2_100", 3, 64),
                                                        ("resnet18_cifar", 3, 32)])
def test_a_zero_attention_map_gives_the_plain_backbone(name: str, in_chans: int, size: int) -> None:
    """With the map's BatchNorm bias at -1e4 the sigmoid is 0, so f*att+f = f: the logits are the backbone's
    own; with the map left as built they differ."""
    net = _abn(name, in_chans, size).eval()
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        plain = net.backbone(x)
        assert not torch.allclose(net(x), plain, atol=1e-5)
        net.attention_branch.map_norm.bias.fill_(-1e4)
        assert net.forward_branches(x).attention_map.max() == 0
        torch.testing.assert_close(net(x), plain)


# ---------------------------------------------------------------------------------------------- gradients
def test_gradients_reach_both_branches() -> None:
    net = _abn("lenet5", 1, 32).train()
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    branch, features = net.attention_branch, net.backbone.features

    def grads(loss: torch.Tensor) -> dict[str, float]:
        net.zero_grad(set_to_none=True)
        loss.backward()
        params = {"trunk": features.conv[0].weight, "after_split": features.conv[3].weight,
                  "head": net.backbone.head.weight, "copy": branch.next_stage[0].weight,
                  "att_classifier": branch.classifier.weight, "att_map": branch.map_conv.weight}
        return {k: 0.0 if p.grad is None else float(p.grad.abs().sum()) for k, p in params.items()}

    out = net.forward_branches(x)
    g_att = grads(F.cross_entropy(out.attention_logits, y))
    assert g_att["trunk"] > 0 and g_att["copy"] > 0 and g_att["att_classifier"] > 0
    assert g_att["head"] == 0 and g_att["after_split"] == 0 and g_att["att_map"] == 0

    out = net.forward_branches(x)
    g_per = grads(F.cross_entropy(out.perception_logits, y))
    assert all(g_per[k] > 0 for k in ("trunk", "after_split", "head", "att_map", "copy"))
    assert g_per["att_classifier"] == 0  # the attention logits do not enter the perception branch


def test_backward_through_a_timm_backbone() -> None:
    net = _abn("mobilenetv2_100", 3, 64).train()
    out = net.forward_branches(torch.randn(2, 3, 64, 64))
    (out.attention_logits.sum() + out.perception_logits.sum()).backward()
    assert net.attention_branch.map_conv.weight.grad.abs().sum() > 0
    assert net.backbone.features.conv_stem.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------- no state, no side effects
def test_no_hooks_or_attributes_are_left_behind() -> None:
    net = _abn("lenet5", 1, 32)
    before = set(net.__dict__), list(net.state_dict())
    x = torch.randn(2, 1, 32, 32)
    net(x)
    net.forward_branches(x)
    net.explain(x)
    assert _no_hooks(net)
    assert (set(net.__dict__), list(net.state_dict())) == before
    with pytest.raises(ValueError, match="LeNet-5 built for"):  # fails inside the backbone's forward
        net(torch.randn(2, 3, 32, 32))
    assert _no_hooks(net)


def test_hook_is_removed_when_the_attention_branch_fails(monkeypatch) -> None:
    net = _abn("lenet5", 1, 32)

    def broken(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("branch failed")

    monkeypatch.setattr(net.attention_branch, "forward", broken)
    with pytest.raises(RuntimeError, match="branch failed"):
        net(torch.randn(2, 1, 32, 32))
    assert _no_hooks(net)


def test_the_copied_stage_starts_from_the_backbone_and_is_independent() -> None:
    net = _abn("tv:resnet18", 3, 64)
    original, copied = net.backbone.features.layer4, net.attention_branch.next_stage
    for (name, p), (name_c, q) in zip(original.named_parameters(), copied.named_parameters(), strict=True):
        assert name == name_c and torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    assert not any(getattr(m, "inplace", False) for m in copied.modules())  # it reads f, which is still needed
    assert any(getattr(m, "inplace", False) for m in original.modules())  # the backbone keeps its own


@pytest.mark.parametrize(("name", "in_chans", "size"), [("lenet5", 1, 32), ("mobilenetv2_100", 3, 64)])
def test_explain_leaves_batchnorm_statistics_and_modes_unchanged(name: str, in_chans: int, size: int) -> None:
    net = _abn(name, in_chans, size)
    x = torch.randn(3, in_chans, size, size)
    for mode in (False, True):  # eval mode (the protocol) and even train mode
        net.train(mode)
        versions = state_versions(net)
        stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
        assert stats
        maps = net.explain(x)
        assert state_versions(net) == versions
        assert all(torch.equal(net.state_dict()[k], v) for k, v in stats.items())
        assert all(m.training == mode for m in net.modules())
        assert not maps.requires_grad


def test_follows_the_self_explaining_protocol() -> None:
    net = _abn("lenet5", 3, 32).eval()
    assert is_self_explaining(net) and not explain_needs_grad(net)
    x = torch.randn(2, 3, 32, 32)
    maps = self_maps(net, x)
    assert maps.shape == (2, 1, 32, 32)
    with torch.inference_mode():  # Lightning's default for predict/test
        torch.testing.assert_close(net.explain(x), maps)
