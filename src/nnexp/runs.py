"""``nnexp runs``: list an experiment's runs, newest first, marking KILLED those whose process is gone."""

from __future__ import annotations

import sys

from nnexp.arguments import ArgumentParser
from nnexp.errors import NnexpError


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="nnexp runs",
        description="List MLflow runs newest first: status, age, duration, host:pid of running ones, output folder, "
        "name and id. A RUNNING run whose process has ended is marked KILLED first, and said so on stderr.",
    )
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else ./outputs/mlflow.db)")
    parser.add_argument("--experiment", default="nnexp", help="MLflow experiment (default: nnexp)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--limit", type=int, default=20, metavar="N", help="the N newest runs (default: 20)")
    shown.add_argument("--all", action="store_true", help="every run of the experiment")
    parser.add_argument("--wide", action="store_true", help="do not cut columns to the terminal's width")
    args = parser.parse_args(argv)
    from nnexp.compare import run_list, terminal_width

    try:
        if args.limit < 1:
            raise NnexpError(f"--limit must be >= 1, got {args.limit}")
        print(run_list(args.uri, args.experiment, 0 if args.all else args.limit, terminal_width(args.wide)))
    except NnexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
