"""impactx's entry point.

    python train.py                                   # the default experiment: fit, then test (configs/default.yaml)
    python train.py fit --config configs/cifar10_lenet5.yaml
    python train.py test --config configs/default.yaml --ckpt_path logs/.../best.ckpt
    python train.py --help

A LightningCLI: every constructor argument of the model, the data module, the trainer and its callbacks
is a config key; a wrong key or value stops with the CLI's own error message before anything runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from impactx.data import ImageDataModule

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


class ImpactxCLI(LightningCLI):
    """LightningCLI whose model is told the data's classes, channels and image size."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.init_args.input_size", apply_on="instantiate")

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> Trainer:
        """Add a rich progress bar unless the config disables the bar or brings its own."""
        configured = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, RichProgressBar()]
        return super()._instantiate_trainer(config, callbacks)


def make_cli(args: list[str] | None = None, run: bool = True) -> ImpactxCLI:
    return ImpactxCLI(
        model_class=None,
        datamodule_class=ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def run_default(extra_args: list[str]) -> dict[str, object]:
    """Fit the default experiment, test the best checkpoint, print and return a short summary."""
    start = time.perf_counter()
    cli = make_cli(["--config", str(DEFAULT_CONFIG), *extra_args], run=False)
    trainer = cli.trainer
    trainer.fit(cli.model, datamodule=cli.datamodule)
    checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=checkpoint or None)
    summary = {
        "test_acc": float(results[0]["test/acc"]) if results else float("nan"),
        "checkpoint": checkpoint,
        "log_dir": trainer.log_dir,
        "wall_s": time.perf_counter() - start,
    }
    if trainer.is_global_zero:
        print(
            f"\nimpactx default experiment: test accuracy {summary['test_acc']:.4f} "
            f"in {summary['wall_s']:.0f} s\n  checkpoint: {summary['checkpoint']}\n  logs:       {summary['log_dir']}"
        )
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    subcommands = {"fit", "validate", "test", "predict"}
    if not any(a in subcommands for a in argv) and not any(a in ("-h", "--help", "--print_config") for a in argv):
        run_default(argv)
    else:
        make_cli(argv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
