"""Weighted Integrated Gradients: the fitness search against closed forms and brute force, the weights,
generalised completeness, and the neutral values."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from impactx.attribution import create_explainer
from impactx.attribution.neutral import corner_mean, neutral_images
from impactx.attribution.wg import WeightedIntegratedGradients, fitness_counts, fitness_weights, mask_top


class TemplateNet(nn.Module):
    """``logit_k = scale * <tanh(x), T_k>``: confident on images near a template, so masking the pixels a
    good baseline ranks first halves the probability after a varying number of pixels."""

    def __init__(self, templates: torch.Tensor, scale: float = 0.3) -> None:
        super().__init__()
        self.templates = nn.Parameter(templates)
        self.scale = scale
        self.num_classes = templates.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.einsum("bchw,kchw->bk", torch.tanh(x), self.templates)


class PositiveNet(nn.Module):
    """Two classes; ``logit_1 = a * sum softplus(conv(x)) - c`` with positive conv weights, ``logit_0 = 0``.
    For non-negative inputs and a zero neutral value, masking any pixel lowers ``p_1``: the score is
    monotone in the number of masked pixels, whatever their order."""

    num_classes = 2

    def __init__(self, a: float, c: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1, bias=False).double()
        with torch.no_grad():
            self.conv.weight.abs_()
        self.a, self.c = a, c

    def evidence(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.conv(x)).sum(dim=(1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.a * self.evidence(x) - self.c
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


@pytest.fixture
def template_case(images):
    gen = torch.Generator().manual_seed(0)
    templates = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    x = templates[target] + 0.5 * images(4, 1, 8, seed=1)
    return TemplateNet(templates).eval(), x, target, images(16, 1, 8, seed=2)


def _masked_scores_all_counts(model, x, target, attributions, neutral, output):
    """Brute force: the score with the top-m pixels neutral, for every m in [0, d] -> ``[N, d + 1]``."""
    n, d = x.shape[0], x.shape[-2] * x.shape[-1]
    order = torch.argsort(attributions.sum(dim=1).flatten(1), dim=1, descending=True, stable=True)
    rows = []
    for i in range(n):
        candidates = x[i].expand(d + 1, *x.shape[1:]).clone()
        for m in range(1, d + 1):
            pixels = order[i, :m]
            flat = candidates[m].view(x.shape[1], -1)
            flat[:, pixels] = neutral[i].view(x.shape[1], -1)[:, pixels]
        with torch.no_grad():
            logits = model(candidates)
        scores = {"logit": logits, "prob": logits.softmax(1), "log_prob": logits.log_softmax(1)}[output]
        rows.append(scores[:, target[i]])
    return torch.stack(rows)


def _brute_force_counts(table, alpha, epsilon):
    """Smallest m with score_m <= alpha * score_0 + epsilon (d when none), by a linear scan."""
    d = table.shape[1] - 1
    counts = []
    for row in table:
        threshold = alpha * row[0] + epsilon
        counts.append(next((m for m in range(d + 1) if row[m] <= threshold), d))
    return torch.tensor(counts)


class _Linear2(nn.Module):
    """``logit_1 = <w, x> + b``, ``logit_0 = 0``."""

    num_classes = 2

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        logit = (x * self.w).sum(dim=(1, 2, 3)) + self.b
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


@pytest.mark.parametrize(
    "case, expected_kind",
    [("plain", "middle"), ("negative", "zero"), ("dominant", "one"), ("unreachable", "all")],
)
def test_fitness_count_closed_form_on_linear_model(case, expected_kind):
    """For f = <w, x> + b with positive contributions c_i = w_i x_i and zero neutral value, masking the top m
    pixels leaves f_0 - (sum of the m largest c_i): D is read off a sorted cumulative sum."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 4, 4, generator=gen, dtype=torch.float64) + 0.1
    w = torch.rand(1, 1, 4, 4, generator=gen, dtype=torch.float64) + 0.1
    if case == "dominant":
        w[0, 0, 2, 1] = 100.0
    contributions = (w * x).flatten()
    total = contributions.sum().item()
    b = {"plain": 0.0, "negative": -total - 1.0, "dominant": 0.0, "unreachable": 10 * total}[case]
    model = _Linear2(w, b)
    alpha, epsilon = 0.5, 0.01
    f0 = total + b
    f_m = f0 - torch.cat(
        [torch.zeros(1, dtype=torch.float64), contributions.sort(descending=True).values.cumsum(0)]
    )
    reached = (f_m <= alpha * f0 + epsilon).nonzero()
    expected = int(reached[0]) if len(reached) else 16
    counts, _ = fitness_counts(
        model, x, torch.ones(1, dtype=torch.long), w * x, torch.zeros_like(x), alpha, epsilon, output="logit"
    )
    assert int(counts[0]) == expected
    assert {"middle": 1 < expected < 16, "zero": expected == 0, "one": expected == 1, "all": expected == 16}[
        expected_kind
    ]


