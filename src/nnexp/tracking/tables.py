"""Tables of MLflow runs, ranked, grouped over seeds and fitted to the terminal: the sweep summary, ``nnexp compare``
and ``nnexp runs`` build theirs here.

A little over 350 lines: the tables' rows, columns, formats and widths change together.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nnexp.config import GROUPS, Direction, default_direction, setting_overrides
from nnexp.errors import NnexpError, one_line

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from nnexp.tracking.tracked_run import Tracker

#: Params that differ between any two runs without being an experimental choice.
BOOKKEEPING_PARAMS = ("tracking.parent_run_id", "tracking.run_name", "tracking.uri", "tracking.experiment")
DEFAULT_METRICS = ("test_accuracy", "val_accuracy", "test_loss")
SEED = "seed"
#: Tags in which runs record their config group choices.
CHOICE_TAGS = (*(registry.kind for registry, _ in GROUPS), "experiment", "hparams_search")


@dataclass
class Ranking:
    """What runs are ranked by: a final metric and whether larger is better."""

    metric: str
    maximize: bool

    @classmethod
    def of(cls, runs: Sequence[Run], metric: str | None = None) -> Ranking:
        """``metric``, else the objective most of ``runs`` recorded in their ``objective`` tag, else test accuracy."""
        if metric is None:
            named = [run.data.tags["objective"] for run in runs if "objective" in run.data.tags]
            metric = statistics.mode(named) if named else "test_accuracy"
        directions = {
            run.data.tags.get("objective_direction")
            for run in runs
            if run.data.tags.get("objective") == metric and run.data.tags.get("objective_direction")
        }
        maximize = directions == {"maximize"} if directions else default_direction(metric) is Direction.maximize
        return cls(metric, maximize)

    def worst(self) -> float:
        return -math.inf if self.maximize else math.inf

    def sort_key(self, value: float | None) -> tuple[bool, float]:
        """Best first; runs without the metric last."""
        if value is None or math.isnan(value):
            return (True, 0.0)
        return (False, -value if self.maximize else value)


def child_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """Every run recorded as a child of ``parent``, in its experiment."""
    return search_runs(client, [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def search_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "", limit: int = 0) -> list[Run]:
    """Runs newest first, following MLflow's pages; ``limit`` 0 means all."""
    found: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string,
            order_by=["attributes.start_time DESC"],
            max_results=min(limit - len(found), 1000) if limit else 1000,
            page_token=token,
        )
        found += list(page)
        token = page.token
        if not token or (limit and len(found) >= limit):
            return found


def reap_store(client: MlflowClient) -> None:
    """Mark KILLED each RUNNING run of every experiment in the store whose process is gone (see
    :func:`nnexp.tracking.liveness.reap`), for a command that shows them all, such as ``nnexp ui``."""
    from nnexp.tracking.liveness import reap

    experiment_ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(page_token=token)
        experiment_ids += [experiment.experiment_id for experiment in page]
        token = page.token
        if not token:
            break
    if experiment_ids:
        reap(client, search_runs(client, experiment_ids, "attributes.status = 'RUNNING'"))


def settings(run: Run) -> dict[str, str]:
    """A run's params, plus the config group choices it recorded as tags (``model: deep_sigmoid``); a job that
    failed before its config was composed has only its overrides (tag ``overrides``), which then stand in."""
    given = dict(setting_overrides(run.data.tags.get("overrides", "").split()))
    choices = {key: run.data.tags[key] for key in CHOICE_TAGS if key in run.data.tags}
    return {**given, **run.data.params, **choices}


def varying_params(runs: Sequence[Run]) -> list[str]:
    """The settings whose values differ between the jobs among ``runs`` (not sweep or reproduce parents): the
    swept ones. When a group's choice differs, the choice stands for the group's fields."""
    recorded = [settings(run) for run in runs if "nnexp_command" not in run.data.tags]
    keys = sorted({key for values in recorded for key in values} - set(BOOKKEEPING_PARAMS))
    varying = [key for key in keys if len({values.get(key) for values in recorded}) > 1]
    groups = [key for key in varying if key in CHOICE_TAGS]
    return groups + [key for key in varying if key not in groups and key.split(".")[0] not in groups]


