"""The torchmetrics classes: accumulating several ``update`` calls (and ``forward``) equals the functional core
on the concatenated batch; declared attributes; constructor errors; the docstring examples."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from metrics_helpers import batch, saliency, tiny_cnn

import impactx.metrics as M
from impactx.metrics import functional as F

N_IMG = 5


def _data():
    images, targets, maps = batch(N_IMG, 1, 8)
    masks = torch.zeros(N_IMG, 1, 8, 8)
    masks[:, :, 2:6, 1:5] = 1
    masks[3] = 0  # one image without object: skipped by OverlapAUC
    return images, targets, maps, masks


def _mean_rows(values: torch.Tensor) -> torch.Tensor:
    return values[~torch.isnan(values).reshape(values.shape[0], -1).any(1)].mean(0)


# (metric factory, update-args builder, expected value from the functional core on the whole batch)
CASES = {
    "morf": (
        lambda m: M.MoRF(patch_size=2, n_steps=6, perturbation={"seed": 1}),
        lambda m, x, y, a, s: (m, x, y, a),
        lambda m, x, y, a, s: {
            "curve": (c := F.morf_curve(m, x, y, a, patch_size=2, n_steps=6, perturbation={"seed": 1}).mean(0)),
            "aopc": F.aopc(c),
        },
    ),
    "lerf": (
        lambda m: M.LeRF(patch_size=4, n_steps=3, perturbation={"replacement": "blur"}),
        lambda m, x, y, a, s: (m, x, y, a),
        lambda m, x, y, a, s: {
            "curve": (c := F.lerf_curve(m, x, y, a, patch_size=4, n_steps=3, perturbation=F.Perturbation("blur")).mean(0)),
            "aopc": F.aopc(c),
        },
    ),
    "deletion": (
        lambda m: M.DeletionAUC(n_steps=8),
        lambda m, x, y, a, s: (m, x, y, a),
        lambda m, x, y, a, s: {
            "curve": (c := F.deletion_curve(m, x, y, a, n_steps=8).mean(0)),
            "auc": F.riemann_auc(c),
        },
    ),
    "insertion": (
        lambda m: M.InsertionAUC(n_steps=8, perturbation={"replacement": "uniform", "seed": 4}),
        lambda m, x, y, a, s: (m, x, y, a),
        lambda m, x, y, a, s: {
            "curve": (c := F.insertion_curve(m, x, y, a, n_steps=8, perturbation={"replacement": "uniform", "seed": 4}).mean(0)),
            "auc": F.riemann_auc(c),
        },
    ),
    **{
        v: (
            lambda m, cls=cls: cls(n_steps=5),
            lambda m, x, y, a, s: (m, x, y, a),
            lambda m, x, y, a, s, v=v: {
                "curve": (c := F.keep_remove_curve(m, x, y, a, variant=v, n_steps=5).mean(0)),
                "auc": F.trapezoid_auc(c),
            },
        )
        for v, cls in [
            ("kpm", M.KPM),
            ("knm", M.KNM),
            ("kam", M.KAM),
            ("rpm", M.RPM),
            ("rnm", M.RNM),
            ("ram", M.RAM),
        ]
    },
    "overlap": (
        lambda m: M.OverlapAUC(n_steps=10),
        lambda m, x, y, a, s: (a, s),
        lambda m, x, y, a, s: {
            "curve": (c := _mean_rows(F.overlap_curve(a, s, 10))),
            "auc": F.overlap_auc(c),
        },
    ),
    "drop": (
        lambda m: M.AverageDrop(),
        lambda m, x, y, a, s: (m, x, y, a),
        lambda m, x, y, a, s: F.average_drop(m, x, y, a).mean(),
    ),
    "increase": (
        lambda m: M.IncreaseInConfidence(),
        lambda m, x, y, a, s: (m, x, y, a),
        lambda m, x, y, a, s: F.increase_in_confidence(m, x, y, a).mean(),
    ),
    "sparseness": (
        lambda m: M.Sparseness(),
        lambda m, x, y, a, s: (a,),
        lambda m, x, y, a, s: F.sparseness(a).mean(),
    ),
    "max_sensitivity": (
        lambda m: M.MaxSensitivity(saliency, radius=0.05, n_samples=3, seed=2),
        lambda m, x, y, a, s: (m, x, y),
        lambda m, x, y, a, s: F.max_sensitivity(m, x, y, saliency, radius=0.05, n_samples=3, seed=2).mean(),
    ),
    "randomisation": (
        lambda m: M.ModelParameterRandomisation(m, saliency, seed=1),
        lambda m, x, y, a, s: (m, x, y),
        lambda m, x, y, a, s: {"curve": F.model_randomisation(m, x, y, saliency, seed=1)[0].mean(0)},
    ),
    "noise_accuracy": (
        lambda m: M.NoiseAccuracy(noise_levels=[0.0, 0.5, 2.0], seed=3),
        lambda m, x, y, a, s: (m, x, y),
        lambda m, x, y, a, s: {"curve": F.noise_accuracy_curve(m, x, y, [0.0, 0.5, 2.0], seed=3).mean(0)},
    ),
}


def _assert_same(result, expected):
    if isinstance(expected, dict):
        assert set(result) == set(expected)
        for key in expected:
            torch.testing.assert_close(result[key], expected[key].to(result[key].dtype), atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(result, expected.to(result.dtype), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_accumulation_equals_functional_on_concatenated_batch(name):
    make, args, reference = CASES[name]
    model = tiny_cnn(1, 8)
    x, y, a, s = _data()
    metric = make(model)
    assert metric.higher_is_better in (True, False) and metric.full_state_update is False
    for part in (slice(0, 2), slice(2, 3), slice(3, N_IMG)):
        metric.update(*args(model, x[part], y[part], a[part], s[part]))
    expected = reference(model, x, y, a, s)
    _assert_same(metric.compute(), expected)
    # forward(): returns the batch value and accumulates as update does
    metric.reset()
    batch_value = metric(*args(model, x[:2], y[:2], a[:2], s[:2]))
    metric(*args(model, x[2:], y[2:], a[2:], s[2:]))
    _assert_same(metric.compute(), expected)
    _assert_same(batch_value, reference(model, x[:2], y[:2], a[:2], s[:2]))
    for state in metric._reductions.values():
        assert state is not None


def test_states_reduce_by_sum():
    for metric in (
        M.MoRF(),
        M.Sparseness(),
        M.NoiseAccuracy(),
        M.OverlapAUC(),
        M.ModelParameterRandomisation(tiny_cnn(), saliency),
    ):
        assert metric._reductions and all(fn.__name__ == "dim_zero_sum" for fn in metric._reductions.values())


def test_higher_is_better_directions():
    assert M.MoRF.higher_is_better and not M.LeRF.higher_is_better
    assert not M.DeletionAUC.higher_is_better and M.InsertionAUC.higher_is_better
    assert [c.higher_is_better for c in (M.KPM, M.KNM, M.KAM, M.RPM, M.RNM, M.RAM)] == [
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    assert M.OverlapAUC.higher_is_better and M.Sparseness.higher_is_better
    assert not M.AverageDrop.higher_is_better and M.IncreaseInConfidence.higher_is_better
    assert not M.MaxSensitivity.higher_is_better and not M.ModelParameterRandomisation.higher_is_better
    assert M.NoiseAccuracy.higher_is_better


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: M.MoRF(patch_size=0), ValueError, "patch_size must be a positive int"),
        (lambda: M.MoRF(perturbation={"replacement": "gauss"}), ValueError, "replacement must be one of"),
        (lambda: M.DeletionAUC(n_steps=0), ValueError, "n_steps must be a positive int"),
        (lambda: M.KPM(output="proba"), ValueError, "output must be one of"),
        (lambda: M.NoiseAccuracy(noise_levels=[-1.0]), ValueError, "noise_levels"),
        (lambda: M.MaxSensitivity("ig"), TypeError, "explainer must be a callable"),
        (lambda: M.MaxSensitivity(saliency, radius=-1), ValueError, "radius"),
        (
            lambda: M.ModelParameterRandomisation(tiny_cnn(), saliency, similarity="l2"),
            ValueError,
            "similarity",
        ),
        (lambda: M.MoRF(internal_batch_size=0), ValueError, "internal_batch_size"),
    ],
)
def test_constructor_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_region_metric_update_checks_patch_against_images():
    metric = M.MoRF(patch_size=3, n_steps=2)
    x, y, a, _ = _data()
    with pytest.raises(ValueError, match="must divide"):
        metric.update(tiny_cnn(1, 8), x, y, a)


@pytest.mark.parametrize(
    "module",
    [
        "region",
        "deletion",
        "keep_remove",
        "overlap",
        "confidence",
        "sparseness",
        "sensitivity",
        "randomisation",
        "noise_accuracy",
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(
        importlib.import_module(f"impactx.metrics.{module}"), optionflags=doctest.ELLIPSIS
    )
    assert result.attempted > 0 and result.failed == 0
