"""ADVISE: its kernel density against a numpy transcription of the authors' MATLAB on fixed data, its peak count
against scipy, and the whole method on a model whose relevant channel is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from advise_reference import advise_kernel
from scipy.signal import find_peaks
from torch import nn

from impactx.attribution import attribute, create_explainer
from impactx.attribution.adaptive_kde import adaptive_kde, count_peaks
from impactx.attribution.advise import class_sensitivity, xai_value
from impactx.metrics.functional.localisation import pointing_game, relevance_mass_accuracy


def _sets(n: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.beta(2, 5, n),  # one mode
        np.concatenate([rng.normal(0.2, 0.05, n // 2), rng.normal(0.7, 0.08, n // 2)]),  # two modes
        rng.uniform(-0.5, 1.5, n),  # partly outside [0, 1]: those samples are left out
        np.round(rng.uniform(0, 1, n), 1),  # coarse values: a coarser grid than tin
        np.maximum(rng.normal(0, 0.3, n), 0),  # a ReLU channel: many exact zeros
        np.concatenate([rng.normal(0.15, 0.03, 20), rng.normal(0.5, 0.03, 24), rng.normal(0.85, 0.03, 20)]),
        np.full(n, 0.3),  # constant
        np.full(n, 2.0),  # nothing inside [0, 1]: NaN in both
    ]


def test_kernel_density_equals_the_matlab_transcription() -> None:
    sets = _sets()
    grid = np.linspace(0, 1, 64)
    density, ok = adaptive_kde(torch.tensor(np.stack(sets)), torch.tensor(grid))
    for i, samples in enumerate(sets):
        expected = advise_kernel(samples, grid)
        assert expected is not None and bool(ok[i])
        if np.isnan(expected).all():
            assert torch.isnan(density[i]).all()
            continue
        np.testing.assert_allclose(density[i].numpy(), expected, atol=1e-10, rtol=1e-9)
        assert int(count_peaks(density[i:i + 1])[0]) == len(find_peaks(expected)[0])
    peaks = count_peaks(density)
    assert peaks[0] == 1 and peaks[1] == 2 and peaks[5] == 3 and peaks[7] == 0


def test_kernel_density_of_other_grid_sizes() -> None:
    rng = np.random.default_rng(1)
    samples = rng.beta(3, 3, (3, 16))
    grid = np.linspace(0, 1, 16)
    density, _ = adaptive_kde(torch.tensor(samples), torch.tensor(grid), n_bandwidths=6)
    for i in range(3):
        np.testing.assert_allclose(density[i].numpy(), advise_kernel(samples[i], grid, m=6), atol=1e-10, rtol=1e-9)


def test_peak_count_equals_scipy_with_plateaus() -> None:
    rng = np.random.default_rng(2)
    rows = np.round(rng.normal(size=(50, 30)), 0)  # many ties and flat runs
    expected = [len(find_peaks(r)[0]) for r in rows]
    assert count_peaks(torch.tensor(rows)).tolist() == expected


class KnownChannels(nn.Module):
    """``x [B,1,16,16]`` -> three classes. Layer ``body.2`` has four channels: 0 is the image (a bright square
    on a dark background, both slightly noisy: two activation levels, two density peaks), 1-3 fixed fields of
    one level (one peak). Class 0 reads channel 0 and, more weakly, the distractor channel 1."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 4, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0] = 1.0
        # Channels 1-3: the 256 quantiles of a normal distribution in a fixed random spatial order (one smooth
        # activation level: one density peak).
        quantiles = torch.special.ndtri((torch.arange(256) + 0.5) / 256)
        generator = torch.Generator().manual_seed(0)
        noise = torch.zeros(1, 4, 16, 16)
        for k in range(1, 4):
            noise[0, k] = 3.0 + quantiles[torch.randperm(256, generator=generator)].view(16, 16)
        self.register_buffer("noise", noise)
        self.body = nn.Sequential(conv, _Add(self.noise), nn.ReLU())
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[4.0, 0.3, 0.0, 0.0], [0.0, 0.0, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


class _Add(nn.Module):
    def __init__(self, pattern: torch.Tensor) -> None:
        super().__init__()
        self.pattern = pattern

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pattern


def _levels(n: int, centre: float, spread: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` values whose histogram is a smooth normal bump: its quantiles, in a random order."""
    quantiles = torch.special.ndtri((torch.arange(n) + 0.5) / n)
    return centre + spread * quantiles[torch.randperm(n, generator=generator)]


def _objects(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright 6x6 square at a random place on a dark background, both one smooth level of grey."""
    gen = torch.Generator().manual_seed(3)
    images = torch.zeros(n, 1, 16, 16)
    masks = torch.zeros(n, 1, 16, 16, dtype=torch.bool)
    for i in range(n):
        top, left = (int(v) for v in torch.randint(0, 10, (2,), generator=gen))
        masks[i, :, top:top + 6, left:left + 6] = True
        inside = masks[i, 0]
        images[i, 0][~inside] = _levels(int((~inside).sum()), 0.2, 0.02, gen)
        images[i, 0][inside] = _levels(36, 0.8, 0.02, gen)
    return images, masks


def test_advise_picks_the_known_channel_and_localises_better_than_gradcam() -> None:
    model = KnownChannels().eval()
    images, masks = _objects(4)
    target = model(images).argmax(dim=1)
    assert (target == 0).all()
    explainer = create_explainer("advise", layer="body.2")
    maps = explainer(model, images, target)
    details = explainer.last_details
    assert (details.peaks[:, 0] == 2).all() and (details.peaks[:, 1:] == 1).all()
    chosen_groups = details.groups[details.chosen]
    assert (chosen_groups == 2).all()  # the object channel's group
    assert (pointing_game(maps, masks) == 1).all()
    advise_mass = relevance_mass_accuracy(maps, masks)
    gradcam_mass = relevance_mass_accuracy(attribute("gradcam", model, images, target, layer="body.2"), masks)
    # The background is a level of its own (0.2 of the object), so some mass stays there; Grad-CAM over all
    # channels adds the distractor channel, spread over the whole image.
    assert (advise_mass > 0.6).all() and (advise_mass > 2 * gradcam_mass).all()


def test_advise_contract_and_scores() -> None:
    model = KnownChannels().eval()
    images, _ = _objects(3)
    target = torch.tensor([0, 1, 0])  # another class than the prediction works too
    maps = attribute("advise", model, images, target, layer="body.2", reduce_channels=True)
    assert maps.shape == (3, 1, 16, 16) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    one = attribute("advise", model, images[1:2], target[1:2], layer="body.2", reduce_channels=True)
    torch.testing.assert_close(one, maps[1:2], atol=1e-6, rtol=0)  # batch invariant
    with pytest.raises(ValueError, match="mean and std"):
        create_explainer("advise", mean=(0.5,))


def test_class_sensitivity_and_xai_value_closed_forms() -> None:
    a = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(class_sensitivity(a, a), torch.ones(2))
    torch.testing.assert_close(class_sensitivity(a, 1 - a), -torch.ones(2))
    assert float(class_sensitivity(a, torch.zeros_like(a))[0]) == 0.0  # undefined -> 0, as the code
    perfect = xai_value(torch.ones(1), torch.ones(1), torch.zeros(1), torch.zeros(1))
    assert float(perfect) == pytest.approx(1.0)
    assert float(xai_value(torch.tensor([0.5]), torch.ones(1), torch.zeros(1), torch.zeros(1))) == pytest.approx(0.8)


def test_advise_scores_as_metrics() -> None:
    """ClassSensitivity is numpy's Pearson correlation of the two classes' maps; XAIValue of a map that keeps all
    but one pixel is nearly 1 (SSIM = FSIM = 1, MSE = average drop = 0 for the whole image)."""
    from impactx.metrics import ClassSensitivity, XAIValue

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 4)).eval()
    images = torch.rand(5, 1, 16, 16)
    targets = model(images).argmax(dim=1)

    def rows(m, x, y):
        return m[1].weight[y].detach().view(-1, 1, 16, 16) * x

    metric = ClassSensitivity(rows)
    metric.update(model, images, targets)
    others = model(images).softmax(dim=1).scatter(1, targets.view(-1, 1), -1.0).argmax(dim=1)
    first, second = rows(model, images, targets), rows(model, images, others)
    expected = np.mean([np.corrcoef(first[i].flatten().numpy(), second[i].flatten().numpy())[0, 1] for i in range(5)])
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-5)

    def keep_all_but_a_corner(m, x, y):
        maps = torch.ones_like(x)
        maps[..., 0, 0] = 0.0  # min-max scaling leaves it as it is: the image minus one pixel
        return maps

    whole = XAIValue(keep_all_but_a_corner)
    whole.update(model, images, targets)
    assert float(whole.compute()) > 0.95
    with pytest.raises(ValueError, match="mean and std"):
        XAIValue(rows, mean=(0.5,))
