"""The explainer contract, checked for every registered method (``available()``).

Each method runs with small options from ``FAST_OPTIONS`` (only those its constructor accepts), a
background set where it takes one, and ``seed=0`` where it takes a seed. A method with a required
constructor argument not provided here is skipped, naming the argument.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from impactx.attribution import Explainer, attribute, available, explainer_class

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPE = (3, 12, 12)  # the conftest's BNDropoutCNN input
NUM_CLASSES = 10

FAST_OPTIONS: dict[str, dict] = {
    "ig": {"n_steps": 4},
    "eg": {"n_samples": 4},
    "wg": {"n_baselines": 2, "n_steps": 4},
    "deepprior_eg": {"n_samples": 4, "n_components": 2, "max_fit_pixels": 500},
    "partition": {"max_evals": 64},
    "shap_partition": {"max_evals": 64},
    "smoothgrad": {"n_samples": 3},
    "smoothgrad_sq": {"n_samples": 3},
    "vargrad": {"n_samples": 3},
    "noisegrad": {"n_models": 2},
    "integrated_hessians": {"n_steps": 3},
    "agi": {"max_iter": 3, "n_classes": 3},
    "boundary_ig": {"steps": 3, "n_steps": 4},
    "fusiongrad": {"n_models": 2, "n_samples": 2},
}
TAKES_BACKGROUND = {"eg", "wg", "deepprior_eg"}


def _background(device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(42)
    return torch.randn(8, *SHAPE, generator=gen, dtype=torch.float64).to(device)


def make_explainer(name: str, device: str, **extra) -> Explainer:
    cls = explainer_class(name)
    params = inspect.signature(cls.__init__).parameters
    options = {k: v for k, v in FAST_OPTIONS.get(name, {}).items() if k in params}
    if "seed" in params:
        options["seed"] = 0
    if name in TAKES_BACKGROUND and "background" in params:
        options["background"] = _background(device)
    options.update(extra)
    missing = [
        p.name
        for p in list(params.values())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in options
    ]
    if missing:
        pytest.skip(f"{name} needs setup this test does not provide: {missing}")
    return cls(**options)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def model(bn_dropout_model, device) -> nn.Module:
    return bn_dropout_model.to(device)


@pytest.fixture
def inputs(images, device) -> tuple[torch.Tensor, torch.Tensor]:
    return images(3, 3, 12, seed=7).to(device), torch.tensor([1, 4, 9], device=device)


def _snapshot(model: nn.Module) -> dict:
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: p.grad for name, p in model.named_parameters()},
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


@pytest.mark.parametrize("name", available())
def test_shape_device_dtype(name, model, inputs, device):
    x, target = inputs
    out = make_explainer(name, device)(model, x, target)
    assert out.shape == x.shape
    assert out.device == x.device and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    reduced = make_explainer(name, device, reduce_channels=True)(model, x, target)
    assert reduced.shape == (x.shape[0], 1, *x.shape[2:])
    torch.testing.assert_close(reduced, out.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("name", available())
def test_batch_invariance(name, model, inputs, device):
    x, target = inputs
    explainer = make_explainer(name, device)
    batched = explainer(model, x, target)
    scale = batched.abs().max().item()
    for i in (0, 2):
        alone = explainer(model, x[i : i + 1], target[i : i + 1])
        torch.testing.assert_close(alone[0], batched[i], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name", available())
def test_channels_last_inputs_give_the_same_maps(name, model, inputs, device):
    """A channels-last batch (what a module with ``channels_last=True`` hands its explainer) gives the maps of the
    same images in the default layout: no method may ``view`` a gradient whose layout follows the input's."""
    x, target = inputs
    explainer = make_explainer(name, device)
    expected = explainer(model, x, target)
    got = explainer(model, x.contiguous(memory_format=torch.channels_last), target)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("name", available())
def test_model_state_unchanged(name, model, inputs, device):
    x, target = inputs
    before = _snapshot(model)
    make_explainer(name, device)(model, x, target)
    after = _snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"].values())
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"


