"""MLflow tracking: where runs are stored, how they are recorded in batches, and how they always end."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnexp.errors import ConfigError, Interrupted

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs there must not create a store concurrently
    fcntl = None

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_STORE = Path("outputs") / "mlflow.db"
FLUSH_SECONDS = 2.0
# MLflow's own limits for one log_batch request.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000


def resolve_uri(configured: str | None, project_dir: Path) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store under ``project_dir/outputs``."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(project_dir / DEFAULT_STORE).resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or ``None`` for any other store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database file; a server chooses its own root."""
    database = sqlite_path(uri)
    return None if database is None else (database.resolve().parent / "mlartifacts").as_uri()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys: ``{"optimizer": {"learning_rate": 0.1}}`` -> ``optimizer.learning_rate``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def git_state(project_dir: Path) -> dict[str, str]:
    """The project's commit and whether its work tree has changes; empty outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(status.strip())).lower()}


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming ``uri``, on a store MLflow cannot use or a server that does not answer; create the
    folder of a SQLite database.

    MLflow itself retries an unreachable server for minutes, and its file store now refuses to start.
    """
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("", "file"):
        raise ConfigError(
            f"tracking store {uri} is a plain directory, and MLflow's file store is retired; "
            "use a database such as sqlite:///path/to/mlflow.db, or a tracking server's http(s):// URL"
        )
    database = sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    if scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError as exc:
        raise ConfigError(
            f"tracking server {uri} answered GET /health with {exc.code} {exc.reason}; is it an MLflow server?"
        ) from None
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"tracking server {uri} is unreachable: {reason}") from None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store while it is opened and its experiment created.

    Two processes that open a new store at once both run its schema migrations and crash each other
    ("table experiments already exists"); two that create one experiment at once collide likewise.
    """
    database = sqlite_path(uri)
    if database is None or fcntl is None:
        yield
        return
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class TrackedRun:
    """One MLflow run; metrics are buffered and sent in batches, since one request per value is slow."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start : start + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=entries[start : start + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step``; they are sent every few seconds and when the run ends."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._pending += [
            Metric(key, float(value), timestamp, step) for key, value in metrics.items() if math.isfinite(value)
        ]
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=self._pending[start : start + MAX_METRICS_PER_BATCH])
        self._pending = []
        self._last_flush = time.monotonic()

    def end(self, status: str, reason: str | None = None) -> None:
        """Send what is pending and set the final status; ``reason`` becomes the ``failure_reason`` tag."""
        if reason is None:
            self.flush()
        else:
            with contextlib.suppress(Exception):  # the original error matters more than a logging failure
                self.flush()
                self.set_tags({"failure_reason": reason})
        self.client.set_terminated(self.run_id, status)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)


class Tracker:
    """An MLflow store and the experiment runs go to; creates the experiment on first use."""

    def __init__(self, uri: str, experiment: str, create: bool = True) -> None:
        check_store(uri)
        from mlflow import MlflowClient

        # After the import: MLflow sets its own logger to INFO when imported.
        for noisy in ("alembic", "mlflow"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.uri = uri
        try:
            with store_lock(uri):
                self.client = MlflowClient(tracking_uri=uri)
                found = self.client.get_experiment_by_name(experiment)
                if found is None and create:
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_root(uri))
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"tracking store {uri} cannot be used: {reason[:300]}") from None
        if found is not None:
            self.experiment_id = found.experiment_id
        elif not create:
            raise ConfigError(f"tracking store {uri} has no experiment named {experiment!r}")

    def where_to_see(self, run_id: str) -> str:
        """How to look at a run: a server's page for it, or the ``mlflow ui`` command for a database store."""
        if urllib.parse.urlparse(self.uri).scheme in ("http", "https"):
            return f"see it at {self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
        return f"see it with: mlflow ui --backend-store-uri {self.uri}"

    def open_run(self, run_name: str, tags: Mapping[str, Any]) -> TrackedRun:
        """A new RUNNING run; whoever opens it must :meth:`TrackedRun.end` it."""
        created = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={key: str(value) for key, value in tags.items()}
        )
        return TrackedRun(self.client, created.info.run_id)

    def record_failure(self, run_name: str, tags: Mapping[str, Any], reason: str, params: Mapping[str, Any]) -> str:
        """A run that failed before it could start, kept so a sweep shows every job; returns its id."""
        run = self.open_run(run_name, tags)
        run.log_params(params)
        run.end("FAILED", reason)
        return run.run_id

    @contextlib.contextmanager
    def start_run(self, run_name: str, tags: Mapping[str, Any], resume: str | None = None) -> Iterator[TrackedRun]:
        """A run that ends FINISHED, KILLED on Ctrl-C, or FAILED with a ``failure_reason`` tag otherwise.

        With ``resume``, that existing run is reopened (RUNNING again) instead of a new one created.
        """
        if resume is None:
            run = self.open_run(run_name, tags)
        else:
            self.client.update_run(resume, status="RUNNING")
            run = TrackedRun(self.client, resume)
            run.set_tags({"resumed": "true", "failure_reason": ""})
        try:
            yield run
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            reason = str(exc) or ("interrupted (SIGINT)" if interrupted else type(exc).__name__)
            run.end("KILLED" if interrupted else "FAILED", reason)
            if interrupted:
                code = getattr(exc, "exit_code", 128 + signal.SIGINT)
                raise Interrupted(f"{reason}; MLflow run {run.run_id} is marked KILLED", code) from None
            raise
        run.end("FINISHED")
