"""The callbacks' parts: subset and shards, curve figure, config checks, background sets, map sources."""

from __future__ import annotations

import pytest
import torch

from callbacks import CurvePanel, ExplanationEvaluation, ExplanationGallery, plot_curves, subset_positions
from callbacks.subset import padded_shard, shard, unshard
from impactx.attribution.sources import build_sources
from impactx.attribution.specs import normalise_named_options, parse_explainers
from impactx.models import is_self_explaining, self_maps


@pytest.mark.parametrize("n", [1, 5, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_the_subset_and_gather_back_in_order(n, world):
    positions = subset_positions(100, n, seed=3)
    shards = [shard(positions, r, world) for r in range(world)]
    assert sorted(torch.cat(shards).tolist()) == positions.tolist()  # disjoint and covering
    padded = [padded_shard(positions, r, world) for r in range(world)]
    assert len({p.shape[0] for p in padded}) == 1  # equal shapes for all_gather
    gathered = torch.stack(padded)  # what all_gather returns: [world, k]
    assert torch.equal(unshard(gathered, n), positions)
    assert torch.equal(unshard(gathered[..., None].float(), n)[:, 0], positions.float())  # trailing dims kept


def test_subset_positions_are_seeded_sorted_and_capped():
    a, b, c = subset_positions(50, 10, 0), subset_positions(50, 10, 0), subset_positions(50, 10, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, a.sort().values) and a.unique().numel() == 10
    assert torch.equal(subset_positions(7, 100, 0), torch.arange(7))  # capped at the split size
    with pytest.raises(ValueError, match="num_images"):
        subset_positions(10, 0, 0)


def test_plot_curves_labels_legend_and_title():
    x = torch.arange(5).float()
    panels = {
        "morf": CurvePanel("MoRF", "regions replaced", "mean target score", x, {"self": torch.rand(5), "ig": torch.rand(5)}),
        "deletion": CurvePanel("Deletion", "fraction of pixels deleted", "mean target score", x, {"ig": torch.rand(5)}),
    }
    figure = plot_curves(panels, "Explanation metrics")
    assert figure.get_suptitle() == "Explanation metrics"
    assert len(figure.axes) == 2
    morf, deletion = figure.axes
    assert (morf.get_title(), morf.get_xlabel(), morf.get_ylabel()) == ("MoRF", "regions replaced", "mean target score")
    assert [t.get_text() for t in morf.get_legend().get_texts()] == ["self", "ig"]
    assert deletion.get_xlabel() == "fraction of pixels deleted"
    torch.testing.assert_close(torch.as_tensor(morf.get_lines()[1].get_ydata()), panels["morf"].series["ig"])
    with pytest.raises(ValueError, match="at least one"):
        plot_curves({}, "empty")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"explainers": ["nope"]}, ValueError, "unknown explainer 'nope'"),
        ({"explainers": {"ig": {"n_stepz": 3}}}, TypeError, r"explainers\['ig'\]"),
        ({"explainers": ["self"]}, ValueError, "self_maps"),
        ({"explainers": 3}, TypeError, "explainers must be"),
        ({"metrics": ["morf", "bogus"]}, ValueError, "unknown metric 'bogus'"),
        ({"metrics": {"morf": {"patch": 3}}}, ValueError, r"metrics\['morf'\]: unknown options \['patch'\]"),
        ({"metrics": {"max_sensitivity": {"explainer": None}}}, ValueError, "supplies"),
        ({"target": "truth"}, ValueError, "target must be"),
        ({"num_images": 0}, ValueError, "num_images"),
        ({"every_n_val_epochs": -1}, ValueError, "every_n_val_epochs"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        ExplanationEvaluation(**kwargs)


def test_list_and_dict_specs_agree():
    assert normalise_named_options(["ig", "eg"], "explainers") == {"ig": {}, "eg": {}}
    assert normalise_named_options({"ig": None, "eg": {}}, "explainers") == {"ig": {}, "eg": {}}
    assert parse_explainers(["ig", "eg"]) == parse_explainers({"ig": None, "eg": {}})
    with pytest.raises(ValueError, match="twice"):
        normalise_named_options(["ig", "ig"], "explainers")


def test_background_explainers_get_a_seeded_train_background(digits, lenet):
    calls = []

    def background():
        calls.append(1)
        return ExplanationGallery(explainers=None).background(_Trainer(digits), torch.device("cpu"))

    sources = build_sources(
        lenet, parse_explainers({"eg": {"n_samples": 4}, "wg": {"n_baselines": 2, "n_steps": 4}, "ig": {"n_steps": 4}}),
        use_self=True, reduce_channels=True, seed=5, background=background,
    )
    assert [s.name for s in sources] == ["eg", "wg", "ig"]  # lenet is not self-explaining
    assert len(calls) == 1  # one background set, shared
    eg, wg = sources[0].map_fn, sources[1].map_fn
    assert eg.seed == 5 and wg.seed == 5
    assert eg.background.shape == (64, 1, 32, 32)
    assert eg.background is wg.background
    # The background holds real train images (each equals some item of the train split).
    train = torch.stack([item[0] for item in digits.dataset("train")])
    distances = torch.cdist(eg.background.flatten(1), train.flatten(1), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert float(distances.max()) < 1e-5
    again = ExplanationGallery(explainers=None).background(_Trainer(digits), torch.device("cpu"))
    assert torch.equal(again, eg.background)


def test_sources_reduce_channels_and_leave_model_state(lenet):
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3)).train()
    stats = model[1].running_mean.clone()
    sources = build_sources(model, parse_explainers({"ig": {"n_steps": 4}}), use_self=True, reduce_channels=True, seed=0,
                            background=lambda: None)
    maps = sources[0](model, torch.randn(2, 3, 8, 8), torch.tensor([0, 2]))
    assert maps.shape == (2, 1, 8, 8)
    assert model.training and model[2].training
    assert torch.equal(model[1].running_mean, stats)


