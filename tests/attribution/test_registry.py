"""The one-shot ``attribute`` entry point forwards every option, including ones named like its own arguments."""

import torch

from impactx.attribution import attribute, create_explainer
from impactx.models import create_backbone


def test_attribute_accepts_an_option_called_method() -> None:
    torch.manual_seed(0)
    model = create_backbone("lenet5", 10, in_chans=1, input_size=32)
    x = torch.randn(2, 1, 32, 32)
    via_attribute = attribute("ig", model, x, torch.tensor([1, 2]), method="riemann_trapezoid", n_steps=4)
    direct = create_explainer("ig", method="riemann_trapezoid", n_steps=4)(model, x, torch.tensor([1, 2]))
    gauss = create_explainer("ig", method="gausslegendre", n_steps=4)(model, x, torch.tensor([1, 2]))
    torch.testing.assert_close(via_attribute, direct)
    assert not torch.allclose(via_attribute, gauss)


def test_maps_are_detached_without_create_graph() -> None:
    """Inputs that require grad must not leak a partial graph (through x - r) into the maps."""
    torch.manual_seed(0)
    model = create_backbone("lenet5", 10, in_chans=1, input_size=32)
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    background = torch.randn(4, 1, 32, 32)
    for name, options in (("ig", {"n_steps": 4}), ("eg", {"n_samples": 4, "background": background})):
        maps = create_explainer(name, **options)(model, x, torch.tensor([1, 2]))
        assert not maps.requires_grad and maps.grad_fn is None, name
        graph_maps = create_explainer(name, create_graph=True, **options)(model, x, torch.tensor([1, 2]))
        assert graph_maps.requires_grad, name


def test_stochastic_methods_repeat_by_default() -> None:
    """eg and wg default to seed 0: calling twice gives the same map (seed=None draws afresh)."""
    torch.manual_seed(0)
    model = create_backbone("lenet5", 10, in_chans=1, input_size=32)
    x, background = torch.randn(2, 1, 32, 32), torch.randn(6, 1, 32, 32)
    for name, options in (("eg", {"n_samples": 4}), ("wg", {"n_baselines": 2, "n_steps": 4})):
        first = attribute(name, model, x, 3, background=background, **options)
        torch.testing.assert_close(attribute(name, model, x, 3, background=background, **options), first)
        unseeded = create_explainer(name, background=background, seed=None, **options)
        assert not torch.equal(unseeded(model, x, 3), unseeded(model, x, 3)), name
