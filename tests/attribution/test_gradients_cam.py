"""Single-gradient methods, the noise wrappers and the CAM family against Captum, pytorch-grad-cam and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from impactx.attribution import attribute, create_explainer
from impactx.core import image_normal

captum_attr = pytest.importorskip("captum.attr")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")


class ReluNet(nn.Module):
    """Conv-ReLU-MaxPool-Conv-ReLU-Linear with ReLU modules (what guided backprop and Captum's hooks need)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 6 * 6, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture
def relu_net() -> ReluNet:
    torch.manual_seed(0)
    return ReluNet().double().eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(4, 3, 12, 12, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 4])


@pytest.mark.parametrize(("name", "options", "reference"), [
    ("saliency", {}, lambda m: captum_attr.Saliency(m)),
    ("saliency", {"abs": False}, lambda m: captum_attr.Saliency(m)),
    ("gradient", {}, lambda m: captum_attr.Saliency(m)),
    ("input_x_gradient", {}, lambda m: captum_attr.InputXGradient(m)),
    ("guided_backprop", {}, lambda m: captum_attr.GuidedBackprop(m)),
])
def test_gradient_methods_equal_captum(relu_net, batch, name, options, reference) -> None:
    x, t = batch
    kwargs = {"abs": options.get("abs", True)} if name == "saliency" else {}
    if name == "gradient":
        kwargs = {"abs": False}
    expected = reference(relu_net).attribute(x, target=t, **kwargs)
    torch.testing.assert_close(attribute(name, relu_net, x, t, **options), expected, atol=1e-12, rtol=0)


def test_guided_backprop_differs_from_the_gradient(relu_net, batch) -> None:
    """Guiding matters on this net: otherwise the Captum comparison above could not tell the two apart."""
    x, t = batch
    assert not torch.allclose(attribute("guided_backprop", relu_net, x, t), attribute("gradient", relu_net, x, t))


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_noise_wrappers_equal_captum_noise_tunnel_on_the_same_noise(relu_net, batch, monkeypatch, kind, method) -> None:
    x, t = batch
    explainer = create_explainer(kind, method=method, n_samples=5, stdev=0.3, seed=7)
    noise = explainer.noise(x)
    assert noise.shape == (4, 5, 3, 12, 12) and 0.2 < float(noise.std()) < 0.4

    def captum_noise(input, stdev, samples):  # noqa: A002  (Captum's argument names)
        assert samples == 5 and stdev == 0.3
        return input.repeat_interleave(samples, dim=0) + noise.reshape(-1, *input.shape[1:])

    monkeypatch.setattr(captum_attr.NoiseTunnel, "_add_noise_to_input", staticmethod(captum_noise))
    inner = captum_attr.Saliency(relu_net) if method == "saliency" else captum_attr.InputXGradient(relu_net)
    expected = captum_attr.NoiseTunnel(inner).attribute(x, nt_type=kind, nt_samples=5, stdevs=0.3, target=t)
    torch.testing.assert_close(explainer(relu_net, x, t), expected, atol=1e-10, rtol=1e-10)


