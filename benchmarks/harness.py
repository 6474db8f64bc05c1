"""What the benchmark scripts that train nnexp in their own process share: the thread limit, the matrix-product
peak, timing that measures again while other processes are busy, progress on stderr, and the closing lines that
say what was run and under which load.

Imports NumPy: a script imports nnexp before this module, so that OpenBLAS starts with nnexp's settings.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from machine import Contention, Load
from threadpoolctl import threadpool_limits

from nnexp.core.parallel import THREAD_LIMIT_VARIABLES

T = TypeVar("T")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mnist_parser(doc: str) -> argparse.ArgumentParser:
    """A command-line parser described by the first line of ``doc``, the script's docstring, taking MNIST_DIR."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("mnist_dir", help="folder with the four MNIST IDX files")
    return parser


def parse(
    parser: argparse.ArgumentParser, children: bool = False
) -> tuple[argparse.Namespace, Conditions, threadpool_limits]:
    """Add ``--threads``, ``--max-others`` and ``--retries`` to ``parser`` and parse the command line; returns the
    options, the :class:`Conditions` from now on (``children``: not counting the CPU of this process's finished
    children as others'), and the context that limits the BLAS threads (:func:`limit_threads`).
    """
    parser.add_argument("--threads", type=int, default=2, help="BLAS and nnexp threads, for every side (default 2)")
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.25,
        help="measure again when other processes used more CPU than this meanwhile, in cores (default 0.25)",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-measurements allowed per measurement (default 2)")
    args = parser.parse_args()
    return args, Conditions(args.threads, args.max_others, args.retries, children), limit_threads(args.threads)


def limit_threads(threads: int) -> threadpool_limits:
    """Cap nnexp's element-wise threads, which read :data:`THREAD_LIMIT_VARIABLES` at first use, so call this before the
    first training; returns the context that caps the BLAS libraries already loaded (threadpoolctl)."""
    for variable in THREAD_LIMIT_VARIABLES:
        os.environ[variable] = str(threads)
    return threadpool_limits(threads)


def matmul_peak(batch: int, inputs: int, outputs: int, repeat: int) -> float:
    """GFLOP/s of float32 products ``batch x inputs @ inputs x outputs``; the best of ``repeat`` runs of 20."""
    rng = np.random.default_rng(0)
    a, b = rng.random((batch, inputs), dtype=np.float32), rng.random((inputs, outputs), dtype=np.float32)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(20):
            a @ b
        best = min(best, (time.perf_counter() - started) / 20)
    return 2 * batch * inputs * outputs / best / 1e9


def timed(run: Callable[[], T]) -> tuple[T, float]:
    """What ``run()`` returns, and the cores' worth of CPU other processes used while it ran."""
    meter = Contention()
    return run(), meter.others()


def until_quiet(
    measure: Callable[[], tuple[T, float]], max_others: float, retries: int, label: str
) -> tuple[T, float, int]:
    """Call ``measure``, which returns a result and the cores other processes used meanwhile (the most of its timed
    parts); while that is above ``max_others``, discard the result and measure again, at most ``retries`` times (the
    last result is kept whatever the load). Returns the kept result, its others' cores, and how many were discarded.
    """
    result, others = measure()
    discarded = 0
    while others > max_others and discarded < retries:
        discarded += 1
        progress(f"{label}: discarded, other processes used {others:.2f} cores meanwhile; again")
        result, others = measure()
    return result, others, discarded


class Conditions(Load):
    """The load a training benchmark ran under, from its start, with its thread count and re-measuring limits."""

    def __init__(self, threads: int, max_others: float, retries: int, children: bool = False) -> None:
        super().__init__(children)
        self.threads, self.max_others, self.retries = threads, max_others, retries

    def report(self, what: str, unit: str, discarded: int, kept_others: list[float]) -> list[str]:
        """The closing lines: the command, ``what`` it measured, threads, time, load and other processes' CPU, and a
        warning when the machine was busy. ``unit`` names one measurement (an epoch, a pair), ``discarded`` counts
        those measured again, ``kept_others`` are other processes' cores during each kept one."""
        again = (
            f"{discarded} {unit}(s) during which they used more than {self.max_others} cores were discarded and "
            f"measured again, up to {self.retries} times each"
            if self.retries
            else "none measured again, --retries 0"
        )
        command = shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
        ran = (
            f"- Ran `{command}`: {what}; {self.threads} thread(s) (threadpoolctl for BLAS, and "
            f"{'/'.join(THREAD_LIMIT_VARIABLES)} for nnexp); {self.summary()} (the last column: the most during one "
            f"kept {unit}; {again})."
        )
        average, worst = self.contention.others(), max(kept_others, default=0.0)
        if average <= self.max_others and worst <= self.max_others:
            return [ran]
        return [
            ran,
            f"- **Warning: the machine was busy.** Other processes used {average:.2f} cores on average and up to "
            f"{worst:.2f} during a kept measurement (limit {self.max_others}); the times above may be too slow. "
            "Run again on an idle machine.",
        ]
