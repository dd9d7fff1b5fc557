"""The ``export`` and ``explain`` subcommands of ``train.py`` (they need no trainer, data or config file, so
they have their own jsonargparse parsers rather than LightningCLI's)::

    python train.py export --ckpt_path RUN.ckpt --format exported_program --output DIR
    python train.py explain --model DIR IMAGE... [--format F] [--output DIR] [--top_k 3] [--json]

Errors in the arguments raise jsonargparse's ``ArgumentError``; an unusable checkpoint or export folder raises
:class:`~impactx.export.ExportError` / :class:`~impactx.export.ArtifactError`; ``train.py`` turns each into one
line and an exit status. ``explain`` reports a bad image on its own line, goes on, and returns 1 at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from impactx.export.exporter import export_checkpoint
from impactx.export.standalone import FORMATS, load

__all__ = ["UsageError", "explain_command", "explain_parser", "export_command", "export_parser"]


class UsageError(ValueError):
    """An argument the parser accepts but the command rejects (exit status 2)."""


def export_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python train.py export", exit_on_error=False,
                            description="Export a self-describing impactx checkpoint as one artifact and its JSON.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="the checkpoint to export (a run's *.ckpt)")
    parser.add_argument("--format", type=str, choices=FORMATS, default="exported_program",
                        help="exported_program (.pt2, torch.export), torchscript, or onnx")
    parser.add_argument("--output", type=str, required=True, help="the export folder (made if missing)")
    parser.add_argument("--measure_accuracy", type=bool, default=True,
                        help="measure the test accuracy when the checkpoint has none recorded and the data are here")
    return parser


def explain_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python train.py explain", exit_on_error=False,
                            description="Predict and explain PNG/JPEG images with an exported model.")
    parser.add_argument("--model", type=str, required=True, help="the export folder (or its JSON description)")
    parser.add_argument("--format", type=str | None, default=None,
                        help="the artifact to use when the folder holds several formats")
    parser.add_argument("--output", type=str, default="explanations", help="where the figures are written")
    parser.add_argument("--top_k", type=int, default=3, help="classes listed per image")
    parser.add_argument("--json", action="store_true", help="print the probabilities and maps as JSON")
    parser.add_argument("images", nargs="+", type=str, help="PNG or JPEG files")
    return parser


def export_command(args: list[str], out: Any = None) -> Path:
    """Run ``export`` on ``args``; prints where the artifact is and the ``explain`` command to try."""
    out = out or sys.stdout
    config = export_parser().parse_args(args)
    description = export_checkpoint(config.ckpt_path, config.format, config.output,
                                    measure_accuracy=config.measure_accuracy)
    record = json.loads(description.read_text())
    artifact = description.parent / record["artifact"]
    meta = record["metadata"]
    accuracy = "n/a" if meta["test_accuracy"] is None else f"{100 * meta['test_accuracy']:.2f}%"
    where = {"forward": "a forward output", "explain": "its explain() method", None: "none"}[meta["map"]["where"]]
    out.write(f"exported {meta['kind']} ({meta['backbone']} on {meta['dataset']}) as {config.format}: {artifact} "
              f"({artifact.stat().st_size / 1e6:.1f} MB), described in {description}\n"
              f"  test accuracy {accuracy} ({meta['test_accuracy_source']}); maps: {where}\n"
              f"  try: python train.py explain --model {description.parent} --format {config.format} IMAGE.png\n")
    return description


def explain_command(args: list[str], out: Any = None, err: Any = None) -> int:
    """Run ``explain`` on ``args``; returns the exit status (1 when any image could not be explained)."""
    from impactx.export.explain import explain_files

    out, err = out or sys.stdout, err or sys.stderr
    config = explain_parser().parse_args(args)
    if config.top_k < 1:
        raise UsageError(f"--top_k must be >= 1, got {config.top_k}")
    model = load(config.model, format=config.format)
    results, errors = explain_files(model, config.images, config.output, top_k=min(config.top_k,
                                    len(model.class_names)))
    for line in errors:
        err.write(f"error: {line}\n")
    if config.json:
        out.write(json.dumps({"model": str(model.path), "format": model.format, "results": results,
                              "errors": errors}) + "\n")
    else:
        for result in results:
            top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"])
            out.write(f"{result['image']}: {top} -> {result['figure']}\n")
    return 1 if errors else 0