def test_closed_forms_on_a_linear_model() -> None:
    """f(x) = W x + b: the gradient is W_t everywhere, so SmoothGrad of it is W_t and VarGrad is 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double().eval()
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1, 0])
    rows = model[1].weight[t].view(5, 2, 4, 4).detach()
    torch.testing.assert_close(attribute("gradient", model, x, t), rows)
    torch.testing.assert_close(attribute("input_x_gradient", model, x, t), x * rows)
    torch.testing.assert_close(attribute("smoothgrad", model, x, t, method="gradient", n_samples=4), rows)
    vargrad = attribute("vargrad", model, x, t, method="gradient", n_samples=4)
    torch.testing.assert_close(vargrad, torch.zeros_like(vargrad), atol=1e-12, rtol=0)


def test_image_noise_is_standard_normal_and_per_image() -> None:
    x = torch.randn(3, 1, 16, 16)
    noise = image_normal(x, 64, seed=0)
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02
    torch.testing.assert_close(image_normal(x[1:2], 64, seed=0), noise[1:2], atol=0, rtol=0)
    assert not torch.allclose(image_normal(x, 64, seed=1), noise)


def test_create_graph_methods_are_differentiable(make_tiny_cnn, tiny_images) -> None:
    """d/dtheta of sum(map) by autograd equals a central finite difference, on a smooth network."""
    model = make_tiny_cnn()
    t = torch.tensor([0, 1, 2, 0])
    weight = model.body[0].weight
    for name, options in [("gradient", {}), ("input_x_gradient", {}), ("saliency", {}), ("gradcam", {}),
                          ("gradcam_pp", {}), ("smoothgrad", {"method": "gradient", "method_options":
                                                              {"create_graph": True}, "n_samples": 2})]:
        if name != "smoothgrad":
            options = {**options, "create_graph": True}
        explainer = create_explainer(name, **options)
        (grad,) = torch.autograd.grad(explainer(model, tiny_images, t).sum(), weight)
        index = (1, 0, 1, 1)
        step = 1e-6
        with torch.no_grad():
            weight[index] += step
            up = float(explainer(model, tiny_images, t).sum())
            weight[index] -= 2 * step
            down = float(explainer(model, tiny_images, t).sum())
            weight[index] += step
        assert float(grad[index]) == pytest.approx((up - down) / (2 * step), rel=1e-4, abs=1e-8), name


# ---------------------------------------------------------------------------------------------- CAMs
def test_gradcam_equals_captum_layer_gradcam(relu_net, batch) -> None:
    x, t = batch
    layer = captum_attr.LayerGradCam(relu_net, relu_net.features[3]).attribute(x, target=t, relu_attributions=True)
    for mode in ("bilinear", "nearest"):
        expected = captum_attr.LayerAttribution.interpolate(layer, (12, 12), interpolate_mode=mode)
        ours = attribute("gradcam", relu_net, x, t, layer="features.3", interpolate_mode=mode)
        assert ours.shape == x.shape
        torch.testing.assert_close(ours.sum(dim=1, keepdim=True), expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(ours[:, :1] * 3, expected, atol=1e-12, rtol=0)  # map / C on each channel
    assert float(layer.detach().abs().max()) > 0


def test_default_layer_is_the_last_convolution(relu_net, batch) -> None:
    x, t = batch
    torch.testing.assert_close(attribute("gradcam", relu_net, x, t),
                               attribute("gradcam", relu_net, x, t, layer="features.3"))
    assert not torch.allclose(attribute("gradcam", relu_net, x, t, layer="features.0"),
                              attribute("gradcam", relu_net, x, t))
    with pytest.raises(ValueError, match="not a module.*features.0"):
        attribute("gradcam", relu_net, x, t, layer="features.9")


def test_guided_gradcam_equals_captum(relu_net, batch) -> None:
    x, t = batch
    expected = captum_attr.GuidedGradCam(relu_net, relu_net.features[3]).attribute(x, target=t)
    torch.testing.assert_close(attribute("guided_gradcam", relu_net, x, t), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("name", "reference"), [("gradcam", "GradCAM"), ("gradcam_pp", "GradCAMPlusPlus"),
                                                 ("scorecam", "ScoreCAM")])
def test_cams_equal_pytorch_grad_cam(relu_net, batch, name, reference) -> None:
    """pytorch-grad-cam min-max scales each layer map, resizes it with OpenCV and scales it again; the same
    post-processing is applied to impactx's layer maps (float32, as pytorch-grad-cam computes)."""
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = relu_net.float()
    x, t = batch[0].float(), batch[1]
    cls = getattr(pytorch_grad_cam, reference)
    with cls(model=model, target_layers=[model.features[3]]) as cam:
        if name == "scorecam":
            cam.batch_size = 64
        expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])
    ours = create_explainer(name).layer_maps(model, x, t)[:, 0].detach().numpy()
    np.testing.assert_allclose(scale_cam_image(scale_cam_image(ours, (12, 12))), expected, atol=2e-6)
    assert float(np.ptp(expected)) > 0.5


