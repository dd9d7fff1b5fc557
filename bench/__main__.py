"""The whole performance table in one process: ``python -m bench``.

    python -m bench                                   # every benchmark on the CPU, full settings
    python -m bench --device cuda --output docs/bench-cuda.md
    python -m bench --quick --output /tmp/smoke.md    # a smoke run: every benchmark at its smallest
    python -m bench --only training scaling           # some of them

Runs every benchmark module's ``main()`` (attribution methods against shap and Captum, the survey explainers
against Captum and pytorch-grad-cam, every class in one call against single-target calls and shap's
multi-output Partition, metrics against Quantus, the map pass against the model-forward bound with
its FLOPs and fraction of peak, the attribution-prior step overhead, training throughput under the precision
and speed switches, cost growth with image size, batch and evaluations, export artifacts against the eager
module; and on CUDA the GPU-vs-CPU map check) with the arguments below, one after the other in this process, so
each ratio in a table is measured in the same process on the same device. Every table printed through
``bench.common.print_table`` is collected, and the markdown file (``--output``) is rewritten after each module,
so an interrupted run keeps what it measured. A module that fails is reported in the file and the run goes on
(exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.common import Recording, Table, device_name, recording


@dataclass(frozen=True)
class Entry:
    """One benchmark module and its arguments (``quick``: the smoke run's, ``full``: the full run's)."""

    module: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()
    takes_device: bool = True
    cuda_only: bool = False


ENTRIES = (
    Entry("attribution", ("--models", "lenet5", "--scale", "0.02", "--skip", "shap_partition", "shap_gradient")),
    Entry("explainers", ("--batch", "2", "--repeats", "1", "--methods", "saliency", "gradcam"),
          ("--batch", "16", "--repeats", "2")),
    Entry("multi_target", ("--images", "1", "--max-evals", "64", "--steps", "8", "--repeats", "1")),
    Entry("metrics", ("--images", "4", "--models", "lenet5"), ("--images", "32")),
    Entry("maps", ("--images", "2", "--batch", "2", "--repeats", "1", "--models", "lenet5"), ("--repeats", "2")),
    Entry("prior_overhead", ("--batch", "4", "--steps", "2", "--backbones", "lenet5", "--no-memory"),
          ("--steps", "5")),
    Entry("training", ("--quick",), ("--steps", "5")),
    Entry("scaling", ("--quick",)),
    Entry("export", ("--cases", "baseline-lenet5", "--repeats", "2"), ("--repeats", "10"), takes_device=False),
    Entry("gpu_check", ("--max-evals", "200"), (), cuda_only=True),
)
NAMES = tuple(e.module for e in ENTRIES)


@dataclass
class Result:
    """What one module left: its command, tables, the other lines it printed, its wall time and any error."""

    command: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


class _Tee(io.TextIOBase):
    """Writes through to ``stream`` and keeps the lines, for the report's notes."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream, self.text = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.text.write(s)
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def run_entry(entry: Entry, quick: bool, device: str) -> Result:
    """Run ``bench.<entry.module>.main()`` with the entry's arguments as its command line, recording its tables."""
    args = list(entry.quick if quick else entry.full)
    if entry.takes_device:
        args += ["--device", device]
    result = Result(command=" ".join(["python -m", f"bench.{entry.module}", *args]))
    module = importlib.import_module(f"bench.{entry.module}")
    tee = _Tee(sys.stdout)
    saved_argv = sys.argv
    sys.argv = [f"bench.{entry.module}", *args]  # bench.explainers.main() reads sys.argv itself
    start = time.perf_counter()
    rec: Recording
    try:
        with recording() as rec, contextlib.redirect_stdout(tee):
            module.main()
    except Exception:  # noqa: BLE001 - one failed benchmark must not lose the others' tables
        result.error = traceback.format_exc(limit=4)
        print(result.error, file=sys.stderr)
    finally:
        sys.argv = saved_argv
    result.seconds = time.perf_counter() - start
    result.tables = list(rec.tables)
    printed = tee.text.getvalue()
    for table in rec.tables:  # what is left of the output are the module's notes
        printed = printed.replace(table.printed, "", 1)
    result.notes = [line for line in printed.splitlines() if line.strip()]
    return result


def markdown(results: dict[str, Result], device: torch.device, quick: bool, argv: list[str]) -> str:
    """The report: a header naming the device and the versions, then per module its command, tables and notes."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# impactx benchmarks: {device_name(device)}",
        "",
        f"`python -m bench {' '.join(argv)}` ({'quick smoke run' if quick else 'full run'}), {now}; "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}.",
    ]
    if device.type == "cuda":
        lines.append(f"Card: {torch.cuda.get_device_name(device)}.")
    for name, result in results.items():
        lines += ["", f"## {name} ({result.seconds:.0f} s)", "", f"`{result.command}`"]
        for table in result.tables:
            lines += ["", f"**{table.title}**", "", table.markdown()]
        if result.notes:
            lines += ["", "Printed:", "", "```", *result.notes[-12:], "```"]
        if result.error:
            lines += ["", "**Failed:**", "", "```", result.error.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="every benchmark at its smallest (a smoke run)")
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown file to write (default bench-<device>[-quick].md in this folder)")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=None, help="run only these modules, in this order")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    output = args.output or Path(f"bench-{device.type}{'-quick' if args.quick else ''}.md")
    results: dict[str, Result] = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown(results, device, args.quick, argv))
    chosen = [e for name in args.only for e in ENTRIES if e.module == name] if args.only else list(ENTRIES)
    for entry in chosen:  # in --only's order when given
        if entry.cuda_only and device.type != "cuda":
            continue
        print(f"\n=== bench.{entry.module}", flush=True)
        results[entry.module] = run_entry(entry, args.quick, args.device)
        output.write_text(markdown(results, device, args.quick, argv))
    print(f"\nwrote {output}")
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
