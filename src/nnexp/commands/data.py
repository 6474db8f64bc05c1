"""``nnexp data mnist``: fetch the four MNIST files from public mirrors, check their SHA-256, optionally write CSVs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from nnexp.commands.arguments import ArgumentParser
from nnexp.datasets.mnist import CSV_FILES, default_mnist_dir
from nnexp.datasets.mnist_download import (
    DEFAULT_TIMEOUT,
    MIN_BYTES_PER_TIMEOUT,
    MIRRORS,
    convert_to_csv,
    download_mnist,
    progress_line,
)
from nnexp.errors import Interrupted, NnexpError, report

if TYPE_CHECKING:
    pass


def parser() -> ArgumentParser:
    """The ``nnexp data`` command line."""
    commands = ArgumentParser(prog="nnexp data", description="Download data sets that nnexp trains on.")
    datasets = commands.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    mnist = datasets.add_parser(
        "mnist",
        help="the MNIST digits, for dataset=mnist_idx (and dataset=mnist_csv with --csv)",
        description="Download the four MNIST archives, check their SHA-256, and skip those already present.",
    )
    mnist.add_argument(
        "directory",
        nargs="?",
        type=Path,
        metavar="DIR",
        help=f"where to put them (default: {default_mnist_dir()}, where dataset=mnist_idx looks)",
    )
    mnist.add_argument(
        "--csv", action="store_true", help=f"also write {' and '.join(CSV_FILES)} in DIR, for dataset=mnist_csv"
    )
    mnist.add_argument(
        "--mirror",
        action="append",
        metavar="URL",
        help="a base URL to fetch from instead of the public mirrors; repeat it to try several in order",
    )
    mnist.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for each mirror, in which it must send at least {MIN_BYTES_PER_TIMEOUT // 1024} KiB "
        f"(default: {DEFAULT_TIMEOUT:g})",
    )
    return commands


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return seconds


def main(argv: list[str]) -> int:
    """Run ``nnexp data ARGV``; 0 on success, 1 on an error (printed as one line), 130 when interrupted."""
    commands = parser()
    try:
        args = commands.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error that argparse has printed
        return exc.code if isinstance(exc.code, int) else 2
    directory = args.directory if args.directory is not None else default_mnist_dir()
    try:
        download_mnist(directory, args.mirror or MIRRORS, args.timeout)
        if args.csv:
            convert_to_csv(directory, directory)
    except NnexpError as exc:
        report(exc)
        return 1
    except OSError as exc:  # the directory is not writable, or the disk is full
        report(f"cannot write {exc.filename or directory}: {exc.strerror or exc}")
        return 1
    except KeyboardInterrupt as exc:
        stop = Interrupted.of(exc)
        report(f"{stop}; no partial files were left behind")
        return stop.exit_code
    progress_line(f"MNIST is ready in {directory}")
    return 0