def test_self_explaining_protocol(self_explaining, lenet):
    assert is_self_explaining(self_explaining) and not is_self_explaining(lenet)
    images = torch.randn(2, 1, 32, 32)
    assert self_maps(self_explaining, images).shape == (2, 1, 32, 32)

    class Bad(torch.nn.Module):
        def explain(self, images):
            return images[:, :, :4]

    with pytest.raises(ValueError, match=r"Bad.explain must return maps \[B,1,H,W\]"):
        self_maps(Bad(), images)


class _Trainer:
    """The one attribute the background loader reads from a Trainer."""

    def __init__(self, datamodule):
        self.datamodule = datamodule


def test_yaml_config_through_the_cli(tmp_path):
    """The documented ``trainer.callbacks`` snippet parses and builds through train.py's LightningCLI."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("impactx_train_for_callbacks", root / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    config = tmp_path / "eval.yaml"
    config.write_text(
        "trainer:\n"
        "  inference_mode: false\n"
        "  logger: false\n"
        f"  default_root_dir: {tmp_path}\n"
        "  callbacks:\n"
        "    - class_path: callbacks.ExplanationEvaluation\n"
        "      init_args:\n"
        "        explainers: {ig: {n_steps: 32}, eg: {n_samples: 32}}\n"
        "        metrics: [morf, lerf, deletion, insertion, sparseness, noise_accuracy]\n"
        "        num_images: 256\n"
        "    - class_path: callbacks.ExplanationGallery\n"
        "      init_args:\n"
        "        explainers: [ig]\n"
        "        num_images: 4\n"
        "        morf: {patch_size: 4, n_steps: 16}\n"
        "model: impactx.modules.ClassifierModule\n"
        "data: impactx.data.DigitsDataModule\n"
    )
    cli = train.make_cli(["--config", str(config)], run=False)
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, ExplanationEvaluation))
    gallery = next(c for c in cli.trainer.callbacks if isinstance(c, ExplanationGallery))
    assert evaluation.explainers == parse_explainers({"ig": {"n_steps": 32}, "eg": {"n_samples": 32}})
    assert list(evaluation.metrics) == ["morf", "lerf", "deletion", "insertion", "sparseness", "noise_accuracy"]
    assert gallery.explainers == parse_explainers("ig") and gallery.morf_options["n_steps"] == 16
    assert cli.trainer.test_loop.inference_mode is False
