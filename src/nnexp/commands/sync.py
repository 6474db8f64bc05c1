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
    from nnexp.tracking.store import OUTBOX

    try:
        if not (args.folder / OUTBOX).exists():
            mark_if_ended(args.folder)
        print(sync(args.folder, args.uri))
    except NnexpError as exc:
        report(exc)
        return 1
    return 0


def mark_if_ended(folder: Path) -> None:
    """A folder without an outbox has nothing to send, but its run was looked at: if the checkpoint there names a
    run whose process is gone, that run is marked KILLED, as every command that reads runs does."""
    from nnexp.job import checkpoint
    from nnexp.job.resume import checkpoint_run
    from nnexp.tracking import liveness

    try:
        client, run, _ = checkpoint_run(checkpoint.load(folder / "checkpoints"), Path.cwd())
    except NnexpError:  # no checkpoint, or no store: nothing nnexp can tell about the run
        return
    liveness.reap_unless_deleted(client, run)