def test_scorecam_runs_under_inference_mode(relu_net, batch) -> None:
    x, t = batch
    expected = attribute("scorecam", relu_net, x, t)
    with torch.inference_mode():
        torch.testing.assert_close(attribute("scorecam", relu_net, x, t, internal_batch_size=5), expected)


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_deeplift_equals_captum_and_sums_to_the_output_difference(multiply_by_inputs) -> None:
    """Rescale rule through an in-place ReLU, a tanh and a sigmoid, against Captum's DeepLift; with the inputs
    multiplied in, each map sums to f(x) - f(x') (summation-to-delta)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(6, 4, 3, padding=1),
                          nn.Tanh(), nn.Flatten(), nn.Linear(4 * 64, 8), nn.Sigmoid(), nn.Linear(8, 5)).double().eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])
    baseline = 0.1 * torch.randn(1, 3, 8, 8, dtype=torch.float64)
    expected = captum_attr.DeepLift(model, multiply_by_inputs=multiply_by_inputs).attribute(
        x, baselines=baseline.expand_as(x), target=t)
    ours = attribute("deeplift", model, x, t, baseline=baseline[0], multiply_by_inputs=multiply_by_inputs)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    if multiply_by_inputs:
        with torch.no_grad():
            gap = (model(x) - model(baseline.expand_as(x))).gather(1, t[:, None])[:, 0]
        torch.testing.assert_close(ours.flatten(1).sum(dim=1), gap, atol=1e-12, rtol=0)
    assert not torch.allclose(ours, attribute("input_x_gradient", model, x, t))


@pytest.mark.parametrize(("max_sigma", "steps", "sqrt"), [(5.0, 10, False), (3.0, 7, True)])
def test_blur_ig_equals_pair_saliency(relu_net, batch, max_sigma, steps, sqrt) -> None:
    """PAIR's ``saliency.core.BlurIG`` (numpy, channel-last, one image at a time, its model batch of 1 so every
    point has its own sigma step), with the model's logit gradients."""
    saliency_core = pytest.importorskip("saliency.core")
    from scipy import ndimage

    from impactx.attribution.blur_ig import scipy_gaussian_blur

    x, t = batch
    image = x[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(scipy_gaussian_blur(x[:1], 1.7)[0].permute(1, 2, 0).numpy(),
                               ndimage.gaussian_filter(image, sigma=[1.7, 1.7, 0], mode="constant"), atol=1e-12)

    def call_model(points, call_model_args=None, expected_keys=None):
        inputs = torch.as_tensor(points).permute(0, 3, 1, 2).requires_grad_(True)
        scores = relu_net(inputs)[:, call_model_args["target"]].sum()
        (grad,) = torch.autograd.grad(scores, inputs)
        return {saliency_core.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}

    ours = attribute("blur_ig", relu_net, x, t, max_sigma=max_sigma, steps=steps, sqrt=sqrt, internal_batch_size=7)
    for i in range(x.shape[0]):
        expected = saliency_core.BlurIG().GetMask(x[i].permute(1, 2, 0).numpy(), call_model,
                                                  call_model_args={"target": int(t[i])}, max_sigma=max_sigma,
                                                  steps=steps, sqrt=sqrt, batch_size=1)
        np.testing.assert_allclose(ours[i].permute(1, 2, 0).numpy(), expected, atol=1e-10, rtol=1e-8)


def test_idgi_is_complete_and_equals_its_definition_written_as_a_loop(relu_net, batch) -> None:
    x, t = batch
    baseline = torch.full((3, 12, 12), -0.2, dtype=torch.float64)
    ours = attribute("idgi", relu_net, x, t, n_steps=9, baseline=baseline, internal_batch_size=11)
    with torch.no_grad():
        gap = relu_net(x).gather(1, t[:, None])[:, 0] - relu_net(baseline.expand_as(x)).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(ours.flatten(1).sum(dim=1), gap, atol=1e-10, rtol=0)  # exactly complete
    for i in range(x.shape[0]):
        expected = torch.zeros_like(x[i])
        for j in range(9):
            point = (baseline + j / 9 * (x[i] - baseline)).unsqueeze(0).requires_grad_(True)
            score = relu_net(point)[0, t[i]]
            (grad,) = torch.autograd.grad(score, point)
            with torch.no_grad():
                following = relu_net((baseline + (j + 1) / 9 * (x[i] - baseline)).unsqueeze(0))[0, t[i]]
            expected += (grad[0] ** 2 / (grad ** 2).sum()) * (following - score.detach())
        torch.testing.assert_close(ours[i], expected, atol=1e-12, rtol=1e-9)


def test_idgi_of_a_linear_model_follows_the_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double().eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 1])
    w = model[1].weight[t].detach().view(3, 1, 4, 4)
    gap = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None]).view(3, 1, 1, 1).detach()
    expected = w**2 / (w**2).flatten(1).sum(dim=1).view(3, 1, 1, 1) * gap
    torch.testing.assert_close(attribute("idgi", model, x, t, n_steps=4), expected)


