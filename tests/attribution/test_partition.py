"""``partition`` (batched Owen values) against shap's PartitionExplainer (``shap_partition``), cv2 and shap's masker."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import shap
import torch
from shap.utils import make_masks
from torch import nn

from impactx.attribution.partition import Partition, expansion_evals, partition_owen
from impactx.attribution.partition.blur import box_blur, default_blur_kernel
from impactx.attribution.partition.masking import masked_images
from impactx.attribution.partition.shap_reference import ShapPartition, shap_owen
from impactx.attribution.partition.tree import image_tree
from impactx.attribution.registry import available, create_explainer
from impactx.models import create_backbone


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """shap makes hundreds of 10-image model calls; thread start-up dominates them on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RowwiseNet(nn.Module):
    """A small nonlinear classifier computed in float64 from per-image reductions only, so an image's
    scores do not depend on the batch it is evaluated in (exact comparisons need that)."""

    def __init__(self, features: int, num_classes: int = 5, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(
            torch.randn(hidden, features, generator=gen, dtype=torch.float64) / features**0.5
        )
        self.w2 = nn.Parameter(torch.randn(num_classes, hidden, generator=gen, dtype=torch.float64))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh((x.flatten(1).double().unsqueeze(1) * self.w1).sum(-1))
        return (h.unsqueeze(1) * self.w2).sum(-1)


class CountingModel(nn.Module):
    """Counts the images the wrapped model is evaluated on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.num_classes = inner.num_classes
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


def _lenet(in_chans: int, size: int) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("lenet5", 10, in_chans=in_chans, input_size=size).eval()


def _structured(channels: int, size: int) -> torch.Tensor:
    """A bright square and a diagonal stroke on a dark gradient: a digit-like picture with flat areas."""
    ramp = torch.linspace(-1.0, 0.0, size)
    img = (ramp[:, None] + ramp[None, :]).expand(channels, size, size).clone() * 0.5
    img[:, size // 4 : size // 2, size // 5 : size // 2] = 1.5
    idx = torch.arange(size // 3, size - 2)
    img[:, idx, idx] = 2.0
    if channels > 1:
        img[1] *= -0.5
    return img


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per image of ``[B, ...]`` tensors."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


# --- the tree, the blur and the masked images, against shap's masker and cv2 -----------------------


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1), (5, 7, 3), (6, 3, 2)])
def test_tree_is_shaps_image_partition(shape):
    height, width, channels = shape
    tree = image_tree(height, width, channels)
    masker = shap.maskers.Image("blur(3,3)", shape)
    np.testing.assert_array_equal(tree.clustering(), masker.clustering)
    # the features a node covers, as shap's masker applies them (HWC-flat ids), for 300 random nodes
    nodes = torch.randperm(tree.num_nodes, generator=torch.Generator().manual_seed(0))[:300]
    shap_members = make_masks(masker.clustering)[nodes.numpy()].toarray().astype(bool)
    x = torch.zeros(len(nodes), channels, height, width)
    ours = masked_images(tree, x + 1, x, nodes.view(-1, 1), torch.full((len(nodes), 1), 1 << tree.inf_depth))
    ours = ours[:, 0].permute(0, 2, 3, 1).reshape(len(nodes), -1).bool().numpy()
    np.testing.assert_array_equal(ours, shap_members)


@pytest.mark.parametrize(
    "shape,kernel",
    [
        ((32, 32, 3), (8, 8)),
        ((28, 28, 1), (7, 7)),
        ((5, 7, 3), (3, 5)),
        ((4, 4, 2), (9, 2)),
        ((1, 6, 1), (3, 3)),
    ],
)
def test_box_blur_is_cv2_blur(shape, kernel):
    rng = np.random.default_rng(1)
    image = (rng.standard_normal(shape) * 2).astype(np.float32)
    kh, kw = kernel
    expected = cv2.blur(image, (kw, kh)).reshape(shape)  # cv2 takes (width, height)
    ours = box_blur(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(), kernel)[0].permute(1, 2, 0)
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_default_blur_kernel_scales_shaps_8_at_32():
    assert default_blur_kernel(32, 32) == (8, 8)
    assert default_blur_kernel(96, 96) == (24, 24)
    assert default_blur_kernel(28, 56) == (7, 14)


@pytest.mark.parametrize("shape", [(8, 8, 3), (7, 5, 2), (6, 6, 1)])
def test_masked_images_equal_shaps_masker_on_coalitions(shape):
    """Random coalitions m00 + child (the images shap evaluates), built from shap's own mask matrix."""
    height, width, channels = shape
    tree = image_tree(height, width, channels)
    members = make_masks(tree.clustering()).toarray().astype(bool)
    kernel = (3, 2)
    masker = shap.maskers.Image(f"blur({kernel[1]},{kernel[0]})", shape)
    rng = np.random.default_rng(0)
    image = rng.standard_normal(shape).astype(np.float32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    blurred = box_blur(x, kernel)
    internal = np.flatnonzero(~tree.is_leaf.numpy())
    parent, depth = tree.parent.numpy(), tree.depth.numpy()
    nodes, words, expected = [], [], []
    for node in rng.choice(internal, size=40):
        child = int(tree.left[node] if rng.random() < 0.5 else tree.right[node])
        ctx = int(rng.integers(0, 1 << depth[node])) if depth[node] else 0
        mask = members[child].copy()
        ancestor = child
        while parent[ancestor] >= 0:  # add the sibling of each ancestor whose depth bit is set
            up = parent[ancestor]
            sibling = tree.right[up] if tree.left[up] == ancestor else tree.left[up]
            if up != node and (ctx >> depth[up]) & 1:
                mask |= members[int(sibling)]
            ancestor = up
        masker.last_xid = None  # shap caches the blur under id(x)
        expected.append(masker(mask, image.copy())[0][0])
        nodes.append(child)
        words.append(ctx | (1 << tree.inf_depth))
    ours = masked_images(tree, x, blurred, torch.tensor([nodes]), torch.tensor([words]))[0]
    np.testing.assert_array_equal(ours.permute(0, 2, 3, 1).numpy(), np.stack(expected))


# --- Owen values against shap's PartitionExplainer ---------------------------------------------


def test_partition_matches_shap_on_lenet_rgb_at_2000_evals():
    model = _lenet(3, 32)
    gen = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(2, 3, 32, 32, generator=gen), _structured(3, 32)[None]])
    y = torch.tensor([3, 7, 1])
    ref = shap_owen(model, x, y, max_evals=2000)
    ours = partition_owen(model, x, y, max_evals=2000)
    assert ours.attributions.shape == x.shape and ours.attributions.dtype == x.dtype
    assert torch.equal(ours.evals, ref.evals) and (ours.evals == 2000).all()
    assert (_corr(ours.attributions, ref.attributions) >= 0.99).all()
    scale = ref.attributions.abs().amax(dim=(1, 2, 3))
    assert ((ours.attributions - ref.attributions).abs().amax(dim=(1, 2, 3)) <= 0.05 * scale).all()
    torch.testing.assert_close(ours.base_values, ref.base_values, rtol=0, atol=1e-6)


