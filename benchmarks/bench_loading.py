"""Time MNIST loading: the CSV parser on the full 60,000-row file, and whole mnist_idx / mnist_csv loads.

Usage: python benchmarks/bench_loading.py MNIST_DIR [--repeat N]
MNIST_DIR holds the four IDX files (gzipped or not); the CSV files are written to a temporary folder first.
Prints one Markdown section (median, min and max seconds) to stdout, progress to stderr. Not part of CI.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import Load

from nnexp import DATASETS
from nnexp.datasets.csv_format import read_csv
from nnexp.datasets.mnist_download import convert_to_csv


def timings(task: Callable[[], object], repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        task()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load = Load()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        train_csv, test_csv = convert_to_csv(args.mnist_dir, Path(scratch))
        tasks = {
            "read_csv, 60,000-row training CSV": lambda: read_csv(train_csv),
            "mnist_csv load (train + test, split, float32)": lambda: DATASETS.build(
                {"name": "mnist_csv", "train_path": str(train_csv), "test_path": str(test_csv)}
            ).load(rng),
            "mnist_idx load (gzipped IDX, split, float32)": lambda: DATASETS.build(
                {"name": "mnist_idx", "path": str(args.mnist_dir)}
            ).load(rng),
        }
        rows = []
        for name, task in tasks.items():
            print(f"timing {name} ...", file=sys.stderr, flush=True)
            seconds = timings(task, args.repeat)
            median, low, high = statistics.median(seconds), min(seconds), max(seconds)
            rows.append(f"| {name} | {median:.2f} | {low:.2f} | {high:.2f} | {args.repeat} |")
    print("## MNIST loading\n\n| task | median s | min s | max s | runs |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print(
        f"\nRan `{shlex.join(['python', 'benchmarks/bench_loading.py', *sys.argv[1:]])}`, each task in turn; "
        f"{load.summary()}."
    )


if __name__ == "__main__":
    main()