def test_fullgrad_equals_pytorch_grad_cam_with_batchnorm_biases() -> None:
    """pytorch-grad-cam's FullGrad (input term and every Conv2d/BatchNorm2d bias term, each channel min-max scaled
    and resized, the sum scaled again), on a net whose BatchNorm has non-trivial running statistics."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = ReluNet()
    model.features.insert(1, nn.BatchNorm2d(8))
    with torch.no_grad():
        bn = model.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    model.eval()
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2, 4])
    with pytorch_grad_cam.FullGrad(model=model, target_layers=[]) as cam:
        expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])
    ours = attribute("fullgrad", model, x, t, reduce_channels=True)[:, 0]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-6)
    assert float(np.ptp(expected)) > 0.5


def test_noisegrad_on_a_linear_model_is_the_mean_noisy_weight_row() -> None:
    """f(x) = W x: the gradient on a noisy copy is that copy's row of W, so NoiseGrad is their mean; with std 0 it
    is the plain method, and FusionGrad of a linear model (gradients independent of the input) is NoiseGrad."""
    from impactx.attribution.noisegrad import noisy_models

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False)).double().eval()
    trained = model[1].weight.detach().clone()
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1])
    rows = torch.stack([m[1].weight[t].detach() for m in noisy_models(model, 5, 0.3, 2)]).mean(dim=0)
    got = attribute("noisegrad", model, x, t, method="gradient", n_models=5, std=0.3, seed=2)
    torch.testing.assert_close(got, rows.view(4, 1, 4, 4))
    assert not torch.allclose(got, attribute("gradient", model, x, t))
    torch.testing.assert_close(attribute("noisegrad", model, x, t, method="gradient", n_models=3, std=0.0),
                               attribute("gradient", model, x, t))
    fusion = attribute("fusiongrad", model, x, t, method="gradient", n_models=5, std=0.3, n_samples=3, seed=2)
    torch.testing.assert_close(fusion, got)
    copies = list(noisy_models(model, 2, 0.3, 2))
    assert not torch.equal(copies[0][1].weight, copies[1][1].weight)
    assert torch.equal(model[1].weight, trained)  # the model itself is untouched


def _path_explain_torch():
    """The authors' PyTorch explainer; its package ``__init__`` imports TensorFlow, so the file is loaded alone."""
    import importlib.util

    spec = importlib.util.find_spec("path_explain")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("path-explain is not installed")
    path = f"{list(spec.submodule_search_locations)[0]}/explainers/path_explainer_torch.py"
    module_spec = importlib.util.spec_from_file_location("path_explainer_torch", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.PathExplainerTorch


def test_integrated_hessians_equal_path_explain() -> None:
    """Janizek et al.'s own PyTorch code (``PathExplainerTorch.interactions``, IG of IG on a straight path, tabular
    inputs only): impactx's pairs equal its matrix entries and the per-feature sums equal its row sums, on a smooth
    network where the Hessian is not zero."""
    from impactx.attribution.hessians import interaction_pairs

    explainer_cls = _path_explain_torch()
    torch.manual_seed(0)
    tabular = nn.Sequential(nn.Linear(6, 8), nn.Softplus(), nn.Linear(8, 3)).double().eval()
    image_model = nn.Sequential(nn.Flatten(), tabular).eval()
    image_model.num_classes = 3
    x = torch.randn(4, 6, dtype=torch.float64)
    baseline = torch.zeros(1, 6, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1])
    n = 5
    matrix = explainer_cls(tabular).interactions(x.clone().requires_grad_(True), baseline, num_samples=n * n,
                                                 use_expectation=False, output_indices=t, verbose=False)
    images = x.view(4, 1, 2, 3)
    pairs = [(0, 0), (0, 3), (2, 5), (5, 2), (4, 4)]
    ours = interaction_pairs(image_model, images, t, pairs, n_steps=n)
    expected = torch.stack([matrix[:, i, j] for i, j in pairs], dim=1).to(ours)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    sums = attribute("integrated_hessians", image_model, images, t, n_steps=n)
    torch.testing.assert_close(sums.view(4, 6), matrix.sum(dim=2).to(sums), atol=1e-6, rtol=1e-5)
    assert float(matrix[:, 0, 3].abs().max()) > 1e-4  # real off-diagonal interactions
    ig = attribute("ig", image_model, images, t, n_steps=64)
    fine = attribute("integrated_hessians", image_model, images, t, n_steps=24)
    torch.testing.assert_close(fine, ig, atol=0.05 * float(ig.abs().max()), rtol=0)  # completeness, in the limit