def test_bisection_matches_brute_force_on_monotone_model(images):
    x = images(6, 1, 6, seed=4).abs()
    probe = PositiveNet(1.0, 0.0)
    with torch.no_grad():
        full, empty = probe.evidence(x).mean().item(), probe.evidence(torch.zeros_like(x)).mean().item()
    a = 8.0 / (full - empty)  # p_1 ~ 0.98 on the images, ~0.02 when everything is masked
    model = PositiveNet(a, a * empty + 4.0)
    target = torch.ones(6, dtype=torch.long)
    ig = create_explainer("ig", baseline=images(6, 1, 6, seed=5), n_steps=8)(model, x, target)
    neutral = torch.zeros_like(x)
    counts, _ = fitness_counts(model, x, target, ig, neutral, 0.5, 0.01, output="prob")
    table = _masked_scores_all_counts(model, x, target, ig, neutral, "prob")
    assert (table[:, 1:] <= table[:, :-1] + 1e-12).all()  # monotone, as designed
    expected = _brute_force_counts(table, 0.5, 0.01)
    assert torch.equal(counts, expected)
    assert (expected > 1).all() and (expected < 36).all()  # the search had to work for it


def test_bisection_lands_on_a_crossing_on_any_model(template_case):
    model, x, target, background = template_case
    ig = create_explainer("ig", baseline=background[:4], n_steps=8)(model, x, target)
    neutral = neutral_images(x, "corners")
    counts, _ = fitness_counts(model, x, target, ig, neutral, 0.5, 0.01, output="prob")
    table = _masked_scores_all_counts(model, x, target, ig, neutral, "prob")
    reached = table <= 0.5 * table[:, :1] + 0.01
    d = table.shape[1] - 1
    for row, m in zip(reached, counts.tolist(), strict=True):
        assert m == d or row[m], "the returned count must reach the target (or be d)"
        assert m == 0 or not row[m - 1], "one pixel fewer must not reach it"


class _CountingModel(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.batch_sizes: list[int] = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return self.model(x)


def test_search_takes_log2_d_batched_forwards(images):
    gen = torch.Generator().manual_seed(0)
    templates = torch.randn(3, 1, 16, 16, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1])
    x = templates[target] + 0.5 * images(5, 1, 16, seed=9)
    model = _CountingModel(TemplateNet(templates, scale=0.15))
    ig = create_explainer("ig", n_steps=4)(model.model, x, target)
    counts, iterations = fitness_counts(model, x, target, ig, torch.zeros_like(x), output="prob")
    d = 256
    assert math.floor(math.log2(d + 1)) <= iterations <= math.ceil(math.log2(d + 1))
    assert model.batch_sizes == [5] * (iterations + 1)  # f(x), then one forward of all rows per step
    assert ((counts > 0) & (counts < d)).any()


def test_count_zero_masks_nothing_and_count_d_masks_everything(images):
    x, neutral = images(2, 3, 5, seed=1), images(2, 3, 5, seed=2)
    ranks = torch.randperm(25).expand(2, 25)
    assert torch.equal(mask_top(x, neutral, ranks, torch.zeros(2, dtype=torch.long)), x)
    assert torch.equal(mask_top(x, neutral, ranks, torch.full((2,), 25)), neutral)
    one = mask_top(x, neutral, ranks, torch.ones(2, dtype=torch.long))
    changed = (one != x).any(dim=1)  # [2, 5, 5]
    assert changed.flatten(1).sum(dim=1).tolist() == [1, 1]
    assert changed.flatten(1)[:, int((ranks[0] == 0).nonzero())].all()


def test_already_low_score_gives_zero_counts_and_uniform_weights(template_case):
    """Explaining a class the model gives ~0 probability: the unmasked image already sits at the target,
    D = 0 for every baseline (not d, as a search that masks everything at 0 would give), and the weights
    fall back to uniform instead of dividing by zero."""
    model, x, target, background = template_case
    wrong = (target + 1) % 3
    result = WeightedIntegratedGradients(background=background, n_baselines=4, n_steps=8, seed=0).result(
        model, x, wrong
    )
    assert (result.counts == 0).all()
    torch.testing.assert_close(result.weights, torch.full((4, 4), 0.25, dtype=torch.float64))
    torch.testing.assert_close(result.attributions, result.per_baseline.mean(dim=1))


