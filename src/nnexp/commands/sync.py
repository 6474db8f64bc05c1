"""``nnexp sync FOLDER``: send a run's outbox (what a tracking store missed while it was away) to the store."""

from __future__ import annotations

from pathlib import Path

from nnexp.commands.arguments import ArgumentParser
from nnexp.errors import NnexpError, report


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="nnexp sync",
        description="Send the metrics, tags, artifacts and final status a run kept in FOLDER/mlflow_outbox.json "
        "because its tracking store did not answer, once the store is back.",
    )
    parser.add_argument("folder", type=Path, help="the run's output folder, as the run's error message names it")
    parser.add_argument("--uri", help="send to this tracking URI instead of the one the run used")
    args = parser.parse_args(argv)
    from nnexp.tracking.outbox import sync

    try:
        print(sync(args.folder, args.uri))
    except NnexpError as exc:
        report(exc)
        return 1
    return 0
