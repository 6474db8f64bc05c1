"""Where a run's wall time goes, and its peak memory: start-up, data, training, MLflow, plots, model, checkpoints.

Usage: python benchmarks/bench_overhead.py [MNIST_DIR] [--repeat N] [--runs N] [--sweeps N] [--sweep-only]
                                           [--launcher basic|joblib]
Runs the real CLI in a scratch project with its own MLflow store: the default run (two moons) and the Keras MNIST
preset (``experiment=mnist_keras_mlp``, 5 epochs) on MNIST_DIR, alternating, ``--repeat`` times each after one
untimed run of each (which creates the store and warms the disk cache). Each run records the wall seconds of its
phases as ``system/*_seconds`` metrics (and, for phases that overlap others, ``system/*_hidden_seconds``);
they are read back from the store, and the rest of the command's wall time
is start-up (until the run begins: its end time minus ``system/run_seconds``) and exit (from the moment the run
logged them). Peak resident memory is the child's own (``wait4``). Also times ``--help`` and two config
errors ``--runs`` times each, and ``--sweeps`` times a 12-job basic-launcher sweep of default 50-epoch runs
(``-m seed=1,...,12``): its wall time minus the sum of its jobs' training, per job, and each job's phases read from
its child run; ``--sweep-only`` times the sweep alone, and ``--launcher joblib`` runs it on Hydra's joblib launcher
(two worker processes, which each import what the jobs need once). Prints a Markdown section. MNIST_DIR defaults to
/work/shared/data/mnist or nnexp's MNIST cache, whichever exists; without either the MNIST rows are skipped. Not
part of CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from machine import Contention, Load

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = Path("/work/shared/data/mnist")
RUN_ID = re.compile(r"; run ([0-9a-f]{32});")
SWEEP_ID = re.compile(r"^sweep ([0-9a-f]{32}):", re.MULTILINE)
SWEEP_JOBS = 12
SWEEP = ("-m", "seed=" + ",".join(str(seed) for seed in range(1, SWEEP_JOBS + 1)), "trainer.epochs=50")
#: What each launcher adds to :data:`SWEEP`.
LAUNCHERS = {"basic": (), "joblib": ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")}
#: The phases a run records (``system/<name>_seconds``), in the order they happen, with how the table names them.
PHASES = {
    "setup": "setup (config checks, tags, git state)",
    "mlflow_setup": "MLflow: import, open the store",
    "data": "data: load, check, encode",
    "data_digest": "data: digest (SHA-256)",
    "training": "training",
    "evaluation": "evaluation on the test split",
    "checkpoints": "checkpoints",
    "plots": "plots (matplotlib import included)",
    "model": "model files (weights, MLflow model folder, config)",
    "mlflow_logging": "MLflow: run, params, metrics, artifacts, model upload",
}
#: The phases the issue's 3% goal counts: MLflow, plotting and checkpointing.
OVERHEAD = ("mlflow_setup", "mlflow_logging", "checkpoints", "plots", "model")
#: The phases whose work runs in a thread, overlapping others: they also record ``system/<phase>_hidden_seconds``,
#: the part of their work the run did not wait for (already counted in other phases).
OVERLAPPED = ("data_digest", "mlflow_setup", "plots")
QUICK_COMMANDS = {
    "--help": ("--help",),
    "dataset=mnist_idx --help": ("dataset=mnist_idx", "--help"),
    "config error: dataset=nope": ("dataset=nope",),
    "config error: trainer.epochs=-1": ("trainer.epochs=-1",),
}


@dataclass
class Run:
    """One command: when it started and ended (``time.time``), its peak resident MB, and others' CPU meanwhile;
    for a run, the phases it recorded and when it logged them."""

    started: float
    ended: float
    peak_mb: float
    others: float
    phases: dict[str, float] = field(default_factory=dict)
    hidden: dict[str, float] = field(default_factory=dict)
    logged: float = 0.0
    #: The command's CPU seconds (user and system, its threads' too), which other processes' load changes less.
    cpu: float = 0.0

    def waited(self, name: str) -> float:
        """The seconds of phase ``name`` that the run waited for: all of them, but for an overlapped phase."""
        return self.phases.get(name, 0.0) - self.hidden.get(name, 0.0)

    @property
    def wall(self) -> float:
        return self.ended - self.started

    @property
    def startup(self) -> float:
        """From the process's start to the run's: imports, plugins, Hydra's composition."""
        return self.logged - self.phases["run"] - self.started

    @property
    def exit(self) -> float:
        """From the moment the run logged its phases to the process's end: ending the run, interpreter shutdown."""
        return self.ended - self.logged

    @property
    def unaccounted(self) -> float:
        """Time inside the run outside every phase (building the callbacks, the run's label, ...)."""
        return self.phases.get("run", 0.0) - sum(self.waited(name) for name in PHASES)

    @property
    def overhead(self) -> float:
        """The command's wall time outside training."""
        return self.wall - self.phases.get("training", 0.0)


