"""Real daemons for the cluster tests: a single-node SLURM (tests/cluster/slurm.sh) and an ``mlflow server`` on
PostgreSQL. Each is started once per session, in a scratch folder, and stopped by its process id; where the Debian
packages (slurm-wlm, munge, postgresql) or the psycopg driver are missing, the tests that need them skip and say so.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SLURM_SH = Path(__file__).with_name("slurm.sh")
POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
STARTUP_SECONDS = 120
#: Measured durations and counts, printed at the end of the session (the terminal summary of tests/conftest.py).
TIMINGS: dict[str, float] = {}


@dataclass
class Slurm:
    """A running single-node cluster; ``env`` is what a client (sbatch, squeue, a sweep) needs to reach it."""

    folder: Path
    env: dict[str, str]

    def run(self, *command: str) -> str:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout


@dataclass
class Server:
    """An ``mlflow server`` whose runs live in PostgreSQL and whose artifacts in ``artifacts``."""

    uri: str
    artifacts: Path
    database: str


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This environment without MLflow's and Hydra's variables, as the ``project`` fixture runs the CLI."""
    return {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "HYDRA_"))}


def missing_slurm() -> str | None:
    """Why the cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the single-node SLURM runs its daemons as root"
    wanted = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
    absent = [path for path in wanted if not Path(path).exists()]
    absent += [name for name in ("sbatch", "squeue", "sinfo", "scancel") if shutil.which(name) is None]
    return f"SLURM not installed ({', '.join(absent)} missing): apt-get install slurm-wlm munge" if absent else None


def missing_postgres() -> str | None:
    """Why the PostgreSQL-backed server cannot start here, or None."""
    if not POSTGRES_BIN or shutil.which("runuser") is None:
        return "PostgreSQL not installed (/usr/lib/postgresql/*/bin missing): apt-get install postgresql"
    if os.geteuid() != 0:
        return "PostgreSQL refuses to run as root, and only root can run it as the postgres user here"
    if importlib.util.find_spec("psycopg") is None:
        return 'the PostgreSQL driver is missing: pip install -e ".[server]"'
    return None


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    """A single-node SLURM cluster for the session, stopped by its pids afterwards."""
    reason = missing_slurm()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    started = time.monotonic()
    result = subprocess.run(["bash", str(SLURM_SH), "start", str(folder)], capture_output=True, text=True, timeout=90)
    if result.returncode != 0:
        subprocess.run(["bash", str(SLURM_SH), "stop", str(folder)], timeout=60)
        pytest.fail(f"slurm.sh start failed:\n{result.stdout}{result.stderr}")
    TIMINGS["slurm start (s)"] = time.monotonic() - started
    env = {**clean_env(), "SLURM_CONF": str(folder / "slurm.conf")}
    try:
        yield Slurm(folder, env)
    finally:
        subprocess.run(["bash", str(SLURM_SH), "stop", str(folder)], timeout=60)


def as_postgres(*command: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True, timeout=120, **kwargs
    )


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL instance in a temporary data folder owned by the postgres user; yields its database URI."""
    binaries = POSTGRES_BIN[-1]
    # Not under pytest's tmp folder: its parents are root's alone, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="nnexp-postgres-"))
    shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    try:
        for command in (
            [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow"],
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "postgres.log"),
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                "-w",
                "start",
            ],
            [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
        ):
            done = as_postgres(*command)
            if done.returncode != 0:
                pytest.fail(f"{Path(command[0]).name} failed: {done.stdout}{done.stderr}")
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():
            as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(database: str, root: Path) -> Iterator[Server]:
    """``mlflow server`` on ``database``, artifacts proxied into ``root/artifacts``, once ``/health`` answers."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "2", "--backend-store-uri", database, "--artifacts-destination", str(root / "artifacts")]
    log = root / "mlflow_server.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            cwd=root,
            env={**clean_env(), "MLFLOW_DISABLE_TELEMETRY": "true"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            health = f"{uri}/health"
            with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(health, timeout=2):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield Server(uri, root / "artifacts", database)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)  # the server's workers, if any outlived it


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """PostgreSQL and an ``mlflow server`` on it for the session, both stopped afterwards."""
    reason = missing_postgres()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    with postgres() as database:
        TIMINGS["postgres start (s)"] = time.monotonic() - started
        with mlflow_server(database, tmp_path_factory.mktemp("pg_server")) as server:
            TIMINGS["postgres + mlflow server start (s)"] = time.monotonic() - started
            yield server


@pytest.fixture(scope="session")
def timings() -> dict[str, float]:
    """Where a test records a measured duration, printed at the end of the session."""
    return TIMINGS


@pytest.fixture(autouse=True)
def report_timings(request: pytest.FixtureRequest) -> Iterator[None]:
    """Carry the durations measured so far on the test's report: under pytest-xdist the summary is printed by
    the controlling process, which sees the workers' reports but not their memory (tests/conftest.py)."""
    yield
    for name in TIMINGS.keys() - REPORTED:
        request.node.user_properties.append(("cluster timing", (name, TIMINGS[name])))
        REPORTED.add(name)


REPORTED: set[str] = set()