def shown_metrics(runs: Sequence[Run], ranking: Ranking) -> list[str]:
    """The ranking metric first, then the usual final metrics, those that some of ``runs`` have."""
    candidates = [ranking.metric, *(name for name in DEFAULT_METRICS if name != ranking.metric)]
    return [name for name in candidates if any(name in run.data.metrics for run in runs)] or [ranking.metric]


def sweep_view(parent_run_id: str, params: Sequence[str], metrics: Sequence[str], ranking: Ranking) -> str:
    """MLflow UI's view of a sweep's runs table (the JSON its "Share" button saves): the children alone, ``params``
    (a group's choice is a tag) and ``metrics`` as columns, best first by ``ranking``."""

    def column(kind: str, key: str) -> str:
        return f"{kind}.`{key}`"

    columns = [column("tags" if key in CHOICE_TAGS else "params", key) for key in params]
    columns += [column("metrics", name) for name in metrics]
    view = {
        "searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'",
        "orderByKey": column("metrics", ranking.metric),
        "orderByAsc": not ranking.maximize,
        "selectedColumns": columns,
    }
    return json.dumps(view)


def metric_value(run: Run, metric: str) -> float | None:
    value = run.data.metrics.get(metric)
    return None if value is None else float(value)


def format_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


@dataclass
class Table:
    """Rows of strings under named columns, rendered as Markdown, CSV or aligned text."""

    columns: list[str]
    rows: list[list[str]]

    def __post_init__(self) -> None:
        # Names, params and tags come from the store, where any run may have put an escape sequence or a newline.
        self.columns = [one_line(column) for column in self.columns]
        self.rows = [[one_line(cell) for cell in row] for row in self.rows]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def text(self, width: int | None = None) -> str:
        """Aligned columns; with ``width``, the widest cells are cut short (…) until every line fits, all but the
        run ids, which people copy."""
        widths = [max(len(cell) for cell in column) for column in zip(self.columns, *self.rows, strict=True)]
        if width is not None:
            widths = fitted(widths, width, [column == "run_id" for column in self.columns])
        lines = [self.columns, ["-" * width for width in widths], *self.rows]
        aligned = (
            "  ".join(cut(cell, width).ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines
        )
        return "\n".join(line.rstrip() for line in aligned)

    def render(self, form: str, width: int | None = None) -> str:
        return self.text(width) if form == "text" else {"markdown": self.markdown, "csv": self.csv}[form]()


#: The narrowest a column is cut to when a table must fit the terminal.
NARROWEST = 8


def fitted(widths: list[int], total: int, whole: list[bool]) -> list[int]:
    """Column widths that fit ``total`` characters with two spaces between columns, narrowing the widest column
    first; columns marked ``whole``, and any column at :data:`NARROWEST`, keep their width."""
    widths = list(widths)
    excess = sum(widths) + 2 * (len(widths) - 1) - total
    while excess > 0:
        narrowable = [i for i, width in enumerate(widths) if not whole[i] and width > NARROWEST]
        if not narrowable:
            break
        widest = max(narrowable, key=widths.__getitem__)
        widths[widest] -= 1
        excess -= 1
    return widths


def cut(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[: width - 1] + "…"


def terminal_width(wide: bool) -> int | None:
    """The terminal's width to fit tables into; none when told ``--wide`` or when the output is not a terminal."""
    return None if wide or not sys.stdout.isatty() else shutil.get_terminal_size().columns


def runs_table(runs: Sequence[Run], params: Sequence[str], metrics: Sequence[str], ranking: Ranking | None) -> Table:
    """One row per run: name, status, the chosen params and final metrics; best first when ``ranking`` is given."""
    ordered = list(runs)
    if ranking is not None:
        ordered.sort(key=lambda run: ranking.sort_key(metric_value(run, ranking.metric)))
    failures = any("failure_reason" in run.data.tags for run in ordered)
    columns = ["run", "status", *params, *metrics, "seconds", "run_id", *(["failure_reason"] if failures else [])]
    rows = []
    for run in ordered:
        seconds = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
        rows.append(
            [
                run.info.run_name or "",
                run.info.status,
                *(settings(run).get(key, "") for key in params),
                *(format_value(metric_value(run, metric)) for metric in metrics),
                "" if seconds is None else f"{seconds:.1f}",
                run.info.run_id,
                *([run.data.tags.get("failure_reason", "")] if failures else []),
            ]
        )
    return Table(columns, rows)


@dataclass
class Configuration:
    """The runs that share every swept param but the seed, and their objective's mean and spread."""

    params: dict[str, str]
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def configurations(runs: Sequence[Run], params: Sequence[str], ranking: Ranking) -> list[Configuration]:
    """Finished runs grouped over seeds, best mean first; empty unless ``seed`` is among ``params``."""
    if SEED not in params:
        return []
    others = [key for key in params if key != SEED]
    groups: dict[tuple[str, ...], Configuration] = {}
    for run in runs:
        value = metric_value(run, ranking.metric)
        if run.info.status != "FINISHED" or value is None:
            continue
        key = tuple(settings(run).get(name, "") for name in others)
        groups.setdefault(key, Configuration(dict(zip(others, key, strict=True)), [])).values.append(value)
    return sorted(groups.values(), key=lambda group: ranking.sort_key(group.mean))


def configurations_table(groups: Iterable[Configuration], params: Sequence[str], ranking: Ranking) -> Table:
    names = [key for key in params if key != SEED]
    rows = [
        [*(group.params[name] for name in names), f"{group.mean:.4f} ± {group.std:.4f}", str(len(group.values))]
        for group in groups
    ]
    return Table([*names, f"{ranking.metric} (mean ± std)", "seeds"], rows)


def open_experiment(uri: str | None, experiment: str) -> Tracker:
    """The existing store ``uri`` names (by default the project's) and its experiment ``experiment``."""
    from nnexp.tracking.store import existing_store, resolve_uri
    from nnexp.tracking.tracked_run import Tracker

    store = resolve_uri(uri, Path.cwd())
    existing_store(store, "run an experiment first, or name the store with --uri")
    return Tracker(store, experiment, create=False)


def find_sweep(client: MlflowClient, experiment_id: str, which: str) -> Run:
    """The sweep parent run ``which`` (a run id), or the newest sweep for ``last``."""
    if which == "last":
        sweeps = search_runs(client, [experiment_id], "tags.nnexp_command = 'sweep'", limit=1)
        if not sweeps:
            raise NnexpError("--sweep last: this experiment has no sweep yet")
        return sweeps[0]
    from nnexp.tracking.store import find_run

    return find_run(client, which, f"--sweep {which}: no such run")


def run_list(uri: str | None, experiment: str, limit: int, width: int | None = None) -> str:
    """The newest runs of ``experiment`` (``limit`` 0: all), after marking KILLED those whose process is gone:
    status, age, duration, where a running one lives, output folder, name and id."""
    from nnexp.tracking.liveness import HOST, PID, reap

    tracker = open_experiment(uri, experiment)
    runs, _ = reap(tracker.client, search_runs(tracker.client, [tracker.experiment_id], limit=limit))
    if not runs:
        return f"experiment {experiment} of {tracker.uri} has no runs yet"
    now = time.time()
    rows = []
    for run in runs:
        info, tags = run.info, run.data.tags
        running = info.status == "RUNNING"
        rows.append(
            [
                info.status,
                span(now - info.start_time / 1000),
                "" if running or not info.end_time else span((info.end_time - info.start_time) / 1000),
                f"{tags[HOST]}:{tags[PID]}" if running and HOST in tags and PID in tags else "",
                shown_path(tags.get("output_dir") or tags.get("sweep_dir") or ""),
                info.run_name or "",
                info.run_id,
            ]
        )
    table = Table(["status", "age", "duration", "host:pid", "folder", "run", "run_id"], rows)
    heading = f"experiment {experiment}: {len(runs)} run{'' if len(runs) == 1 else 's'}, newest first"
    return f"{heading}\n\n{table.text(width)}"


def span(seconds: float) -> str:
    """A duration as people say it: 42 s, 12 min, 3.5 h, 2.0 d."""
    if seconds < 60:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies inside it."""
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