def nnexp(arguments: tuple[str, ...], project: Path, expect_success: bool = True) -> tuple[Run, str]:
    """Run ``python -m nnexp ARGUMENTS`` in ``project``; returns its :class:`Run` (phases not yet read) and stdout."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "HYDRA_"))}
    contention = Contention(children=True)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.time()  # the wall clock, as MLflow's metric timestamps, to place the run within the command
        process = subprocess.Popen(
            [sys.executable, "-m", "nnexp", *arguments], cwd=project, env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory, which Popen.wait does not give
        ended = time.time()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if (process.returncode == 0) != expect_success:
        raise SystemExit(f"python -m nnexp {' '.join(arguments)} exited with {process.returncode}:\n{stderr[-2000:]}")
    # ru_maxrss is in kilobytes on Linux
    cpu = usage.ru_utime + usage.ru_stime
    return Run(started, ended, usage.ru_maxrss / 1024, contention.others(), cpu=cpu), stdout


def read_phases(run: Run, store: str, stdout: str) -> None:
    """Fill in the ``system/<phase>_seconds`` and ``system/<phase>_hidden_seconds`` metrics of the run whose id the
    command printed, and when it logged them."""
    from mlflow import MlflowClient

    from nnexp.tracking.store import SYSTEM_PREFIX

    found = RUN_ID.search(stdout)
    if found is None:
        raise SystemExit(f"no run id in the command's output:\n{stdout[-2000:]}")
    client = MlflowClient(tracking_uri=store)
    run.phases, run.hidden = recorded_phases(client.get_run(found.group(1)).data.metrics)
    run.logged = client.get_metric_history(found.group(1), f"{SYSTEM_PREFIX}run_seconds")[-1].timestamp / 1000


def recorded_phases(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """A run's phases from its metrics: ``system/<phase>_seconds`` and ``system/<phase>_hidden_seconds``."""
    from nnexp.tracking.store import MLFLOW_METRIC_NAMES, SYSTEM_PREFIX

    phases: dict[str, float] = {}
    hidden: dict[str, float] = {}
    phase_metric = re.compile(rf"{re.escape(SYSTEM_PREFIX)}(\w+?)(_hidden)?_seconds")
    for key, value in metrics.items():
        phase = phase_metric.fullmatch(key)
        if phase is not None and key != MLFLOW_METRIC_NAMES["epoch_seconds"]:
            (hidden if phase.group(2) else phases)[phase.group(1)] = value
    return phases, hidden


@dataclass
class SweepRun:
    """One sweep command: its wall seconds, others' CPU meanwhile, and each job's phases (a :class:`Run` whose
    start and end are the job's own)."""

    wall: float
    others: float
    cpu: float
    jobs: list[Run]

    @property
    def training(self) -> float:
        return sum(job.phases.get("training", 0.0) for job in self.jobs)

    @property
    def overhead_per_job(self) -> float:
        """The issue's measure: wall time minus the sum of the jobs' training, per job."""
        return (self.wall - self.training) / len(self.jobs)

    @property
    def outside_jobs_per_job(self) -> float:
        """Wall time outside every job's run, per job: start-up, the parent run, Hydra's work between jobs (its
        per-job composition and folder), the summary and the exit."""
        return (self.wall - sum(job.phases.get("run", 0.0) for job in self.jobs)) / len(self.jobs)


def time_sweep(project: Path, store: str, launcher: str) -> SweepRun:
    """Run the :data:`SWEEP` on ``launcher`` in ``project`` and read its children's phases back from ``store``."""
    from mlflow import MlflowClient

    command, stdout = nnexp((*SWEEP, *LAUNCHERS[launcher]), project)
    found = SWEEP_ID.search(stdout)
    if found is None:
        raise SystemExit(f"no sweep id in the command's output:\n{stdout[-2000:]}")
    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(found.group(1))
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=1000
    )
    if len(children) != SWEEP_JOBS:
        raise SystemExit(f"the sweep {parent.info.run_id} has {len(children)} child runs, not {SWEEP_JOBS}")
    jobs = []
    for child in children:
        phases, hidden = recorded_phases(child.data.metrics)
        ended = child.info.end_time / 1000
        jobs.append(Run(ended - phases["run"], ended, command.peak_mb, command.others, phases, hidden, ended))
    return SweepRun(command.wall, command.others, command.cpu, jobs)


