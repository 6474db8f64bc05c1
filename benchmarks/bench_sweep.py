"""Time a 12-job moons sweep run sequentially (Hydra's basic launcher) and with joblib's 2 worker processes.

Usage: python benchmarks/bench_sweep.py [--repeat N] [--epochs E]
Each repetition runs both launchers, alternating which goes first, in a fresh project folder with its own MLflow
store, through the real CLI; the wall time is the whole command's. Prints one Markdown section (median, min, max
seconds and the speed-up, pair by pair, and the machine's facts) to stdout, progress to stderr. Not part of CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import Load

REPO = Path(__file__).resolve().parents[1]
SWEEP = ("model=two_layer,deep_sigmoid", "optimizer.learning_rate=0.1,0.01,0.001", "seed=1,2")
LAUNCHERS = {
    "sequential (basic launcher)": (),
    "joblib, 2 workers": ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
}


def run_sweep(launcher: tuple[str, ...], epochs: int) -> float:
    """Wall seconds of one whole sweep command in a new project folder; raises if it fails."""
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        shutil.copytree(REPO / "conf", project / "conf")
        command = [sys.executable, "-m", "nnexp", "-m", *launcher, *SWEEP, f"trainer.epochs={epochs}"]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        started = time.perf_counter()
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
        return seconds


def machine() -> str:
    from threadpoolctl import threadpool_info

    import nnexp

    blas = ", ".join(
        f"{pool['internal_api']} {pool.get('version')} ({pool.get('architecture')}, {pool['num_threads']} threads)"
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    )
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"nnexp {nnexp.__version__}; BLAS: {blas or 'unknown'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1000, help="epochs per job (default: 1000)")
    args = parser.parse_args()
    load = Load(children=True)
    seconds: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    names = list(LAUNCHERS)
    for repetition in range(args.repeat):
        for name in names if repetition % 2 == 0 else names[::-1]:
            seconds[name].append(run_sweep(LAUNCHERS[name], args.epochs))
            print(f"{name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
    sequential, parallel = (seconds[name] for name in names)
    ratios = [before / after for before, after in zip(sequential, parallel, strict=True)]
    print("## Sweeps: a 12-job moons sweep, sequential against joblib with 2 workers (goal 8)\n")
    print(f"12-job moons sweep ({' '.join(SWEEP)} trainer.epochs={args.epochs}), whole command, {args.repeat} runs\n")
    print("| launcher | median s | min s | max s |\n|---|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    print(
        f"\nspeed-up of joblib over sequential, pair by pair: {', '.join(f'{r:.2f}x' for r in ratios)} "
        f"(median {statistics.median(ratios):.2f}x)\n\nmachine: {machine()}\n\n"
        f"Ran `{shlex.join(['python', 'benchmarks/bench_sweep.py', *sys.argv[1:]])}`; {load.summary()}."
    )


if __name__ == "__main__":
    main()