@pytest.mark.parametrize("name", available())
def test_deterministic_under_seed(name, model, inputs, device):
    x, target = inputs
    first = make_explainer(name, device)(model, x, target)
    again = make_explainer(name, device)(model, x, target)
    # bit-exact on CPU; GPU kernels (cuDNN backward) may reorder float sums between runs
    tol = 0.0 if device == "cpu" else 1e-9
    torch.testing.assert_close(first, again, rtol=tol, atol=tol * first.abs().max().item())


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize(
    "bad_target, error, match",
    [
        (torch.tensor([1, 4, NUM_CLASSES]), ValueError, "class 10"),
        (torch.tensor([1, 4]), ValueError, "2 entries"),
        (torch.tensor([1.0, 4.0, 9.0]), TypeError, "dtype"),
        (-1, ValueError, "negative"),
    ],
)
def test_bad_target(name, model, inputs, device, bad_target, error, match):
    x, _ = inputs
    bad = bad_target.to(device) if isinstance(bad_target, torch.Tensor) else bad_target
    with pytest.raises(error, match=match):
        make_explainer(name, device)(model, x, bad)


@pytest.mark.parametrize("name", available())
def test_bad_input_shape(name, model, inputs, device):
    x, target = inputs
    with pytest.raises(ValueError, match=r"\[B,C,H,W\]"):
        make_explainer(name, device)(model, x[0], target[0])


# --- several targets per call: [B,T] -> [B,T,C,H,W] ------------------------------------------------------

SEVERAL = [[1, 4, 9], [0, 0, 3], [9, 2, 5]]  # per image; a class may repeat


@pytest.mark.parametrize("name", available())
def test_several_targets_equal_single_target_calls(name, model, inputs, device):
    """Row t of a [B,T] call is the call with target[:, t] (keyed noise and references follow the image)."""
    x, _ = inputs
    target = torch.tensor(SEVERAL, device=device)
    explainer = make_explainer(name, device)
    several = explainer(model, x, target, target_rows=4)  # 9 rows in pieces of 4, 4 and 1
    assert several.shape == (3, 3, *x.shape[1:])
    assert several.device == x.device and several.dtype == x.dtype
    scale = several.abs().max().item()
    for t in range(target.shape[1]):
        single = explainer(model, x, target[:, t])
        torch.testing.assert_close(several[:, t], single, rtol=1e-5, atol=1e-5 * scale, msg=f"target column {t}")


@pytest.mark.parametrize("name", available())
def test_a_list_of_classes_applies_to_every_image(name, model, inputs, device):
    x, _ = inputs
    explainer = make_explainer(name, device, reduce_channels=True)
    listed = explainer(model, x, [7, 2])
    assert listed.shape == (3, 2, 1, *x.shape[2:])
    scale = listed.abs().max().item()
    for t, cls in enumerate((7, 2)):
        torch.testing.assert_close(listed[:, t], explainer(model, x, cls), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize(
    "bad_target, error, match",
    [
        (torch.zeros(3, 0, dtype=torch.long), ValueError, r"shape \[3, 0\].*T must be >= 1"),
        ([], ValueError, r"target \[\] names no class"),
        (torch.tensor([[1, 2], [3, NUM_CLASSES], [0, 0]]), ValueError, "class 10 but the model has 10 outputs"),
        ([3, -2], ValueError, "negative class index -2"),
        (torch.tensor([[1, 2], [3, 4]]), ValueError, r"2 rows \(shape \[2, 2\]\) but inputs hold 3 images"),
        (torch.tensor([[1.0, 2.0]] * 3), TypeError, "dtype torch.float32"),
        ([1, 2.5], TypeError, r"ints \(class indices\), got 2.5"),
        (torch.zeros(3, 2, 1, dtype=torch.long), ValueError, r"got shape \[3, 2, 1\]"),
    ],
)
def test_bad_several_targets(name, model, inputs, device, bad_target, error, match):
    x, _ = inputs
    bad = bad_target.to(device) if isinstance(bad_target, torch.Tensor) else bad_target
    with pytest.raises(error, match=match):
        make_explainer(name, device)(model, x, bad)


@pytest.mark.parametrize("rows", [0, -1, 2.0, True])
def test_bad_target_rows(bn_dropout_model, images, rows):
    with pytest.raises(ValueError, match=f"target_rows must be None or a positive int.*got {rows!r}"):
        make_explainer("gradient", "cpu")(bn_dropout_model, images(2, 3, 12), [1, 2], target_rows=rows)


def test_unknown_method_lists_available(bn_dropout_model, images):
    with pytest.raises(ValueError, match="unknown attribution method 'nope'") as err:
        attribute("nope", bn_dropout_model, images(1, 3, 12), 0)
    for name in available():
        assert name in str(err.value)
    assert {"ig", "eg", "wg"} <= set(available())