def test_partition_matches_shap_on_lenet_gray():
    model = _lenet(1, 28)
    gen = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(1, 1, 28, 28, generator=gen), _structured(1, 28)[None]])
    y = torch.tensor([0, 9])
    ref = shap_owen(model, x, y, max_evals=800, output="logit")
    ours = partition_owen(model, x, y, max_evals=800, output="logit")
    assert torch.equal(ours.evals, ref.evals)
    assert (_corr(ours.attributions, ref.attributions) >= 0.99).all()


class ViewLeNet(nn.Module):
    """A LeNet written as peers' scripts write it: the features are flattened with ``.view``, which needs
    a contiguous (NCHW) tensor."""

    def __init__(self, in_chans: int, size: int, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = ((size - 4) // 2 - 4) // 2
        self.fc = nn.Linear(16 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.view(x.shape[0], -1))


@pytest.mark.parametrize("in_chans,size", [(1, 28), (3, 32)])
def test_shap_partition_runs_a_model_that_flattens_with_view(in_chans, size):
    torch.manual_seed(0)
    model = ViewLeNet(in_chans, size).eval()
    x = torch.randn(2, in_chans, size, size)
    y = torch.tensor([1, 4])
    ref = create_explainer("shap_partition", max_evals=120)(model, x, y)
    ours = partition_owen(model, x, y, max_evals=120).attributions
    assert ref.shape == x.shape
    assert (_corr(ours, ref) >= 0.99).all()


@pytest.mark.parametrize(
    "shape,max_evals,batch_size",
    [
        ((2, 4, 4), 500, 10),  # the budget outlasts the tree: every internal node expanded in every context
        ((1, 3, 5), 300, 40),  # images run out of entries at different rounds (per-image bookkeeping)
        ((3, 3, 2), 500, 20),
        ((3, 4, 4), 61, 1),  # one node per round, odd budget (shap overshoots by one)
        ((1, 7, 5), 200, 7),
        ((3, 8, 8), 2, 10),  # no expansion at all: f(x) - f(blurred) spread evenly
    ],
)
def test_partition_equals_shap_exactly_on_a_batch_invariant_model(shape, max_evals, batch_size):
    channels, height, width = shape
    model = RowwiseNet(channels * height * width)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(5))
    y = torch.arange(5)
    ref = shap_owen(model, x, y, max_evals=max_evals, batch_size=batch_size, blur_kernel=2)
    ours = partition_owen(model, x, y, max_evals=max_evals, batch_size=batch_size, blur_kernel=2)
    assert torch.equal(ours.evals, ref.evals)
    torch.testing.assert_close(ours.attributions, ref.attributions, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.base_values, ref.base_values, rtol=0, atol=1e-12)


def test_batch_size_changes_the_expansion_order_as_in_shap():
    model = RowwiseNet(3 * 8 * 8)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([1, 2])
    small = partition_owen(model, x, y, max_evals=120, batch_size=2, blur_kernel=2)
    large = partition_owen(model, x, y, max_evals=120, batch_size=60, blur_kernel=2)
    ref = shap_owen(model, x, y, max_evals=120, batch_size=60, blur_kernel=2)
    assert not torch.allclose(small.attributions, large.attributions, atol=1e-6)
    torch.testing.assert_close(large.attributions, ref.attributions, rtol=0, atol=1e-6)


# --- axioms, invariances and the budget ---------------------------------------------------------


def test_efficiency_and_shaps_expected_value():
    """Attributions sum to f(x) - f(fully masked); the base value is shap's expected_value, f(blurred x)."""
    model = _lenet(3, 32)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([2, 5, 8])
    ours = partition_owen(model, x, y, max_evals=400)
    with torch.no_grad():
        blurred = torch.from_numpy(np.stack([cv2.blur(im, (8, 8)) for im in x.permute(0, 2, 3, 1).numpy()]))
        base = model(blurred.permute(0, 3, 1, 2)).softmax(1)[torch.arange(3), y].double()
        full = model(x).softmax(1)[torch.arange(3), y].double()
    torch.testing.assert_close(ours.base_values, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.full_values, full, rtol=0, atol=1e-6)
    sums = ours.attributions.double().sum(dim=(1, 2, 3))
    torch.testing.assert_close(sums, ours.full_values - ours.base_values, rtol=1e-4, atol=1e-9)
    ref = shap_owen(model, x[:1], y[:1], max_evals=400)
    torch.testing.assert_close(ours.base_values[:1], ref.base_values, rtol=0, atol=1e-6)


def test_batch_and_chunk_invariance():
    model = RowwiseNet(2 * 6 * 7)
    x = torch.randn(4, 2, 6, 7, generator=torch.Generator().manual_seed(8))
    y = torch.tensor([0, 1, 2, 3])
    together = partition_owen(model, x, y, max_evals=150, internal_batch_size=4096).attributions
    alone = torch.cat(
        [partition_owen(model, x[i : i + 1], y[i : i + 1], max_evals=150).attributions for i in range(4)]
    )
    chunked = partition_owen(model, x, y, max_evals=150, internal_batch_size=7).attributions
    assert torch.equal(together, alone)
    assert torch.equal(together, chunked)


@pytest.mark.parametrize("max_evals", [300, 301])
def test_budget_is_shaps(max_evals):
    counted = CountingModel(_lenet(3, 32))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    y = torch.tensor([4, 6])
    ours = partition_owen(counted, x, y, max_evals=max_evals)
    assert counted.rows == int(ours.evals.sum()) == 2 * expansion_evals(max_evals)
    assert (ours.evals <= max_evals + max_evals % 2).all()
    assert torch.equal(ours.evals, shap_owen(counted, x, y, max_evals=max_evals).evals)


# --- the explainer contract ---------------------------------------------------------------------


def test_registered_explainers_follow_the_contract():
    assert {"partition", "shap_partition"} <= set(available())
    model = _lenet(3, 32).train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    fast = create_explainer("partition", max_evals=100)
    assert isinstance(fast, Partition) and fast.evals_per_image() == 100
    out = fast(model, x, 3)
    assert out.shape == x.shape and model.training
    reduced = create_explainer("partition", max_evals=100, reduce_channels=True)(
        model, x, torch.tensor([3, 3])
    )
    torch.testing.assert_close(reduced, out.sum(1, keepdim=True))
    ref = create_explainer("shap_partition", max_evals=100)
    assert isinstance(ref, ShapPartition)
    assert (_corr(out, ref(model, x, 3)) > 0.99).all()


@pytest.mark.parametrize(
    "options,match",
    [
        ({"max_evals": 1}, "max_evals"),
        ({"batch_size": 0}, "batch_size"),
        ({"output": "softmax"}, "output"),
        ({"blur_kernel": (0, 3)}, "blur_kernel"),
        ({"internal_batch_size": 0}, "internal_batch_size"),
    ],
)
def test_bad_options_raise_early(options, match):
    with pytest.raises(ValueError, match=match):
        Partition(**options)
    if "internal_batch_size" not in options:
        with pytest.raises(ValueError, match=match):
            ShapPartition(**options)


def test_single_feature_image_is_rejected():
    with pytest.raises(ValueError, match="at least 2 features"):
        partition_owen(RowwiseNet(1), torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long))
