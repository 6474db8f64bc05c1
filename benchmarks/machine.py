"""The machine facts a benchmark result needs: CPU, cores, caches, memory, load, every BLAS and OpenMP library
loaded (threadpoolctl), the threading environment, and the versions of Python, NumPy, nnexp (with its git commit),
PyTorch, scikit-learn, SciPy, hydra-core and MLflow.

Usage: python benchmarks/machine.py
Prints one Markdown section to stdout. Imports NumPy, SciPy, scikit-learn and (when installed) PyTorch, so that
their BLAS and OpenMP libraries are loaded and reported.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import resource
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT = (
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_VERBOSE",
    "OPENBLAS_THREAD_TIMEOUT",
    "GOTO_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OMP_PROC_BIND",
    "OMP_PLACES",
    "OMP_WAIT_POLICY",
    "MKL_NUM_THREADS",
    "MKL_THREADING_LAYER",
    "MKL_DEBUG_CPU_TYPE",
)
PACKAGES = ("numpy", "nnexp", "torch", "scikit-learn", "scipy", "threadpoolctl", "hydra-core", "mlflow")
FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")


class Contention:
    """How much CPU other processes used while this one ran: from /proc/stat's busy time (steal included) minus
    this process's own CPU time (``children=True``: and its finished children's, for a runner of subprocesses)."""

    def __init__(self, children: bool = False) -> None:
        self.who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if children else (resource.RUSAGE_SELF,)
        self.restart()

    def restart(self) -> None:
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        own = sum(usage.ru_utime + usage.ru_stime for usage in map(resource.getrusage, self.who))
        fields = read("/proc/stat").split("\n", 1)[0].split()[1:]
        busy = 0.0
        if len(fields) >= 8:  # user nice system idle iowait irq softirq steal (guest is counted in user)
            ticks = [int(value) for value in fields[:8]]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        return time.perf_counter(), busy, own

    def others(self) -> float:
        """Cores' worth of CPU that other processes used on average since the start (or :meth:`restart`)."""
        (wall0, busy0, own0), (wall1, busy1, own1) = self._start, self._sample()
        if wall1 <= wall0 or busy1 == 0:
            return float("nan")
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))


class Load:
    """The load while a benchmark runs, from its creation: wall time, load average, other processes' CPU
    (``children=True``: not counting this process's finished children either, for a runner of subprocesses)."""

    def __init__(self, children: bool = False) -> None:
        self.load_start, self.started, self.contention = loadavg(), time.perf_counter(), Contention(children)

    def summary(self) -> str:
        return (
            f"{time.perf_counter() - self.started:.0f} s in all; load average (1/5/15 min) {self.load_start} at "
            f"start, {loadavg()} at end; other processes used {self.contention.others():.2f} cores on average"
        )


def loadavg() -> str:
    """The 1, 5 and 15-minute load averages."""
    return " ".join(read("/proc/loadavg").split()[:3]) or "unknown"


def read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu() -> list[tuple[str, str]]:
    info: dict[str, str] = {}
    for line in read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())  # the first processor's entry
    model = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        model += f" (family {info['cpu family']}, model {info.get('model', '?')}, stepping {info.get('stepping', '?')})"
    flags = set(info.get("flags", "").split())
    simd = ", ".join(flag for flag in FLAGS if flag in flags) or "unknown"
    if "hypervisor" in flags:
        simd += "; running under a hypervisor"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "unknown"
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind, size = (read(str(index / name)).strip() for name in ("level", "type", "size"))
        if kind != "Instruction":
            caches.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    kilobytes = next(
        (line.split()[1] for line in read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), ""
    )
    memory = f"{int(kilobytes) / 2**20:.1f} GiB" if kilobytes.isdigit() else ""
    return [
        ("CPU", model),
        ("SIMD flags", simd),
        ("cores", f"os.cpu_count() = {os.cpu_count()}, usable by this process (affinity) = {affinity}"),
        ("caches (per core unless shared)", ", ".join(caches) or "unknown"),
        ("memory", memory or "unknown"),
        ("load average (1/5/15 min)", loadavg()),
        ("OS", f"{platform.system()} {platform.release()}"),
    ]


def shipped_by(filepath: str) -> str:
    """The package a shared library ships in, from its path: ``.../site-packages/numpy.libs/...`` -> numpy."""
    parts = Path(filepath).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".libs")
    return filepath


def thread_pools() -> list[tuple[str, str]]:
    import numpy  # noqa: F401 - loads NumPy's BLAS
    import scipy.linalg  # noqa: F401 - loads SciPy's BLAS, which scikit-learn uses
    import sklearn.utils._openmp_helpers  # noqa: F401 - loads scikit-learn's OpenMP runtime
    from threadpoolctl import threadpool_info

    with contextlib.suppress(ImportError):
        import torch  # noqa: F401 - loads PyTorch's BLAS/OpenMP
    rows = []
    pools = sorted(
        threadpool_info(), key=lambda pool: (pool["user_api"] != "blas", shipped_by(pool["filepath"]) != "numpy")
    )
    for pool in pools:
        details = [
            f"{pool.get('internal_api')} {pool.get('version') or ''}".strip(),
            f"threading layer {pool['threading_layer']}" if pool.get("threading_layer") else "",
            f"kernel {pool['architecture']}" if pool.get("architecture") else "",
            f"{pool.get('num_threads')} threads",
            f"`{Path(pool['filepath']).name}`",
        ]
        rows.append(
            (f"{pool['user_api'].upper()} of {shipped_by(pool['filepath'])}", ", ".join(d for d in details if d))
        )
    return rows


def environment() -> list[tuple[str, str]]:
    names = list(ENVIRONMENT) + sorted(
        name for name in os.environ if name.startswith(("OPENBLAS_", "OMP_", "MKL_")) and name not in ENVIRONMENT
    )
    return [
        (
            "environment",
            ", ".join(f"`{name}={os.environ[name]}`" if name in os.environ else f"{name} unset" for name in names),
        )
    ]


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = [line for line in git("status", "--porcelain", "--", "src").splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return "git commit unknown"
    if changed:
        return f"git commit {commit}, with uncommitted changes to {len(changed)} file(s) in src/ (measured as they are)"
    return f"git commit {commit}, src/ clean"


def versions() -> list[tuple[str, str]]:
    rows = [("Python", f"{platform.python_version()} ({platform.python_implementation()}, `{sys.executable}`)")]
    for package in PACKAGES:
        try:
            found = version(package)
        except PackageNotFoundError:
            found = "not installed"
        if package == "nnexp" and found != "not installed":
            found += f", {git_state()}"
        if package == "torch" and found != "not installed":
            import torch

            blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
            backend = re.search(r"ATen parallel backend: (\S+)", torch.__config__.parallel_info())
            found += (
                f", BLAS {blas.group(1) if blas else 'unknown'} (linked into torch, invisible to threadpoolctl), "
                f"ATen parallel backend {backend.group(1) if backend else 'unknown'}, "
                f"torch.get_num_threads() = {torch.get_num_threads()}"
            )
        rows.append(({"torch": "PyTorch"}.get(package, package), found))
    return rows


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    # Before NumPy, as in the benchmark scripts: the BLAS pools and environment reported are then those they run with
    import nnexp  # noqa: F401

    rows = [
        *cpu(),
        *thread_pools(),
        *environment(),
        *versions(),
        ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
    ]
    lines = ["## Machine", "", "| fact | value |", "|---|---|"]
    lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in rows]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
