"""The paper's Table 2 from finished runs: ``python -m impactx.report LOGS_DIR [--output DIR]``.

Walks ``LOGS_DIR`` recursively for ``results.json`` files (one per finished run, written by
``python train.py run``), groups them into rows *dataset x backbone* and columns *method*, adds a
per-experiment table, and prints markdown to stdout while writing ``results.md``, ``results.csv`` (Table 2)
and ``results_experiments.csv`` (the per-experiment table) into ``--output`` (default ``LOGS_DIR``), each
atomically (a temporary file in the same folder, then :func:`os.replace`).

Each accuracy cell is the mean ± sample standard deviation (``ddof=1``) of ``test_acc`` over seeds, in
percent with two decimals, and ``n``, the number of seeds; the paper's Table 2 number stands in its own
column beside it (WAE is not implemented: it appears only as a paper column). Two-stage IMPACTX runs
also carry ``stage1_test_acc``, the classifier A trained as stage 1 inside the same run: it gets its own
column "stage-1 A", kept apart from the separate baseline runs. A second table gives ``map_mse`` and
``morf_aopc`` (per map source) for every method whose runs report them.

Attribution-prior runs (``method: "prior"``) are left out of both of those tables and appear only in the
per-experiment table: the paper has no such column (so no paper number to set beside it), prior configs
vary the prior and its weight (several experiments would pool into one dataset x backbone cell), and what
they are about (smoothness, noise robustness) lives in ``test_metrics``, which only that table shows.
Methods other than these five (none today) still get a Table-2 column of their own.

The per-experiment table ("Per experiment", after the others; :func:`experiments`) has one row per
``(experiment, method)`` (the method is part of the key for the reason given below for reruns): the
experiment, method, dataset, backbone, ``n`` (its seeds), test accuracy in percent (mean ± sample std, two
decimals), then one column per ``test_metrics`` key found in any run, except ``test/acc`` (the accuracy
column) and ``test/loss``: keys under ``test/`` first, then ``test_eval/``, then any other, each group
sorted. A metric cell is the mean ± sample std (4 significant digits) over the seeds that report it
(null or missing counts as not reported); when fewer than ``n`` seeds do, the cell adds ``(n=k)``; no
seed: ``—``. ``results_experiments.csv`` has the same rows with ``test_acc_{mean,std}`` (percent) and
``<key>_{mean,std,n}`` per metric key.

``results.json`` (format 1)::

    {"format": 1,                              # this schema's version; other values are skipped
     "experiment": "cifar10_lenet5_impactx",   # the config's stem (its logger name)
     "method": "impactx",                      # "baseline" | "impactx" (two-stage) | "impactx_single" | "abn"
                                               # | "prior" (attribution prior)
     "dataset": "cifar10",                     # the data module's ``name``
     "backbone": "lenet5",                     # the timm / impactx backbone name
     "seed": 0,                                # seed_everything
     "test_acc": 0.7065,                       # a fraction in [0, 1]
     "stage1_test_acc": 0.6796,                # two-stage IMPACTX: stage 1's A on the test set; else null
     "map_mse": 0.0123,                        # IMPACTX: MSE between predicted and target maps; else null
     "morf_aopc": {"self": 0.31, "partition": 0.28, "random": 0.05},  # map source -> MoRF AOPC; or null
     "test_metrics": {"test/acc": 0.7065, "test/loss": 0.91,           # every scalar the test step logged:
                      "test_eval/self/morf_aopc": 0.31},               # name -> finite number or null; or null
     "wall_s": 123.4,                          # the run's wall time in seconds
     "finished": "2026-12-02T14:00:00+00:00",  # ISO 8601 time the run ended
     "checkpoint": "logs/.../stage2.ckpt"}     # the tested checkpoint

The required keys are ``format``, ``experiment``, ``method``, ``dataset``, ``backbone``, ``seed``,
``test_acc`` and ``finished``; the others may be missing or null. A file that cannot be read, is not
JSON, or breaks the schema (e.g. a ``test_metrics`` value that is not a finite number or null: NaN and
infinities included) gets a one-line warning naming it on stderr and is skipped. Two files with
the same ``(experiment, method, seed)`` (a rerun): the newest by ``finished`` is kept, and stderr says which
(the method is part of the key so that, e.g., a single-stage run of an IMPACTX config is no rerun of it).

Backbone names map to the paper's row labels by prefix: ``lenet5*`` -> LeNet-5, ``mobilenet*`` ->
MobileNet, names containing ``efficientnet_b2`` -> EfficientNet-B2; other names are shown as they are.

Python use::

    from impactx.report import collect, experiments, table, to_markdown, to_csv, experiments_csv
    runs = collect("logs")
    print(to_markdown(table(runs), experiments(runs)))
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "EXPERIMENT_ONLY_METHODS",
    "FORMAT",
    "METHODS",
    "PAPER_TABLE2",
    "ExperimentRow",
    "Experiments",
    "Row",
    "Summary",
    "Table",
    "backbone_label",
    "collect",
    "csv_columns",
    "experiments",
    "experiments_csv",
    "main",
    "summarise",
    "table",
    "to_csv",
    "to_markdown",
    "write_atomic",
]

PROG = "impactx.report"
FORMAT = 1
RESULTS_FILE = "results.json"

#: Accuracy columns in table order, with their headers.
METHODS: dict[str, str] = {
    "baseline": "Baseline A",
    "impactx": "IMPACTX",
    "impactx_single": "IMPACTX single-stage",
    "abn": "ABN",
}
#: Methods shown only in the per-experiment table, with their labels (module docstring: why).
EXPERIMENT_ONLY_METHODS: dict[str, str] = {"prior": "Attribution prior"}
#: Every known method's label.
METHOD_LABELS: dict[str, str] = METHODS | EXPERIMENT_ONLY_METHODS
#: Test metrics left out of the per-experiment metric columns (``test/acc`` has its own column).
HIDDEN_TEST_METRICS = frozenset({"test/acc", "test/loss"})
#: Methods whose paper number sits beside their column (WAE: paper column only).
PAPER_METHODS: dict[str, str] = {"baseline": "Baseline A", "impactx": "IMPACTX", "abn": "ABN", "wae": "WAE"}

DATASET_LABELS: dict[str, str] = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "stl10": "STL-10",
    "digits": "Digits",
    "mnist": "MNIST",
}
PAPER_BACKBONES = ("LeNet-5", "MobileNet", "EfficientNet-B2")
AOPC_SOURCES = ("self", "partition", "random")

#: The IMPACTX paper's Table 2: accuracy (%) on the test sets, per (dataset, row label).
PAPER_TABLE2: dict[tuple[str, str], dict[str, float]] = {
    ("cifar10", "LeNet-5"): {"baseline": 67.96, "impactx": 70.65, "abn": 68.49, "wae": 68.10},
    ("cifar10", "MobileNet"): {"baseline": 94.63, "impactx": 96.27, "abn": 95.41, "wae": 94.75},
    ("cifar10", "EfficientNet-B2"): {"baseline": 98.06, "impactx": 98.38, "abn": 98.19, "wae": 98.08},
    ("cifar100", "LeNet-5"): {"baseline": 36.23, "impactx": 39.49, "abn": 37.62, "wae": 36.20},
    ("cifar100", "MobileNet"): {"baseline": 76.72, "impactx": 79.37, "abn": 78.24, "wae": 76.98},
    ("cifar100", "EfficientNet-B2"): {"baseline": 87.88, "impactx": 89.06, "abn": 88.89, "wae": 88.27},
    ("stl10", "LeNet-5"): {"baseline": 52.59, "impactx": 55.86, "abn": 53.36, "wae": 52.99},
    ("stl10", "MobileNet"): {"baseline": 91.07, "impactx": 95.79, "abn": 92.71, "wae": 91.42},
    ("stl10", "EfficientNet-B2"): {"baseline": 98.76, "impactx": 99.00, "abn": 98.59, "wae": 98.65},
}

_REQUIRED_STR = ("experiment", "method", "dataset", "backbone", "finished")


class ResultsError(ValueError):
    """A results.json that breaks the schema (the message says how, in one line)."""


# ------------------------------------------------------------------------------------------ messages
def _say(kind: str, message: str) -> None:
    """One line on stderr: ``impactx.report: <kind>: <message>``."""
    print(f"{PROG}: {kind}: {' '.join(str(message).split())}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ collect
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_time(text: str) -> datetime:
    """ISO 8601 -> an aware datetime (a time without a zone is taken as UTC)."""
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ResultsError(f"finished={text!r} is not an ISO 8601 time") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _check(record: Any) -> dict[str, Any]:
    """The record of one results.json, checked against format 1 (raises :class:`ResultsError`)."""
    if not isinstance(record, dict):
        raise ResultsError(f"expected a JSON object, got {type(record).__name__}")
    if record.get("format") != FORMAT:
        raise ResultsError(f"format={record.get('format')!r}, this report reads format {FORMAT}")
    missing = [key for key in (*_REQUIRED_STR, "seed", "test_acc") if record.get(key) is None]
    if missing:
        raise ResultsError(f"missing {', '.join(missing)}")
    for key in _REQUIRED_STR:
        if not isinstance(record[key], str) or not record[key]:
            raise ResultsError(f"{key} must be a non-empty string, got {record[key]!r}")
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        raise ResultsError(f"seed must be an integer, got {record['seed']!r}")
    for key in ("test_acc", "stage1_test_acc"):
        value = record.get(key)
        if value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
            raise ResultsError(f"{key} must be a fraction in [0, 1], got {value!r}")
    if record.get("map_mse") is not None and not _is_number(record["map_mse"]):
        raise ResultsError(f"map_mse must be a number, got {record['map_mse']!r}")
    aopc = record.get("morf_aopc")
    if aopc is not None:
        if not isinstance(aopc, dict) or not all(
            isinstance(k, str) and (v is None or _is_number(v)) for k, v in aopc.items()
        ):
            raise ResultsError(f"morf_aopc must map source names to numbers, got {aopc!r}")
    metrics = record.get("test_metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise ResultsError(f"test_metrics must be an object, got {type(metrics).__name__}")
        for key, value in metrics.items():
            if not key or not (value is None or _is_number(value)):
                raise ResultsError(
                    f"test_metrics must map metric names to finite numbers or null, got {key!r}: {value!r}"
                )
    _parse_time(record["finished"])
    return dict(record)


def _read(path: Path) -> dict[str, Any]:
    """One results.json -> its checked record plus ``"path"`` (raises :class:`ResultsError`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ResultsError(f"cannot read it ({type(error).__name__}: {error})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ResultsError(f"not valid JSON ({error})") from None
    record = _check(record)
    record["path"] = str(path)
    return record


def collect(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every valid ``results.json`` under ``root`` (recursively), one dict per run.

    Each dict is the file's record plus ``"path"`` (where it was read). Malformed files are skipped with
    a one-line warning on stderr; of several files with the same ``(experiment, method, seed)`` only the
    newest by ``finished`` is kept (ties: the last path in sorted order), and stderr names the ones
    dropped. Returned sorted by ``(experiment, method, seed)``. Raises ``NotADirectoryError`` when ``root`` is no folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is not a folder")
    newest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in sorted(root.rglob(RESULTS_FILE)):
        if not path.is_file():
            continue
        try:
            record = _read(path)
        except ResultsError as error:
            _say("warning", f"skipping {path}: {error}")
            continue
        key = (record["experiment"], record["method"], record["seed"])
        earlier = newest.get(key)
        if earlier is not None:
            # Paths come in sorted order, so on a tie the later path wins.
            newer = _parse_time(record["finished"]) >= _parse_time(earlier["finished"])
            kept, dropped = (record, earlier) if newer else (earlier, record)
            _say(
                "warning",
                f"duplicate run {key[0]} ({key[1]}) seed {key[2]}: kept {kept['path']} (finished {kept['finished']}), "
                f"dropped {dropped['path']} (finished {dropped['finished']})",
            )
            record = kept
        newest[key] = record
    return [newest[key] for key in sorted(newest)]


# ------------------------------------------------------------------------------------------ table
@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (``ddof=1``; ``None`` for a single value) and count of values."""

    mean: float
    std: float | None
    n: int


def summarise(values: Iterable[float], scale: float = 1.0) -> Summary | None:
    """:class:`Summary` of ``values`` times ``scale`` (``100`` for percent); ``None`` when there are none."""
    scaled = [float(v) * scale for v in values]
    if not scaled:
        return None
    std = statistics.stdev(scaled) if len(scaled) > 1 else None
    return Summary(statistics.fmean(scaled), std, len(scaled))


@dataclass
class Row:
    """One row of the table: a dataset and a backbone (its paper label, or its name when there is none).

    ``accuracy``: method -> test accuracy in percent; ``stage1``: the two-stage IMPACTX runs'
    ``stage1_test_acc`` in percent; ``paper``: Table 2's numbers (``baseline``, ``impactx``, ``abn``, ``wae``;
    empty off the paper's grid); ``map_mse``: method -> summary; ``morf_aopc``: method -> source -> summary.
    """

    dataset: str
    backbone: str
    backbone_names: tuple[str, ...]
    accuracy: dict[str, Summary] = field(default_factory=dict)
    stage1: Summary | None = None
    paper: dict[str, float] = field(default_factory=dict)
    map_mse: dict[str, Summary] = field(default_factory=dict)
    morf_aopc: dict[str, dict[str, Summary]] = field(default_factory=dict)

    @property
    def dataset_label(self) -> str:
        """The dataset as the paper writes it (``CIFAR-10``), or its name."""
        return DATASET_LABELS.get(self.dataset, self.dataset)


@dataclass
class Table:
    """The comparison: rows in the paper's order; ``methods``: accuracy columns (known ones first, then any
    other method found); ``aopc_sources``: the MoRF AOPC sources found (self, partition, random first)."""

    rows: list[Row]
    methods: tuple[str, ...]
    aopc_sources: tuple[str, ...]

    @property
    def explained(self) -> list[tuple[Row, str]]:
        """``(row, method)`` pairs that report ``map_mse`` or ``morf_aopc`` (the second table's rows)."""
        return [
            (row, method)
            for row in self.rows
            for method in self.methods
            if method in row.map_mse or method in row.morf_aopc
        ]


def backbone_label(name: str) -> str:
    """The paper's row label of a backbone name: LeNet-5, MobileNet, EfficientNet-B2, or ``name`` itself."""
    lower = name.lower()
    if lower.startswith("lenet5"):
        return "LeNet-5"
    if lower.startswith("mobilenet"):
        return "MobileNet"
    if "efficientnet_b2" in lower:
        return "EfficientNet-B2"
    return name


def _ordered(items: Iterable[str], first: Sequence[str]) -> tuple[str, ...]:
    items = set(items)
    return tuple(x for x in first if x in items) + tuple(sorted(items - set(first)))


def table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """Group runs (from :func:`collect`) into the Table-2 comparison.

    Rows: ``(dataset, backbone label)``, datasets in the paper's order (CIFAR-10, CIFAR-100, STL-10, then
    others by name), backbones likewise (LeNet-5, MobileNet, EfficientNet-B2, then others). A cell pools
    every run of its method in the row, one value per seed; stderr warns when a cell pools several
    experiments (e.g. two configs that differ in lambda), since their spread is then not the seeds'.
    Runs of :data:`EXPERIMENT_ONLY_METHODS` (``prior``) are left out (see :func:`experiments`).
    """
    rows = [run for run in rows if run["method"] not in EXPERIMENT_ONLY_METHODS]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in rows:
        groups.setdefault((run["dataset"], backbone_label(run["backbone"])), []).append(run)
    datasets = _ordered((d for d, _ in groups), tuple(DATASET_LABELS))
    backbones = _ordered((b for _, b in groups), PAPER_BACKBONES)
    methods = _ordered((run["method"] for run in rows), tuple(METHODS))
    sources = _ordered((s for run in rows for s in (run.get("morf_aopc") or {})), AOPC_SOURCES)

    out: list[Row] = []
    for dataset in datasets:
        for backbone in backbones:
            runs = groups.get((dataset, backbone))
            if not runs:
                continue
            row = Row(
                dataset,
                backbone,
                tuple(sorted({run["backbone"] for run in runs})),
                paper=dict(PAPER_TABLE2.get((dataset, backbone), {})),
            )
            for method in methods:
                cell = [run for run in runs if run["method"] == method]
                if not cell:
                    continue
                experiments = sorted({run["experiment"] for run in cell})
                if len(experiments) > 1:
                    _say(
                        "warning",
                        f"{row.dataset_label} / {backbone} / {method} pools {len(experiments)} experiments: "
                        + ", ".join(experiments),
                    )
                row.accuracy[method] = summarise((run["test_acc"] for run in cell), 100.0)
                mse = summarise(run["map_mse"] for run in cell if run.get("map_mse") is not None)
                if mse is not None:
                    row.map_mse[method] = mse
                aopc = {}
                for source in sources:
                    values = [(run.get("morf_aopc") or {}).get(source) for run in cell]
                    summary = summarise(v for v in values if v is not None)
                    if summary is not None:
                        aopc[source] = summary
                if aopc:
                    row.morf_aopc[method] = aopc
            row.stage1 = summarise(
                (
                    run["stage1_test_acc"]
                    for run in runs
                    if run["method"] == "impactx" and run.get("stage1_test_acc") is not None
                ),
                100.0,
            )
            out.append(row)
    return Table(out, methods, sources)


@dataclass
class ExperimentRow:
    """One row of the per-experiment table: the runs (seeds) of one ``(experiment, method)``.

    ``dataset`` and ``backbone``: the runs' names (several, sorted and joined by ``", "``, should the runs
    disagree); ``n``: the number of runs; ``accuracy``: test accuracy in percent; ``metrics``: test metric
    key -> summary over the runs that report it (keys no run reports are absent).
    """

    experiment: str
    method: str
    dataset: str
    backbone: str
    n: int
    accuracy: Summary
    metrics: dict[str, Summary] = field(default_factory=dict)


@dataclass
class Experiments:
    """The per-experiment table: rows by experiment then method; ``metrics``: the metric columns in order."""

    rows: list[ExperimentRow]
    metrics: tuple[str, ...]


def _metric_order(key: str) -> tuple[int, str]:
    """``test/...`` first, then ``test_eval/...``, then any other key; each group by name."""
    return (0 if key.startswith("test/") else 1 if key.startswith("test_eval/") else 2, key)


def experiments(runs: Sequence[Mapping[str, Any]]) -> Experiments:
    """Group runs (from :func:`collect`, every method, ``prior`` included) into the per-experiment table.

    One row per ``(experiment, method)``, sorted by experiment, then method (known methods in table
    order first). Metric columns: every ``test_metrics`` key of any run except ``test/acc`` and
    ``test/loss``, in :func:`_metric_order`; a cell summarises the runs whose value is not null.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["experiment"], run["method"]), []).append(run)
    order = {method: i for i, method in enumerate(METHOD_LABELS)}
    keys = sorted(
        {key for run in runs for key in (run.get("test_metrics") or {}) if key not in HIDDEN_TEST_METRICS},
        key=_metric_order,
    )
    out: list[ExperimentRow] = []
    for experiment, method in sorted(groups, key=lambda em: (em[0], order.get(em[1], len(order)), em[1])):
        cell = sorted(groups[(experiment, method)], key=lambda run: run["seed"])
        metrics = {}
        for key in keys:
            summary = summarise(
                value for run in cell if (value := (run.get("test_metrics") or {}).get(key)) is not None
            )
            if summary is not None:
                metrics[key] = summary
        accuracy = summarise((run["test_acc"] for run in cell), 100.0)
        assert accuracy is not None  # every group has a run
        out.append(
            ExperimentRow(
                experiment,
                method,
                ", ".join(sorted({run["dataset"] for run in cell})),
                ", ".join(sorted({run["backbone"] for run in cell})),
                len(cell),
                accuracy,
                metrics,
            )
        )
    return Experiments(out, tuple(keys))


# ------------------------------------------------------------------------------------------ output
def _cell(summary: Summary | None, spec: str) -> str:
    if summary is None:
        return "—"
    if summary.std is None:
        return f"{summary.mean:{spec}} (n={summary.n})"
    return f"{summary.mean:{spec}} ± {summary.std:{spec}} (n={summary.n})"


def _paper(row: Row, method: str) -> str:
    return f"{row.paper[method]:.2f}" if method in row.paper else "—"


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _label(row: Row) -> str:
    """The row's backbone label; the backbone names in parentheses when the row pools several."""
    if len(row.backbone_names) == 1:
        return row.backbone
    return f"{row.backbone} ({', '.join(row.backbone_names)})"


def _spread(summary: Summary | None, spec: str, n: int) -> str:
    """A per-experiment cell: mean ± std, with ``(n=k)`` only when ``k`` differs from the row's ``n``."""
    if summary is None:
        return "—"
    text = f"{summary.mean:{spec}}" if summary.std is None else f"{summary.mean:{spec}} ± {summary.std:{spec}}"
    return text if summary.n == n else f"{text} (n={summary.n})"


def _experiments_markdown(result: Experiments) -> list[str]:
    header = ["Experiment", "Method", "Dataset", "Backbone", "n", "Test acc (%)", *result.metrics]
    body = [
        [
            row.experiment,
            METHOD_LABELS.get(row.method, row.method),
            DATASET_LABELS.get(row.dataset, row.dataset),
            row.backbone,
            str(row.n),
            _spread(row.accuracy, ".2f", row.n),
            *(_spread(row.metrics.get(key), ".4g", row.n) for key in result.metrics),
        ]
        for row in result.rows
    ]
    return [
        "## Per experiment",
        "",
        "One row per experiment (and method), attribution-prior runs included; mean ± sample std over its n "
        "seeds of the test accuracy and of every logged test metric; *(n=k)*: only k seeds report it.",
        "",
        *_markdown_table(header, body),
    ]


def to_markdown(result: Table, per_experiment: Experiments | None = None) -> str:
    """The table as markdown: accuracy (%) with the paper's numbers beside, then the explanation metrics,
    then, when ``per_experiment`` is given (:func:`experiments`), the "Per experiment" section.

    Baseline A, IMPACTX and ABN always have a column and a paper column; single-stage IMPACTX, other
    methods and "stage-1 A" only when some run has them; WAE appears as a paper column only.
    """
    shown = _ordered(set(result.methods) | {"baseline", "impactx", "abn"}, tuple(METHODS))
    columns: list[tuple[str, Callable[[Row], str]]] = [("Dataset", lambda r: r.dataset_label), ("Model", _label)]
    for method in shown:
        columns.append((METHODS.get(method, method), lambda r, m=method: _cell(r.accuracy.get(m), ".2f")))
        if method in PAPER_METHODS:
            columns.append(("paper", lambda r, m=method: _paper(r, m)))
        if method == "baseline" and any(row.stage1 is not None for row in result.rows):
            columns.append(("stage-1 A", lambda r: _cell(r.stage1, ".2f")))
    columns.append(("WAE (paper)", lambda r: _paper(r, "wae")))
    header = [name for name, _ in columns]
    body = [[value(row) for _, value in columns] for row in result.rows]
    lines = [
        "## Test accuracy (%)",
        "",
        "Mean ± sample std over seeds (n = number of seeds); *paper*: the IMPACTX paper's Table 2. "
        "*stage-1 A*: the classifier A trained as stage 1 inside the two-stage IMPACTX runs.",
        "",
        *_markdown_table(header, body),
    ]
    explained = result.explained
    if explained:
        header = ["Dataset", "Model", "Method", "map MSE", *(f"MoRF AOPC ({s})" for s in result.aopc_sources)]
        body = [
            [
                row.dataset_label,
                _label(row),
                METHODS.get(method, method),
                _cell(row.map_mse.get(method), ".4g"),
                *(_cell(row.morf_aopc.get(method, {}).get(s), ".4g") for s in result.aopc_sources),
            ]
            for row, method in explained
        ]
        lines += [
            "",
            "## Explanations",
            "",
            "Mean ± sample std over seeds: *map MSE* between the predicted and the target maps; *MoRF AOPC* "
            "per map source (higher: the map finds what the model relies on).",
            "",
            *_markdown_table(header, body),
        ]
    if per_experiment is not None:
        lines += ["", *_experiments_markdown(per_experiment)]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.10g}"


def _summary_fields(prefix: str, summary: Summary | None) -> dict[str, str]:
    if summary is None:
        return {f"{prefix}_mean": "", f"{prefix}_std": "", f"{prefix}_n": "0"}
    return {
        f"{prefix}_mean": _number(summary.mean),
        f"{prefix}_std": _number(summary.std),
        f"{prefix}_n": str(summary.n),
    }


def csv_columns(result: Table) -> list[str]:
    """The CSV header: ``dataset, backbone, backbone_names``, then ``<method>_{mean,std,n}`` (percent) for
    every known method and any other found, ``stage1_A_{mean,std,n}``, ``paper_{baseline,impactx,abn,wae}``,
    then ``<method>_map_mse_{mean,std,n}`` and ``<method>_morf_aopc_<source>_{mean,std,n}`` where present."""
    columns = ["dataset", "backbone", "backbone_names"]
    for method in _ordered(set(result.methods) | set(METHODS), tuple(METHODS)):
        columns += [f"{method}_{s}" for s in ("mean", "std", "n")]
    columns += [f"stage1_A_{s}" for s in ("mean", "std", "n")]
    columns += [f"paper_{m}" for m in PAPER_METHODS]
    for method in result.methods:
        if any(method in row.map_mse for row in result.rows):
            columns += [f"{method}_map_mse_{s}" for s in ("mean", "std", "n")]
        for source in result.aopc_sources:
            if any(source in row.morf_aopc.get(method, {}) for row in result.rows):
                columns += [f"{method}_morf_aopc_{source}_{s}" for s in ("mean", "std", "n")]
    return columns


def to_csv(result: Table) -> str:
    """The table as CSV, one line per row (columns: :func:`csv_columns`); accuracies in percent; an empty
    field where there is no value (``_n`` is then 0)."""
    columns = csv_columns(result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        fields = {"dataset": row.dataset, "backbone": row.backbone, "backbone_names": ";".join(row.backbone_names)}
        for method in _ordered(set(result.methods) | set(METHODS), tuple(METHODS)):
            fields |= _summary_fields(method, row.accuracy.get(method))
        fields |= _summary_fields("stage1_A", row.stage1)
        fields |= {f"paper_{m}": _number(row.paper.get(m)) for m in PAPER_METHODS}
        for method in result.methods:
            fields |= _summary_fields(f"{method}_map_mse", row.map_mse.get(method))
            for source in result.aopc_sources:
                fields |= _summary_fields(f"{method}_morf_aopc_{source}", row.morf_aopc.get(method, {}).get(source))
        writer.writerow({c: fields.get(c, "") for c in columns})
    return buffer.getvalue()


def experiments_csv(result: Experiments) -> str:
    """The per-experiment table as CSV: ``experiment, method, dataset, backbone, n, test_acc_mean,
    test_acc_std`` (percent), then ``<key>_{mean,std,n}`` per metric key (empty, ``_n`` 0, where none)."""
    columns = ["experiment", "method", "dataset", "backbone", "n", "test_acc_mean", "test_acc_std"]
    columns += [f"{key}_{s}" for key in result.metrics for s in ("mean", "std", "n")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        fields = {
            "experiment": row.experiment,
            "method": row.method,
            "dataset": row.dataset,
            "backbone": row.backbone,
            "n": str(row.n),
            "test_acc_mean": _number(row.accuracy.mean),
            "test_acc_std": _number(row.accuracy.std),
        }
        for key in result.metrics:
            fields |= _summary_fields(key, row.metrics.get(key))
        writer.writerow(fields)
    return buffer.getvalue()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and :func:`os.replace`."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ CLI
class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block)."""

    def error(self, message: str) -> NoReturn:
        _say("error", f"{message} (python -m {PROG} --help)")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"python -m {PROG}",
        description="Table 2 of the IMPACTX paper and a per-experiment table from the results.json files under "
        "LOGS_DIR: prints markdown and writes results.md, results.csv and results_experiments.csv.",
    )
    parser.add_argument("logs_dir", metavar="LOGS_DIR", help="folder searched recursively for results.json")
    parser.add_argument("--output", metavar="DIR", help="where the report files go (default: LOGS_DIR)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: returns the exit status (0; 1 when there are no results or output fails; 2 for
    bad arguments)."""
    args = _parser().parse_args(argv)
    try:
        runs = collect(args.logs_dir)
    except NotADirectoryError as error:
        _say("error", f"LOGS_DIR {error}")
        return 2
    if not runs:
        _say("error", f"no valid {RESULTS_FILE} found under {args.logs_dir!r}")
        return 1
    result, per_experiment = table(runs), experiments(runs)
    markdown = to_markdown(result, per_experiment)
    output = Path(args.output if args.output is not None else args.logs_dir)
    try:
        output.mkdir(parents=True, exist_ok=True)
        write_atomic(output / "results.md", markdown)
        write_atomic(output / "results.csv", to_csv(result))
        write_atomic(output / "results_experiments.csv", experiments_csv(per_experiment))
    except OSError as error:
        _say("error", f"cannot write the report to {str(output)!r} ({type(error).__name__}: {error.strerror or error})")
        return 1
    sys.stdout.write(markdown)
    _say(
        "info",
        f"{len(runs)} runs; wrote {output / 'results.md'}, {output / 'results.csv'} "
        f"and {output / 'results_experiments.csv'}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
