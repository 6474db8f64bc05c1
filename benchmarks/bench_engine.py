"""The compiled engine against the NumPy path: small minibatches, compilation, and a preset end to end (issue 13).

a. The default moons run (2-64-64-2 ReLU, cross-entropy, Adam, batch 32, 50 epochs): ``Trainer.fit`` with
   ``engine=numpy`` and ``engine=compiled`` from the same initial weights, alternating A B A B ... in one process
   (goal 4: compiled at least 5x faster).
b. Compilation (goal 5): a fresh Python process that imports nnexp and trains a tiny MLP for one epoch, with
   ``engine=compiled`` and an empty Numba cache (the first run after installing), with the cache filled by that run,
   and with ``engine=numpy``; the cached and NumPy processes alternate. Then the default moons run for one epoch
   through the CLI (``python -m nnexp trainer.epochs=1``), ``trainer.engine=numpy`` against ``compiled`` with the
   kernels cached, alternating, wall and CPU seconds (user + system, every thread): there the kernels load while
   the data and MLflow do. Goal: a cached run adds at most 0.5 s.
c. ``python -m nnexp experiment=moons_deep_sigmoid`` end to end, ``trainer.engine=numpy`` against the default
   ``auto`` (which compiles), alternating, in a scratch folder with its own MLflow store.

Usage: python benchmarks/bench_engine.py [--pairs N] [--process-pairs N] [--cli-pairs N] [--preset-pairs N]
       [--threads T]
Prints one Markdown section to stdout, progress to stderr. Not part of CI.
"""

from __future__ import annotations

import nnexp  # noqa: F401 - before NumPy, so that OpenBLAS's idle threads sleep soon, as under `python -m nnexp`

# isort: split

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import parse, progress, timed, until_quiet

from nnexp import DATASETS, LOSSES, MODELS, OPTIMIZERS, Examples, Trainer
from nnexp.core.training import evaluate

REPO = Path(__file__).resolve().parents[1]
TINY_FIT = """
import time
started = time.perf_counter()
import numpy as np
from nnexp import LOSSES, MODELS, OPTIMIZERS, Examples, Trainer
rng = np.random.default_rng(0)
loss = LOSSES.build({"name": "cross_entropy"})
network = MODELS.build({"name": "mlp"}).build(2, 2, loss, rng, np.float32)
x = rng.normal(size=(64, 2)).astype(np.float32)
y = (x[:, 0] > 0).astype(int)
train = Examples(x, loss.encode(y, 2, np.float32), y)
Trainer(1, 32, engine="%s").fit(network, loss, OPTIMIZERS.build({"name": "adam"}), train, rng)
print(time.perf_counter() - started)
"""


def default_moons(engine: str, seed: int, epochs: int) -> tuple[float, float]:
    """Seconds of ``Trainer.fit`` for the default moons run, and its test accuracy."""
    rng = np.random.default_rng(seed)
    splits = DATASETS.build({"name": "moons"}).load(np.random.default_rng(0))
    loss = LOSSES.build({"name": "cross_entropy"})
    network = MODELS.build({"name": "mlp"}).build(splits.n_features, splits.n_classes, loss, rng, np.float32)
    x = splits.x_train.astype(np.float32)
    train = Examples(x, loss.encode(splits.y_train, splits.n_classes, np.float32), splits.y_train)
    trainer = Trainer(epochs, 32, engine=engine)
    started = time.perf_counter()
    trainer.fit(network, loss, OPTIMIZERS.build({"name": "adam"}), train, rng)
    seconds = time.perf_counter() - started
    test = Examples(
        splits.x_test.astype(np.float32), loss.encode(splits.y_test, splits.n_classes, np.float32), splits.y_test
    )
    return seconds, evaluate(network, loss, test)[1]