def test_integrated_hessians_take_channels_last_images() -> None:
    """A channels-last batch (what PAIR-style callers and ``channels_last`` modules hand over) gives the pairs and
    sums of the same images in the default layout; its gradients come back channels-last, which a ``view`` refused."""
    from impactx.attribution.hessians import interaction_pairs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double().eval()
    model.num_classes = 3
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    last = x.contiguous(memory_format=torch.channels_last)
    t = torch.tensor([0, 2])
    pairs = [(0, 5), (7, 40), (100, 100)]
    torch.testing.assert_close(interaction_pairs(model, last, t, pairs, n_steps=4),
                               interaction_pairs(model, x, t, pairs, n_steps=4))
    torch.testing.assert_close(attribute("integrated_hessians", model, last, t, n_steps=4),
                               attribute("integrated_hessians", model, x, t, n_steps=4))


@pytest.mark.parametrize("eps", [0.2, 3.0])
def test_agi_equals_the_papers_algorithm_written_as_a_loop(relu_net, batch, eps) -> None:
    """Algorithm 1 of Pan et al. per image and false class: signed ascent on p_k, stop when k is predicted,
    accumulate -grad p_y * step; the authors' selected classes range(0, K - 1, K // n). Paths reach their class at
    different iterations (the batch keeps walking the others)."""
    from impactx.attribution.agi import false_classes

    x, t = batch
    iters, n = 6, 3
    stopped = 0
    ours = attribute("agi", relu_net, x, t, eps=eps, max_iter=iters, n_classes=n)
    with torch.no_grad():
        predicted = relu_net(x).argmax(dim=1)
    assert false_classes(5, 3) == [0, 1, 2]
    for i in range(x.shape[0]):
        expected = torch.zeros_like(x[i])
        for k in false_classes(5, n):
            if k == int(predicted[i]):
                continue
            point = x[i:i + 1].clone()
            for _ in range(iters):
                point.requires_grad_(True)
                out = relu_net(point)
                if int(out.argmax(dim=1)) == k:
                    stopped += 1
                    break
                probabilities = out.softmax(dim=1)
                (grad_adv,) = torch.autograd.grad(probabilities[0, k], point, retain_graph=True)
                (grad_lab,) = torch.autograd.grad(probabilities[0, t[i]], point)
                step = eps * grad_adv.sign()
                expected -= (grad_lab * step)[0]
                point = (point + step).detach()
        torch.testing.assert_close(ours[i], expected, atol=1e-12, rtol=1e-9)
    assert float(ours.abs().max()) > 0
    assert stopped > 0  # some paths reach their class early, while others walk on


def test_boundary_ig_is_ig_from_a_point_across_the_boundary(relu_net, batch) -> None:
    from impactx.attribution import create_explainer

    x, t = batch
    with torch.no_grad():
        t = relu_net(x).argmax(dim=1)
    big = create_explainer("boundary_ig", radius=1.0, steps=30, n_steps=16)
    points = big.boundary_points(relu_net, x, t)
    with torch.no_grad():
        crossed = relu_net(points).argmax(dim=1) != t
    assert bool(crossed.all()) and float((points - x).abs().max()) <= 1.0 + 1e-12
    maps = big(relu_net, x, t)
    ig = attribute("ig", relu_net, x, t, n_steps=16, baseline=points)
    torch.testing.assert_close(maps, ig, atol=1e-12, rtol=1e-9)
    with torch.no_grad():
        gap = relu_net(x).gather(1, t[:, None])[:, 0] - relu_net(points).gather(1, t[:, None])[:, 0]
    assert float((maps.flatten(1).sum(dim=1) - gap).abs().max()) < 0.1 * float(gap.abs().max())


@pytest.mark.parametrize("name", ["idgi", "blur_ig"])
def test_path_points_keep_a_channels_last_layout_and_the_maps(relu_net, batch, name) -> None:
    from impactx.attribution.gradients import in_layout_of

    x, t = batch
    last = x.contiguous(memory_format=torch.channels_last)
    assert in_layout_of(x.repeat(2, 1, 1, 1), last).is_contiguous(memory_format=torch.channels_last)
    assert in_layout_of(x.repeat(2, 1, 1, 1), x).is_contiguous()
    options = {"n_steps": 6} if name == "idgi" else {"steps": 6, "max_sigma": 3.0}
    torch.testing.assert_close(attribute(name, relu_net, last, t, **options), attribute(name, relu_net, x, t, **options),
                               atol=1e-12, rtol=1e-9)