def sweep_table(sweeps: list[SweepRun], launcher: str) -> list[str]:
    """The Markdown lines of the sweep's measures, and its jobs' phases (medians over every job of every sweep)."""
    jobs = [job for sweep in sweeps for job in sweep.jobs]
    rows = [
        ("whole sweep (wall)", [sweep.wall for sweep in sweeps]),
        (f"sum of the {SWEEP_JOBS} jobs' training", [sweep.training for sweep in sweeps]),
        ("**(wall - training) / jobs** (goal: at most 0.3 s)", [sweep.overhead_per_job for sweep in sweeps]),
        ("outside the jobs' runs, per job (start-up, parent run, Hydra between jobs, summary, exit)",
         [sweep.outside_jobs_per_job for sweep in sweeps]),
        ("CPU of the whole command (user + system), per job", [sweep.cpu / len(sweep.jobs) for sweep in sweeps]),
    ]
    command = " ".join((*SWEEP, *LAUNCHERS[launcher]))
    lines = [
        f"**A {SWEEP_JOBS}-job {launcher}-launcher sweep** (`python -m nnexp {command}`, {len(sweeps)} sweeps)",
        "",
        "| measure | median s | min s | max s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {label} | {stats(values)} |" for label, values in rows]
    lines += ["", "| one job's part (all jobs of all sweeps) | median s | min s | max s |", "|---|---|---|---|"]
    for name, label in PHASES.items():
        lines.append(f"| {label}: waited for | {stats([job.waited(name) for job in jobs])} |")
        if name in OVERLAPPED:
            hidden = [job.hidden.get(name, 0.0) for job in jobs]
            lines.append(f"| {label}: hidden behind other work | {stats(hidden)} |")
    lines += [
        f"| inside the run, outside every phase | {stats([job.unaccounted for job in jobs])} |",
        f"| the job's run (`system/run_seconds`) | {stats([job.phases['run'] for job in jobs])} |",
        "",
        f"- other processes used {statistics.median([sweep.others for sweep in sweeps]):.2f} cores (median) "
        "during the sweeps",
    ]
    return lines


def stats(values: list[float], digits: int = 2) -> str:
    """``median | min | max`` cells."""
    return " | ".join(f"{value:.{digits}f}" for value in (statistics.median(values), min(values), max(values)))


def phase_table(title: str, runs: list[Run]) -> list[str]:
    """The Markdown table of one configuration's runs: each phase's seconds and its share of the whole command."""
    walls = [run.wall for run in runs]
    wall = statistics.median(walls)
    rows = [("start-up (process, imports, plugins, Hydra's composition)", [run.startup for run in runs])]
    for name, label in PHASES.items():
        rows.append((label, [run.phases.get(name, 0.0) for run in runs]))
        if name in OVERLAPPED:
            rows.append((f"{label}: hidden behind other work", [run.hidden.get(name, 0.0) for run in runs]))
    rows += [
        ("inside the run, outside every phase", [run.unaccounted for run in runs]),
        ("exit (ending the MLflow run, interpreter shutdown)", [run.exit for run in runs]),
    ]
    lines = [f"**{title}** ({len(runs)} runs)", "", "| part | median s | min s | max s | share of the median wall |"]
    lines.append("|---|---|---|---|---|")
    lines += [f"| {label} | {stats(values)} | {statistics.median(values) / wall:.1%} |" for label, values in rows]
    lines.append(f"| **whole command (wall)** | {stats(walls)} | 100% |")
    overhead = [sum(run.waited(name) for name in OVERHEAD) for run in runs]
    share = statistics.median([seconds / run.wall for seconds, run in zip(overhead, runs, strict=True)])
    imports = statistics.median([run.waited("mlflow_setup") for run in runs])
    requests = statistics.median([run.phases.get("mlflow_logging", 0.0) for run in runs])
    peaks = [run.peak_mb for run in runs]
    others = statistics.median([run.others for run in runs])
    lines += [
        "",
        f"- wall time minus training (the issue's run overhead): median {stats([run.overhead for run in runs])} s "
        "(median | min | max)",
        f"- MLflow, plots, model files and checkpoints, as far as the run waited for them: median "
        f"{statistics.median(overhead):.2f} s, {share:.1%} of the wall time; of which MLflow's import and store "
        f"{imports:.2f} s, MLflow's requests {requests:.2f} s",
        f"- peak resident memory: median {statistics.median(peaks):.0f} MB, min {min(peaks):.0f}, max {max(peaks):.0f}",
        f"- other processes used {others:.2f} cores (median) during these runs",
    ]
    return lines


