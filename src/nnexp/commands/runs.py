"""``nnexp runs``: list an experiment's runs, newest first, marking KILLED those whose process is gone."""

from __future__ import annotations

import sys
from pathlib import Path

from nnexp.commands.arguments import ArgumentParser, add_limit, add_store_options, limit
from nnexp.errors import NnexpError, report


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="nnexp runs",
        description="List MLflow runs newest first: status, age, duration, host:pid of running ones, output folder, "
        "name and id. A RUNNING run whose process has ended is marked KILLED first, and said so on stderr.",
    )
    add_store_options(parser)
    add_limit(parser, "runs of the experiment")
    parser.add_argument("--wide", action="store_true", help="do not cut columns to the terminal's width")
    args = parser.parse_args(argv)
    from nnexp.tracking.leftovers import discard_leftover_folders
    from nnexp.tracking.tables import run_list, shown_path, terminal_width

    for orphan in discard_leftover_folders(Path.cwd(), args.uri):
        left = f"{shown_path(orphan.folder)}: left at setup by a run whose {orphan.why}"
        if orphan.opened:
            left = (
                f"{shown_path(orphan.folder)}: left by a run whose {orphan.why} while its MLflow run was being "
                "opened, and no run in the store names it"
            )
        if orphan.kept:
            more = ", ..." if len(orphan.kept) > 3 else ""
            print(f"kept {left}, but it holds files nnexp did not write: {', '.join(orphan.kept[:3])}{more}",
                  file=sys.stderr)
        else:
            print(f"removed {left}", file=sys.stderr)
    try:
        print(run_list(args.uri, args.experiment, limit(args), terminal_width(args.wide)))
    except NnexpError as exc:
        report(exc)
        return 1
    return 0
