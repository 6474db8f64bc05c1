"""Run every nnexp benchmark, each in its own process, and collect their Markdown sections into one report.

Usage: python benchmarks/run_all.py MNIST_DIR [--out FILE] [--quick]
MNIST_DIR holds the four MNIST IDX files. The report (machine facts, then throughput, per-sample SGD, overhead,
scaling, sweep and loading) goes to ``--out`` (default ``benchmarks/results.md``, git-ignored) and to stdout; each
script's progress goes to stderr as it runs. ``--quick`` passes small repeat counts, and no re-measuring, to every
script, for a smoke test of a few minutes; the full run takes about 30 minutes on 2 cores. A script that fails or is
missing gets a section saying so, the others still run, and the exit status is non-zero when any failed. Not part
of CI.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from machine import Contention, loadavg

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Script:
    """A benchmark script, whether it takes MNIST_DIR, and its options for ``--quick``.

    A quick option the script's ``--help`` does not list is left out; a script whose help lists ``--quick`` is
    given that instead.
    """

    name: str
    title: str
    takes_mnist: bool = True
    quick: dict[str, str] = field(default_factory=dict)


SCRIPTS = (
    Script("machine.py", "Machine", takes_mnist=False),
    Script(
        "bench_throughput.py",
        "Throughput against PyTorch and scikit-learn (goal 1)",
        quick={"--pairs": "1", "--retries": "0"},
    ),
    Script(
        "bench_per_sample.py", "Per-sample SGD (goal 2)", quick={"--pairs": "1", "--epochs": "20", "--retries": "0"}
    ),
    Script(
        "bench_engine.py",
        "The compiled engine (issue 13)",
        takes_mnist=False,
        quick={"--pairs": "1", "--process-pairs": "1", "--preset-pairs": "0", "--retries": "0"},
    ),
    Script(
        "bench_overhead.py",
        "Runner overhead and memory (goals 5 and 6)",
        quick={"--repeat": "1", "--runs": "1", "--sweeps": "1"},
    ),
    Script("bench_scaling.py", "Scaling (goal 7)", quick={"--repeat": "1", "--steps": "500", "--retries": "0"}),
    Script("bench_sweep.py", "Sweeps (goal 8)", takes_mnist=False, quick={"--repeat": "1", "--epochs": "20"}),
    Script("bench_loading.py", "MNIST loading", quick={"--repeat": "1"}),
)


def quick_options(path: Path) -> list[str]:
    """The quick options of the script at ``path`` that its ``--help`` lists."""
    script = next(s for s in SCRIPTS if s.name == path.name)
    listed = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=REPO).stdout
    if "--quick" in listed:
        return ["--quick"]
    return [item for option, value in script.quick.items() if option in listed for item in (option, value)]


def run(command: list[str]) -> tuple[int, str, str, float, float]:
    """Run ``command``; its stderr streams through to ours. Returns exit code, stdout, last stderr line, seconds, and
    the cores' worth of CPU other processes used meanwhile."""
    started, contention = time.perf_counter(), Contention(children=True)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail: collections.deque[str] = collections.deque(maxlen=20)

    def relay() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                tail.append(line.rstrip())

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    assert process.stdout is not None
    stdout = process.stdout.read()
    code = process.wait()
    relaying.join()
    last = tail[-1] if tail else "(no output on stderr)"
    return code, stdout, last, time.perf_counter() - started, contention.others()


def section(script: Script, command: list[str], quick: bool) -> tuple[str, bool]:
    """The script's Markdown section, run in its own process, and whether it succeeded."""
    path = HERE / script.name
    if not path.is_file():
        return f"## {script.title}\n\nSkipped: `benchmarks/{script.name}` does not exist yet.", True
    options = quick_options(path) if quick else []
    full = [sys.executable, str(path), *command, *options]
    shown = shlex.join(["python", f"benchmarks/{script.name}", *command, *options])
    print(f"--- {shown}", file=sys.stderr, flush=True)
    code, stdout, last, seconds, others = run(full)
    if code != 0:
        return (
            f"## {script.title}\n\nFailed: `{shown}` exited with status {code} after {seconds:.0f} s; "
            f"the last line of its stderr: `{last}`"
        ), False
    text = stdout.strip()
    if not text.startswith("## "):
        text = f"## {script.title}\n\n{text}"
    return f"{text}\n\n_`{shown}`: {seconds:.0f} s; other processes used {others:.2f} cores meanwhile._", True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist_dir", help="folder with the four MNIST IDX files")
    parser.add_argument("--out", type=Path, default=HERE / "results.md", help="default: benchmarks/results.md")
    parser.add_argument("--quick", action="store_true", help="small repeat counts: a smoke test of a few minutes")
    args = parser.parse_args()
    mnist = str(Path(args.mnist_dir).expanduser().resolve())
    invoked = shlex.join(["python", "benchmarks/run_all.py", *sys.argv[1:]])
    started, load_start = time.perf_counter(), loadavg()
    sections: list[str] = []
    failed: list[str] = []

    def report(done: bool) -> str:
        elapsed = time.perf_counter() - started
        status = f"{elapsed / 60:.1f} min in all" if done else f"in progress, {elapsed / 60:.1f} min so far"
        status += f"; load average (1/5/15 min) {load_start} at start, {loadavg()} {'at end' if done else 'now'}"
        failures = f"; failed: {', '.join(failed)}" if failed else ""
        head = f"# nnexp benchmarks\n\n`{invoked}`{' (quick: small repeat counts)' if args.quick else ''}: {status}"
        return "\n\n".join([head + failures, *sections]) + "\n"

    for script in SCRIPTS:
        text, ok = section(script, [mnist] if script.takes_mnist else [], args.quick)
        sections.append(text)
        if not ok:
            failed.append(script.name)
        args.out.write_text(report(done=False))  # a run stopped half-way still leaves what it measured
    final = report(done=True)
    args.out.write_text(final)
    print(final, end="")
    print(f"written to {args.out}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
