"""The argument parser of every ``nnexp`` sub-command: a bad command line is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
from typing import NoReturn

from nnexp.errors import NnexpError, one_line


class ArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors read ``error: <prog>: <message> (see <prog> --help)``
    instead of a usage block; the sub-command parsers it adds are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--uri`` and ``--experiment``, which every command reading runs takes."""
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else ./outputs/mlflow.db)")
    parser.add_argument("--experiment", default="nnexp", help="MLflow experiment (default: nnexp)")


def add_limit(parser: argparse.ArgumentParser, what: str) -> None:
    """``--limit N`` (the N newest ``what``, 20 by default) or ``--all``, as every command listing runs offers them."""
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--limit", type=int, default=20, metavar="N", help=f"the N newest {what} (default: 20)")
    shown.add_argument("--all", action="store_true", help=f"all {what}")


def limit(args: argparse.Namespace) -> int:
    """The ``--limit`` :func:`add_limit` added, once checked; 0 (no limit) for ``--all``."""
    if args.limit < 1:
        raise NnexpError(f"--limit must be >= 1, got {args.limit}")
    return 0 if args.all else args.limit