def import_seconds(module: str, runs: int) -> list[float]:
    """Wall seconds to import ``module`` in a fresh interpreter that has already imported NumPy."""
    code = f"import time, numpy; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(runs)
    ]


def default_mnist() -> Path | None:
    from nnexp.datasets.mnist import default_mnist_dir

    return next((folder for folder in (SHARED_MNIST, default_mnist_dir()) if folder.is_dir()), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist_dir", nargs="?", type=Path, help="folder with the four MNIST IDX files")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each configuration (default: 3)")
    parser.add_argument("--runs", type=int, default=5, help="timings of --help and of each config error (default: 5)")
    parser.add_argument("--sweeps", type=int, default=3, help=f"timed {SWEEP_JOBS}-job sweeps (default: 3)")
    parser.add_argument("--sweep-only", action="store_true", help="time the sweep alone (after one untimed run)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="basic", help="the sweep's launcher (default: basic)")
    args = parser.parse_args()
    mnist = None if args.sweep_only else args.mnist_dir or default_mnist()
    configurations = {"default run (two moons, 50 epochs)": ()}
    if mnist is not None:
        configurations["experiment=mnist_keras_mlp (5 epochs)"] = (
            "experiment=mnist_keras_mlp",
            f"dataset.path={mnist}",
        )
    load = Load(children=True)
    lines = ["## Runner overhead and memory (goals 5 and 6; issue 15)", ""]
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        shutil.copytree(REPO / "conf", project / "conf")
        store = f"sqlite:///{project / 'outputs' / 'mlflow.db'}"
        if not args.sweep_only:
            lines += quick_commands(project, args.runs)
        for arguments in configurations.values():  # creates the store, and brings the data into the disk cache
            nnexp(arguments, project)
        runs: dict[str, list[Run]] = {name: [] for name in configurations}
        names = list(configurations)
        for repetition in range(0 if args.sweep_only else args.repeat):
            for name in names if repetition % 2 == 0 else names[::-1]:
                run, stdout = nnexp(configurations[name], project)
                read_phases(run, store, stdout)
                runs[name].append(run)
                print(f"{name}: {run.wall:.1f} s, {run.peak_mb:.0f} MB", file=sys.stderr, flush=True)
        sweeps = []
        for _ in range(args.sweeps):
            sweeps.append(time_sweep(project, store, args.launcher))
            print(f"sweep: {sweeps[-1].wall:.1f} s, {sweeps[-1].overhead_per_job:.2f} s per job outside training",
                  file=sys.stderr, flush=True)
    for name in names if not args.sweep_only else ():
        lines += [*phase_table(name, runs[name]), ""]
    if sweeps:
        lines += [*sweep_table(sweeps, args.launcher), ""]
    if mnist is None and not args.sweep_only:
        lines.append(
            "MNIST rows skipped: no MNIST_DIR given, and neither /work/shared/data/mnist nor nnexp's cache exists."
        )
    ran = (
        "the sweep after one untimed default run"
        if args.sweep_only
        else f"each quick command {args.runs} time(s), each configuration {args.repeat} timed time(s) after one "
        "untimed, alternating, then the sweep"
    )
    lines.append(
        f"Ran `{shlex.join(['python', 'benchmarks/bench_overhead.py', *sys.argv[1:]])}`: `python -m nnexp` in a "
        f"scratch project, {ran} {args.sweeps} time(s); {load.summary()}."
    )
    print("\n".join(lines))


def quick_commands(project: Path, runs: int) -> list[str]:
    """The Markdown rows of ``--help`` and the config errors, timed ``runs`` times each, and the one-off imports."""
    lines = ["| command | median s | min s | max s | peak MB |", "|---|---|---|---|---|"]
    for name, arguments in QUICK_COMMANDS.items():
        quick = [nnexp(arguments, project, expect_success="--help" in arguments)[0] for _ in range(runs)]
        lines.append(f"| `{name}` | {stats([run.wall for run in quick])} | {max(run.peak_mb for run in quick):.0f} |")
        print(f"{name}: {statistics.median([run.wall for run in quick]):.2f} s", file=sys.stderr, flush=True)
    imports = {
        module: import_seconds(module, runs) for module in ("mlflow", "matplotlib.pyplot", "sklearn.model_selection")
    }
    return [
        *lines,
        "",
        "One-off imports, in a fresh interpreter after NumPy: "
        + "; ".join(f"`{module}` {statistics.median(seconds):.2f} s" for module, seconds in imports.items())
        + " (medians).",
        "",
    ]


if __name__ == "__main__":
    main()
