"""Tables of MLflow runs: the sweep summary, ``nnexp compare`` and ``nnexp runs`` build theirs here."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from nnexp.commands.arguments import ArgumentParser, add_limit, add_store_options, limit
from nnexp.errors import NnexpError, one_line, report
from nnexp.tracking.tables import (
    DEFAULT_METRICS,
    Ranking,
    child_runs,
    find_sweep,
    open_experiment,
    runs_table,
    search_runs,
    settings,
    shown_metrics,
    terminal_width,
    varying_params,
)

if TYPE_CHECKING:
    pass


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="nnexp compare",
        description="Print MLflow runs side by side: an experiment's latest runs, or the children of one sweep.",
    )
    add_store_options(parser)
    parser.add_argument(
        "--sweep", metavar="RUN_ID|last", help="the children of this sweep's parent run; 'last' is the newest sweep"
    )
    parser.add_argument("--params", type=_names, metavar="KEY,...", help="params to show (default: those that vary)")
    parser.add_argument(
        "--metrics", type=_names, metavar="NAME,...", help=f"final metrics (default: {','.join(DEFAULT_METRICS)})"
    )
    parser.add_argument("--sort", metavar="METRIC", help="rank by this metric (default: the runs' objective)")
    add_limit(parser, "runs of the experiment (without --sweep)")
    parser.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    parser.add_argument("--wide", action="store_true", help="do not cut text columns to the terminal's width")
    args = parser.parse_args(argv)
    try:
        print(compare(args))
    except NnexpError as exc:
        report(exc)
        return 1
    return 0


def compare(args: argparse.Namespace) -> str:
    from nnexp.tracking.liveness import reap

    newest = limit(args)
    tracker = open_experiment(args.uri, args.experiment)
    client = tracker.client
    if args.sweep:
        [parent], _ = reap(client, [find_sweep(client, tracker.experiment_id, args.sweep)])
        runs, _ = reap(client, child_runs(client, parent))
        heading = f"{one_line(parent.info.run_name)} ({parent.info.run_id}): {len(runs)} runs"
    else:
        runs, _ = reap(client, search_runs(client, [tracker.experiment_id], limit=newest))
        heading = f"experiment {args.experiment}: {len(runs)} newest runs"
    if not runs:
        raise NnexpError(f"no runs to compare in {heading.rsplit(':', 1)[0]} of {tracker.uri}")
    ranking = Ranking.of(runs, args.sort)
    metrics = args.metrics or shown_metrics(runs, ranking)
    params = args.params if args.params is not None else varying_params(runs)
    unknown = [key for key in params if not any(key in settings(run) for run in runs)]
    if unknown:
        raise NnexpError(f"--params: no run has {', '.join(unknown)}")
    for option, names in (("--metrics", args.metrics or []), ("--sort", [args.sort] if args.sort else [])):
        missing = [name for name in names if not any(name in run.data.metrics for run in runs)]
        if missing:
            raise NnexpError(f"{option}: no run has the metric {', '.join(missing)}")
    table = runs_table(runs, params, metrics, ranking if args.sweep or args.sort else None)
    if args.format == "csv":
        return table.csv()
    return f"{heading}\n\n{table.render(args.format, terminal_width(args.wide))}"