def test_weights_per_baseline_ig_and_generalised_completeness(template_case):
    model, x, target, background = template_case
    n_steps = 32
    result = WeightedIntegratedGradients(
        background=background, n_baselines=6, n_steps=n_steps, seed=0
    ).result(model, x, target)
    # the weights are normalised inverse fitness counts, and they differ between baselines here
    inverse = 1.0 / result.counts.clamp_min(1).double()
    torch.testing.assert_close(result.weights, inverse / inverse.sum(dim=1, keepdim=True))
    assert (result.weights.std(dim=1) > 0.01).any()
    # each per-baseline term is plain IG from that baseline
    for k in range(6):
        ig = create_explainer("ig", baseline=result.baselines[:, k], n_steps=n_steps, method="gausslegendre")
        torch.testing.assert_close(result.per_baseline[:, k], ig(model, x, target))
    torch.testing.assert_close(
        result.attributions, (result.weights.view(4, 6, 1, 1, 1) * result.per_baseline).sum(dim=1)
    )
    # sum WG = f(x) - sum_k w_k f(x^(k))
    with torch.no_grad():
        fx = model(x).gather(1, target.view(-1, 1)).squeeze(1)
        fb = (
            model(result.baselines.flatten(0, 1))
            .view(4, 6, -1)
            .gather(2, target.view(-1, 1, 1).expand(4, 6, 1))
        )
    expected = fx - (result.weights * fb.squeeze(2)).sum(dim=1)
    assert ((result.attributions.sum(dim=(1, 2, 3)) - expected).abs() <= 0.01 * fx.abs()).all()


def test_filtered_wg_drops_highest_counts(template_case):
    model, x, target, background = template_case
    options = dict(background=background, n_baselines=6, n_steps=8, seed=0)
    full = WeightedIntegratedGradients(**options).result(model, x, target)
    filtered = WeightedIntegratedGradients(drop_lowest=2, **options).result(model, x, target)
    assert torch.equal(full.counts, filtered.counts)
    assert ((filtered.weights == 0).sum(dim=1) == 2).all()
    kept = filtered.weights > 0
    for row in range(4):
        assert full.counts[row][kept[row]].max() <= full.counts[row][~kept[row]].min()
        inverse = 1.0 / full.counts[row][kept[row]].clamp_min(1).double()
        torch.testing.assert_close(filtered.weights[row][kept[row]], inverse / inverse.sum())
    best_only = WeightedIntegratedGradients(drop_lowest=5, **options).result(model, x, target)
    best = best_only.weights.argmax(dim=1)
    torch.testing.assert_close(best_only.attributions, best_only.per_baseline[torch.arange(4), best])
    with pytest.raises(ValueError, match="drop_lowest"):
        WeightedIntegratedGradients(drop_lowest=6, **options)
    with pytest.raises(ValueError, match="drop_lowest"):
        fitness_weights(torch.ones(2, 3, dtype=torch.long), drop_lowest=3)


def test_baselines_fixed_or_distinct_draws(template_case):
    model, x, target, background = template_case
    fixed = background[:3]
    result = WeightedIntegratedGradients(baselines=fixed, n_steps=4).result(model, x, target)
    assert torch.equal(result.baselines, fixed.expand(4, 3, 1, 8, 8))
    drawn = WeightedIntegratedGradients(background=background, n_baselines=5, n_steps=4, seed=1).result(
        model, x, target
    )
    same = (drawn.baselines.flatten(2)[:, :, None] == background.flatten(1)[None, None]).all(dim=3)  # [B,K,N]
    assert (same.sum(dim=2) == 1).all()  # every baseline is a background image
    assert (same.any(dim=1).sum(dim=1) == 5).all()  # and the 5 of each image are distinct
    with pytest.raises(ValueError, match="n_baselines=17"):
        WeightedIntegratedGradients(background=background, n_baselines=17)(model, x, target)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"alpha": 1.0}, "alpha"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"neutral": "mean"}, "neutral must be one of"),
        ({"n_baselines": 0}, "n_baselines"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"fitness_output": "softmax"}, "output must be one of"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        WeightedIntegratedGradients(**options)


# -- neutral values -------------------------------------------------------------------------------------


def test_neutral_zeros_and_corners(images):
    x = images(2, 3, 10, seed=3)
    assert torch.equal(neutral_images(x, "zeros"), torch.zeros_like(x))
    s = 2
    corners = torch.cat([x[..., :s, :s], x[..., :s, -s:], x[..., -s:, :s], x[..., -s:, -s:]], dim=-1)
    expected = corners.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(corner_mean(x, s), expected)
    torch.testing.assert_close(neutral_images(x, "corners", corner_size=s), expected.expand_as(x))
    torch.testing.assert_close(corner_mean(x), corner_mean(x, 1))  # default: min(H, W) // 8 = 1
    with pytest.raises(ValueError, match="corner_size"):
        corner_mean(x, 11)


@pytest.mark.parametrize("sigma", [0.7, 1.5])
def test_neutral_blur_matches_torchvision(images, sigma):
    x = images(2, 3, 12, seed=4)
    radius = math.ceil(3 * sigma)
    expected = TF.gaussian_blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    torch.testing.assert_close(neutral_images(x, "blur", blur_sigma=sigma), expected)


def test_neutral_blur_wide_kernel_flattens_image(images):
    x = images(1, 1, 6, seed=5)
    blurred = neutral_images(x, "blur", blur_sigma=100.0)
    assert blurred.shape == x.shape and blurred.std() < 0.5 * x.std()
    with pytest.raises(ValueError, match="sigma"):
        neutral_images(x, "blur", blur_sigma=0.0)
    with pytest.raises(ValueError, match="neutral must be one of"):
        neutral_images(x, "noise")
