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