def process_seconds(engine: str, cache: str) -> float:
    """Wall seconds of a fresh process that imports nnexp and trains a tiny MLP for one epoch with ``engine``."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", TINY_FIT % engine], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def cli_seconds(engine: str, folder: Path, cache: str, index: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``python -m nnexp trainer.engine=<engine> trainer.epochs=1`` with Numba's ``cache``."""
    command = [
        sys.executable, "-m", "nnexp", f"trainer.engine={engine}", "trainer.epochs=1",
        f"hydra.run.dir={folder / f'cli{index}-{engine}'}", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env={**os.environ, "NUMBA_CACHE_DIR": cache}, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def added(slow: list[float], fast: list[float]) -> str:
    """``slow - fast`` pair by pair, with the median."""
    pairwise = [a - b for a, b in zip(slow, fast, strict=True)]
    return ", ".join(f"{d:+.2f}" for d in pairwise) + f" (median {statistics.median(pairwise):+.2f})"


def preset_seconds(engine: str, folder: Path, index: int) -> float:
    """Wall seconds of ``python -m nnexp experiment=moons_deep_sigmoid trainer.engine=<engine>``."""
    command = [
        sys.executable, "-m", "nnexp", "experiment=moons_deep_sigmoid", f"trainer.engine={engine}",
        f"hydra.run.dir={folder / f'run{index}-{engine}'}", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def ratios(slow: list[float], fast: list[float]) -> str:
    pairwise = [a / b for a, b in zip(slow, fast, strict=True)]
    return ", ".join(f"{r:.2f}" for r in pairwise) + f" (median {statistics.median(pairwise):.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="alternating pairs of the default moons run")
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the default moons run (default 50)")
    parser.add_argument("--process-pairs", type=int, default=3, help="alternating pairs of fresh processes")
    parser.add_argument("--cli-pairs", type=int, default=5, help="alternating pairs of one-epoch CLI runs")
    parser.add_argument("--preset-pairs", type=int, default=1, help="pairs of moons_deep_sigmoid runs (0: skip)")
    args, conditions, threads = parse(parser)
    out = ["## The compiled engine against the NumPy path (issue 13)", ""]
    discarded, kept = 0, []
    with threads:
        default_moons("compiled", 0, 1)  # outside the timed part: the kernels load from Numba's cache
        rows: dict[str, list[tuple[float, float]]] = {"numpy": [], "compiled": []}
        for pair in range(args.pairs):
            order = ["numpy", "compiled"] if pair % 2 == 0 else ["compiled", "numpy"]

            def run_pair(pair: int = pair, order: list[str] = order) -> tuple[dict[str, tuple[float, float]], float]:
                results, busiest = {}, 0.0
                for engine in order:
                    results[engine], others = timed(lambda engine=engine: default_moons(engine, pair, args.epochs))
                    busiest = max(busiest, others)
                    progress(f"default moons pair {pair + 1}: {engine} {results[engine][0]:.2f} s")
                return results, busiest

            results, others, again = until_quiet(run_pair, args.max_others, args.retries, f"pair {pair + 1}")
            discarded, kept = discarded + again, [*kept, others]
            for engine, result in results.items():
                rows[engine].append(result)
        seconds = {engine: [s for s, _ in values] for engine, values in rows.items()}
        accuracy = {engine: [a for _, a in values] for engine, values in rows.items()}
        out += [
            "| measurement | numpy, s (per pair) | compiled, s (per pair) | numpy / compiled, pair by pair |",
            "|---|---|---|---|",
            f"| default moons run, {args.epochs} epochs of `Trainer.fit` (2-64-64-2, Adam, batch 32, float32) | "
            f"{', '.join(f'{s:.2f}' for s in seconds['numpy'])} | {', '.join(f'{s:.2f}' for s in seconds['compiled'])}"
            f" | {ratios(seconds['numpy'], seconds['compiled'])} |",
        ]
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as folder:
            first = process_seconds("compiled", cache) if args.process_pairs else 0.0
            if args.process_pairs:
                progress(f"first compiled process (empty cache): {first:.2f} s")
            cached, plain = [], []
            for pair in range(args.process_pairs):
                for engine in ["numpy", "compiled"] if pair % 2 == 0 else ["compiled", "numpy"]:
                    (cached if engine == "compiled" else plain).append(process_seconds(engine, cache))
                progress(f"process pair {pair + 1}: numpy {plain[-1]:.2f} s, compiled (cached) {cached[-1]:.2f} s")
            if args.cli_pairs:  # the CLI's own kernels' signatures into the cache
                cli_seconds("compiled", Path(folder), cache, -1)
            cli: dict[str, list[tuple[float, float]]] = {"numpy": [], "compiled": []}
            for pair in range(args.cli_pairs):
                for engine in ["numpy", "compiled"] if pair % 2 == 0 else ["compiled", "numpy"]:
                    cli[engine].append(cli_seconds(engine, Path(folder), cache, pair))
                numpy_wall, compiled_wall = cli["numpy"][-1][0], cli["compiled"][-1][0]
                progress(f"CLI pair {pair + 1}: numpy {numpy_wall:.2f} s, compiled {compiled_wall:.2f} s")
        if args.process_pairs:
            out += [
                f"| fresh process: import nnexp, one epoch of a tiny MLP; compiled with an empty Numba cache (once) | "
                f"{', '.join(f'{s:.2f}' for s in plain)} | {first:.2f} | compiling adds "
                f"{first - statistics.median(plain):.1f} s |",
                f"| the same, compiled with the kernels cached | {', '.join(f'{s:.2f}' for s in plain)} | "
                f"{', '.join(f'{s:.2f}' for s in cached)} | the cache adds {added(cached, plain)} s |",
            ]
        if args.cli_pairs:
            wall = {engine: [w for w, _ in values] for engine, values in cli.items()}
            cpu = {engine: [c for _, c in values] for engine, values in cli.items()}
            out += [
                "| `python -m nnexp trainer.epochs=1` (default moons run), wall, compiled with the kernels cached | "
                f"{', '.join(f'{s:.2f}' for s in wall['numpy'])} | {', '.join(f'{s:.2f}' for s in wall['compiled'])} "
                f"| compiled adds {added(wall['compiled'], wall['numpy'])} s (goal <= 0.5 s) |",
                f"| the same, CPU seconds (user + system, all threads) | {', '.join(f'{s:.2f}' for s in cpu['numpy'])} "
                f"| {', '.join(f'{s:.2f}' for s in cpu['compiled'])} | compiled adds "
                f"{added(cpu['compiled'], cpu['numpy'])} s |",
            ]
        if args.preset_pairs:
            with tempfile.TemporaryDirectory() as folder:
                before, after = [], []
                for pair in range(args.preset_pairs):
                    for engine in ["numpy", "auto"] if pair % 2 == 0 else ["auto", "numpy"]:
                        times = before if engine == "numpy" else after
                        times.append(preset_seconds(engine, Path(folder), pair))
                        progress(f"preset pair {pair + 1}: {engine} {times[-1]:.1f} s")
            out.append(
                f"| `python -m nnexp experiment=moons_deep_sigmoid` end to end (numpy; auto = compiled) | "
                f"{', '.join(f'{s:.1f}' for s in before)} | {', '.join(f'{s:.1f}' for s in after)} | "
                f"{ratios(before, after)} |"
            )
    mean = {engine: 100 * statistics.fmean(values) for engine, values in accuracy.items()}
    out += [
        "",
        f"- Default moons run: test accuracy {mean['numpy']:.2f}% (numpy) and {mean['compiled']:.2f}% (compiled), "
        "mean over the pairs; each pair starts both engines from the same initial weights and shuffles.",
        *conditions.report(
            f"{args.pairs} pair(s) of the default moons run, {args.process_pairs} pair(s) of fresh processes, "
            f"{args.cli_pairs} pair(s) of one-epoch CLI runs, {args.preset_pairs} pair(s) of the moons_deep_sigmoid "
            "preset",
            "pair",
            discarded,
            kept,
        ),
    ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
