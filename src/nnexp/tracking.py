"""MLflow tracking: where runs are stored, how they are recorded in batches, and how they always end."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nnexp import liveness
from nnexp.errors import ConfigError, Interrupted, NnexpError, interruption
from nnexp.folders import describe_os_error

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs there must not create a store concurrently
    fcntl = None

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


log = logging.getLogger(__name__)

DEFAULT_STORE = Path("outputs") / "mlflow.db"
FLUSH_SECONDS = 2.0
#: While the store does not answer, how often to try again; each try pauses training for a few seconds.
RETRY_SECONDS = 30.0
#: Tries to deliver what is queued when a run ends, before writing the outbox, and the pause between them.
END_ATTEMPTS = 3
END_PAUSE_SECONDS = 5.0
OUTBOX = "mlflow_outbox.json"
#: The final statuses an outbox may hold.
OUTBOX_STATUSES = ("FINISHED", "FAILED", "KILLED")
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


#: Where ``nnexp ui`` (``mlflow ui``) serves a local store by default.
UI_ADDRESS = "http://127.0.0.1:5000"


#: The prefix of diagnostics (times, a scheduled learning rate): MLflow's UI charts ``system/`` metrics in its
#: "System metrics" tab, so the "Model metrics" tab holds only ``train_*``, ``val_*`` and ``test_*``. Any other
#: prefix (``time/``) becomes a section that the UI puts before the model's metrics.
SYSTEM_PREFIX = "system/"

#: Training's per-epoch diagnostics under the names they are logged with in MLflow.
MLFLOW_METRIC_NAMES = {name: SYSTEM_PREFIX + name for name in ("epoch_seconds", "learning_rate")}

Value = TypeVar("Value")


def mlflow_metrics(values: Mapping[str, Value], *, rate_changes: bool = True) -> dict[str, Value]:
    """Training's per-epoch values under their MLflow names; the learning rate only if ``rate_changes``."""
    return {
        MLFLOW_METRIC_NAMES.get(key, key): value
        for key, value in values.items()
        if rate_changes or key != "learning_rate"
    }


#: The experiment tags where MLflow's UI looks up the view of a runs table that an address names with
#: ``viewStateShareKey`` (its columns, filter and order); the UI's own "Share" button saves views there too.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def ui_url(base: str, experiment_id: str, run_id: str | None = None, view: str | None = None) -> str:
    """A page of MLflow's UI at ``base``, in its Model training view: MLflow 3 opens an experiment in its GenAI view
    (traces, an empty overview) unless the address asks for ``workflowType=machine_learning``. ``view`` names a
    saved view of the runs table (:meth:`Tracker.save_view`), which MLflow applies on the table's own page only."""
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}"
    if run_id or view:
        page += f"/runs/{run_id}" if run_id else "/runs"
    query = {"viewStateShareKey": view} if view else {}
    return f"{page}?{urllib.parse.urlencode({**query, 'workflowType': 'machine_learning'})}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or ``None`` for any other store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def is_sqlite_database(path: Path) -> bool:
    """Whether ``path`` is missing or empty (SQLite makes a new database of it), or starts as SQLite's files do."""
    try:
        with open(path, "rb") as file:
            header = file.read(16)
    except OSError:  # missing: a new store; unreadable: MLflow says why when it opens it
        return True
    return header in (b"", b"SQLite format 3\x00")


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
    """The project's commit and whether its work tree has changes: to tracked files, or new files in ``plugins/`` and
    ``conf/``, which change what runs as much; empty outside a git checkout."""

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", *arguments], cwd=project_dir, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
        new = git("ls-files", "--others", "--exclude-standard", "--", "plugins", "conf")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(changed or new)).lower()}


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
    if scheme == "sqlite" and (database is None or database.name == ":memory:" or "mode=memory" in uri):
        raise ConfigError(
            f"tracking store {uri} is an in-memory database that ends with the process; give a file, "
            "e.g. sqlite:///outputs/mlflow.db"
        )
    if database is not None:
        if database.is_dir():
            raise ConfigError(
                f"tracking store {uri}: {database} is a folder, expected an SQLite database file such as "
                f"{database / 'mlflow.db'}"
            )
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"tracking store {uri}: {describe_os_error(exc, 'create the folder')}") from None
        if not is_sqlite_database(database):
            raise ConfigError(f"tracking store {uri}: {database} is not an SQLite database")
        artifacts = database.parent / "mlartifacts"  # where artifact_root puts a SQLite store's artifacts
        if artifacts.exists() and not artifacts.is_dir():
            raise ConfigError(
                f"tracking store {uri}: {artifacts} is a file, where the store keeps its runs' artifacts; move it"
            )
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


def existing_store(uri: str, hint: str) -> MlflowClient:
    """A client for a store that must already exist: a missing SQLite file is an error (``hint`` says what to
    do), not a new empty store; a folder in its place is named as one by :func:`check_store`."""
    from mlflow import MlflowClient

    database = sqlite_path(uri)
    if database is not None and not database.is_file() and not database.is_dir():
        raise ConfigError(f"no MLflow store at {database}; {hint}")
    check_store(uri)
    try:  # a SQLite store's schema is checked as it opens: another MLflow may have migrated it
        client = MlflowClient(tracking_uri=uri)
        if database is not None:
            client.search_experiments(max_results=1)
    except Exception as exc:
        raise ConfigError(f"tracking store {uri} cannot be used: {store_error_reason(exc)[:300]}") from None
    return client


def find_run(client: MlflowClient, run_id: str, missing: str) -> Run:
    """Run ``run_id`` of the client's store; ``missing`` is the error's message when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ConfigError(missing) from None


#: Errors of the disk under a store nnexp writes to itself (a SQLite file, a local artifact folder), as opposed to a
#: server that does not answer: waiting does not mend them, the user must.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EISDIR})


#: SQLite's result code for a write that found no room: its disk is full (it raises no OSError, but its own error).
SQLITE_FULL = 13


def disk_error(exc: BaseException, database: Path | None = None) -> str | None:
    """The OS's words for a disk error behind ``exc`` (``No space left on device``), or SQLite's for a database on
    a full disk (``database or disk is full``, naming ``database``), if that is what it is."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
            return f"{cause.strerror}: {cause.filename}" if cause.filename else str(cause.strerror)
        for error in (cause, getattr(cause, "orig", None)):  # SQLAlchemy keeps the driver's error as ``orig``
            if getattr(error, "sqlite_errorcode", None) == SQLITE_FULL:
                return f"{error}: {database}" if database else str(error)
        cause = cause.__cause__ or cause.__context__
    return None


def store_error_reason(exc: BaseException) -> str:
    """The first line of the database's own error behind ``exc`` (``attempt to write a readonly database``), which
    MLflow and SQLAlchemy wrap in messages of their own; else of ``exc``."""
    reason: BaseException = exc
    cause: BaseException | None = exc
    while cause is not None:
        driver = getattr(cause, "orig", None)  # SQLAlchemy's DBAPIError keeps the driver's error here
        if isinstance(driver, BaseException):
            reason = driver
        elif type(cause).__module__ == "sqlite3":
            reason = cause
        cause = cause.__cause__ or cause.__context__
    return (str(reason).strip().splitlines() or [type(reason).__name__])[0]


def check_parent(uri: str, run_id: str, resuming: bool) -> None:
    """Refuse ``tracking.parent_run_id=run_id`` unless it is a run of store ``uri`` and, for a new run, still RUNNING
    (a sweep's and ``nnexp reproduce``'s parent is, while its jobs run); a resumed job keeps the parent it had."""
    client = existing_store(uri, f"tracking.parent_run_id={run_id} names a run that must be in it")
    parent = find_run(client, run_id, f"tracking.parent_run_id={run_id}: no such run in {uri}")
    status = parent.info.status
    if not resuming and status != "RUNNING":
        raise ConfigError(
            f"tracking.parent_run_id={run_id}: the run is {status}; a parent must be RUNNING, as a sweep's is while "
            "its jobs run"
        )


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
    path = database.with_name(database.name + ".lock")
    created = not path.exists()
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        except BaseException:
            if created:  # a store that could not be opened leaves no lock file beside it (or beside a user's file)
                path.unlink(missing_ok=True)
            raise


class RunCreationError(ConfigError):
    """The store answered the health check but would not create the run; nothing was recorded."""


class TrackingStoreError(NnexpError):
    """The tracking store went away during a run and did not come back; what it missed is in an outbox file."""


def resumable(client: MlflowClient, run: Run) -> Run:
    """``run`` as it is after marking it KILLED if its process is gone; raises :class:`RunCreationError` if it is
    FINISHED, deleted, or RUNNING in a process that is still alive."""
    if run.info.lifecycle_stage == "deleted":  # MLflow refuses to change a deleted run
        raise RunCreationError(
            f"run {run.info.run_id} is deleted; restore it first with: mlflow runs restore --run-id {run.info.run_id}"
        )
    [run], _ = liveness.reap(client, [run])
    run_id, status, tags = run.info.run_id, run.info.status, run.data.tags
    if status == "FINISHED":
        raise RunCreationError(f"run {run_id} is FINISHED; there is nothing to resume")
    if status == "RUNNING" and liveness.PID in tags:
        raise RunCreationError(
            f"run {run_id} is still RUNNING in process {tags[liveness.PID]} on {tags.get(liveness.HOST)}; "
            "stop that process first, or wait until it ends"
        )
    return run


def without_model(client: MlflowClient, run: Run, name: str) -> str:
    """What is true of ``run``, which logged no model ``name``: its status, why it has none, and what to do."""
    from nnexp.checkpoint import MANIFEST

    info, tags = run.info, run.data.tags
    missing = f"has no logged MLflow model '{name}'"
    if info.status == "RUNNING":
        where = f" in process {tags[liveness.PID]} on {tags.get(liveness.HOST)}" if liveness.PID in tags else ""
        return f"is still RUNNING{where} and {missing} yet; ask again once it has finished"
    folder = Path(tags["output_dir"]) if tags.get("output_dir") else None
    if info.status == "FINISHED":
        kept = folder / name if folder is not None and (folder / name / "MLmodel").is_file() else None
        return f"is FINISHED and {missing}" + (f"; its saved copy: nnexp predict model={kept}" if kept else "")
    reason = (tags.get("failure_reason", "").strip().splitlines() or [""])[0][:200]
    found = f"is {info.status}" + (f" ({reason})" if reason else "") + f" and {missing}: it ended before logging one"
    local = folder is not None and (folder / "checkpoints" / MANIFEST).is_file()
    if local or "checkpoint" in {entry.path for entry in client.list_artifacts(info.run_id)}:
        found += f"; continue it with: python -m nnexp resume={info.run_id}"
    return found


class TrackedRun:
    """One MLflow run; metrics are buffered and sent in batches, since one request per value is slow.

    If the store stops answering mid-run, training goes on: metrics, tags and artifacts wait here and are sent
    when it answers again. If it is still away when the run ends, they are written with the run's final status to
    ``outbox/OUTBOX`` (the run's output folder), and ``nnexp sync FOLDER`` sends them later.

    A run this process opened (:meth:`Tracker.open_run`, :meth:`Tracker.start_run`) has a heartbeat until it ends,
    refreshed with each flush of metrics and by a daemon thread; see :mod:`nnexp.liveness`.
    """

    def __init__(self, client: MlflowClient, run_id: str, outbox: Path | None = None) -> None:
        self.client, self.run_id, self.outbox = client, run_id, outbox
        self._pending: list[Any] = []
        self._tags: dict[str, str] = {}
        self._artifacts: list[tuple[str, str | None]] = []
        self._last_flush = time.monotonic()
        self._away_since: float | None = None
        #: The last failed request failed on the store's own disk (full, or a file where a folder belongs).
        self._disk_error: str | None = None
        self._heartbeat: liveness.Heartbeat | None = None
        #: (metric, step) pairs the store held when a resumed run reopened: a replayed epoch does not log them again.
        self._stored: set[tuple[str, int]] = set()
        #: A model the store did not take, where it is kept, and how to log it when the store takes requests again.
        self._model: tuple[Path, Callable[[], object]] | None = None

    @property
    def disk_error(self) -> str | None:
        """Why the store's disk refused the last request that failed (``database or disk is full: …``), if it did."""
        return self._disk_error

    def start_heartbeat(self) -> None:
        self._heartbeat = liveness.Heartbeat(self.client, self.run_id)

    @property
    def store(self) -> str:
        return str(self.client.tracking_uri)

    def _send(self, request: Callable[[], object]) -> bool:
        """Make one request; if the store does not answer, note it (warning once) and return False."""
        try:
            request()
        except Exception as exc:
            self._disk_error = disk_error(exc, sqlite_path(self.store))
            if self._away_since is None:
                reason = store_error_reason(exc)[:200]
                trouble = "cannot write what it is sent" if self._disk_error else "does not answer"
                log.warning(
                    "tracking store %s %s (%s); training goes on, and what it misses is kept and sent when it "
                    "takes it again",
                    self.store,
                    trouble,
                    reason,
                )
            self._away_since = time.monotonic()
            return False
        if self._away_since is not None:
            log.warning("tracking store %s takes requests again; sending what it missed", self.store)
            self._away_since = None
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start : start + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._tags.update({key: str(value) for key, value in tags.items()})
        self._send_tags()

    def _send_tags(self) -> bool:
        from mlflow.entities import RunTag

        entries = [RunTag(key, value) for key, value in self._tags.items()]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            chunk = entries[start : start + MAX_PARAMS_PER_BATCH]
            if not self._send(lambda chunk=chunk: self.client.log_batch(self.run_id, tags=chunk)):
                return False
            for tag in chunk:
                del self._tags[tag.key]
        return True

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step``; they are sent every few seconds and when the run ends."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._pending += [
            Metric(key, float(value), timestamp, step)
            for key, value in metrics.items()
            if math.isfinite(value) and (key, step) not in self._stored
        ]
        waited = time.monotonic() - self._last_flush
        if waited >= (FLUSH_SECONDS if self._away_since is None else RETRY_SECONDS):
            self.flush()

    def flush(self) -> bool:
        """Send the queued metrics, with a heartbeat; False if the store did not take them all (the rest stay
        queued)."""
        from mlflow.entities import RunTag

        self._last_flush = time.monotonic()
        beat = [RunTag(liveness.HEARTBEAT, liveness.beat())] if self._heartbeat else []
        while self._pending:
            chunk = self._pending[:MAX_METRICS_PER_BATCH]
            if not self._send(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk, tags=beat)):
                return False
            del self._pending[: len(chunk)]
        return True

    def complete_history(self, history: Mapping[str, Sequence[float]], *, rate_changes: bool = True) -> None:
        """Queue the values of a resumed run's per-epoch ``history`` (step = epoch) that the store lacks, and
        remember every step it holds, so that epochs replayed after the checkpoint are not logged twice.

        A process that died between flushes sent fewer epochs than its checkpoint holds, or, with checkpoints
        every few epochs, more.
        """
        history = mlflow_metrics(history, rate_changes=rate_changes)
        try:
            keys = set(history) | set(self.client.get_run(self.run_id).data.metrics)
            for key in keys:
                self._stored.update((key, metric.step) for metric in self.client.get_metric_history(self.run_id, key))
        except Exception as exc:
            reason = store_error_reason(exc)[:200]
            log.warning("cannot read run %s's metrics (%s); epochs it lacks are not logged again", self.run_id, reason)
            self._stored.clear()
            return
        steps: dict[int, dict[str, float]] = {}
        for key, values in history.items():
            for step, value in enumerate(values, start=1):
                steps.setdefault(step, {})[key] = value
        for step, metrics in sorted(steps.items()):
            self.log_metrics(metrics, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._artifacts.append((str(path.resolve()), artifact_path))
        self._send_artifacts()

    def _send_artifacts(self) -> bool:
        while self._artifacts:
            path, artifact_path = self._artifacts[0]
            upload = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
            if not self._send(functools.partial(upload, self.run_id, path, artifact_path)):
                return False
            self._artifacts.pop(0)
        return True

    def hold_model(self, directory: Path, upload: Callable[[], object]) -> None:
        """Keep the model saved in ``directory`` for the run's end, which calls ``upload`` before it sets the status:
        a run is never closed FINISHED without the model it logs. If the store stays away, the outbox says so and
        ``nnexp sync`` logs the model."""
        self._model = (directory, upload)

    def _send_model(self) -> bool:
        if self._model is None:
            return True
        if not self._send(self._model[1]):
            return False
        self._model = None
        return True

    def end(self, status: str, reason: str | None = None) -> None:
        """Send everything queued (a held model too) and set the final status; ``reason`` becomes the
        ``failure_reason`` tag.

        Raises :class:`TrackingStoreError` after writing the outbox if the store stays away.
        """
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if reason is not None:
            self._tags["failure_reason"] = reason
        for attempt in range(END_ATTEMPTS):
            if attempt:
                time.sleep(END_PAUSE_SECONDS)
            delivered = self.flush() and self._send_tags() and self._send_artifacts() and self._send_model()
            if delivered and self._send(functools.partial(self.client.set_terminated, self.run_id, status)):
                return
        trouble = f"cannot write ({self._disk_error})" if self._disk_error else "stopped answering"
        model = f"model (saved in {self._model[0]}), " if self._model else ""
        try:
            outbox = self.write_outbox(status)
        except OSError as exc:  # the run's folder is on the store's full disk too
            raise TrackingStoreError(
                f"tracking store {self.store} {trouble}, and the outbox cannot be kept either "
                f"({describe_os_error(exc, 'write', self.outbox)}); run {self.run_id} stays RUNNING (nnexp runs "
                f"marks it KILLED once this process ends) without its {model}last metrics, tags and artifacts"
            ) from None
        raise TrackingStoreError(
            f"tracking store {self.store} {trouble}; run {self.run_id}'s {model}last metrics, tags, artifacts and "
            f"status {status} are kept in {outbox}; send them with: nnexp sync {self.outbox}"
        )

    def write_outbox(self, status: str) -> Path:
        """Everything the store missed, and the final status, as JSON in the run's folder."""
        from nnexp.atomic import replacing

        folder = self.outbox or Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        contents = {
            "tracking_uri": self.store,
            "run_id": self.run_id,
            "status": status,
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in self._pending],
            "tags": self._tags,
            "artifacts": self._artifacts,
        }
        with replacing(folder / OUTBOX, "w") as file:
            json.dump(contents, file, indent=1)
        self.outbox = folder
        return folder / OUTBOX


class Tracker:
    """An MLflow store and the experiment runs go to; creates the experiment on first use."""

    def __init__(self, uri: str, experiment: str, create: bool = True) -> None:
        check_store(uri)
        from mlflow import MlflowClient

        # After the import: MLflow sets its own logger to INFO when imported.
        for noisy in ("alembic", "mlflow"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # Each retry of a server that does not answer would be a warning line; nnexp says it once instead.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        # MLflow logs a database error with two tracebacks before raising it; nnexp reports it, in one line.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self.uri = uri
        database = sqlite_path(uri)
        new_store = database is not None and not database.exists()
        #: Whether this tracker created its SQLite store, which :meth:`discard_new_store` may then remove.
        self.created_store = new_store
        try:
            with store_lock(uri):
                try:
                    self.client = MlflowClient(tracking_uri=uri)
                    found = self.client.get_experiment_by_name(experiment)
                    if found is None and create:
                        self.experiment_id = self.client.create_experiment(
                            experiment, artifact_location=artifact_root(uri)
                        )
                except BaseException:
                    # A store that could not be created (a full disk, SIGTERM while creating it) is not left half-made.
                    if new_store:
                        database.unlink(missing_ok=True)
                    raise
        except Exception as exc:
            raise ConfigError(f"tracking store {uri} cannot be used: {store_error_reason(exc)[:300]}") from None
        if found is not None and found.lifecycle_stage == "deleted":
            raise ConfigError(
                f"tracking.experiment={experiment!r} is deleted in {uri}; restore it with mlflow experiments restore, "
                "or choose another name"
            )
        if found is not None:
            self.experiment_id = found.experiment_id
        elif not create:
            raise ConfigError(f"tracking store {uri} has no experiment named {experiment!r}")

    def discard_new_store(self) -> None:
        """Remove the SQLite store this tracker created, with its lock and artifacts, if it holds no run but deleted
        ones; then its folder, if left empty inside the folder nnexp runs in (``outputs``)."""
        from mlflow.entities import ViewType

        from nnexp.folders import discard_dir

        database = sqlite_path(self.uri)
        if not self.created_store or database is None:
            return
        experiments = [experiment.experiment_id for experiment in self.client.search_experiments(ViewType.ALL)]
        if self.client.search_runs(experiments, run_view_type=ViewType.ACTIVE_ONLY, max_results=1):
            return  # another process uses the store too
        shutil.rmtree(database.parent / "mlartifacts", ignore_errors=True)
        for leftover in (database, database.with_name(database.name + ".lock")):
            leftover.unlink(missing_ok=True)
        if Path.cwd().resolve() in database.resolve().parents[1:]:
            discard_dir(database.parent, set())

    def where_to_see(self, run_id: str | None = None, view: str | None = None) -> str:
        """How to look at a run (or the runs table in a saved ``view``): a server's page for it, or ``nnexp ui``
        and the page it will serve."""
        if urllib.parse.urlparse(self.uri).scheme in ("http", "https"):
            return f"see it at {ui_url(self.uri, self.experiment_id, run_id, view)}"
        command = "nnexp ui" if self.uri == resolve_uri(None, Path.cwd()) else f"nnexp ui --uri {self.uri}"
        return f"see it with: {command}, then {ui_url(UI_ADDRESS, self.experiment_id, run_id, view)}"

    def save_view(self, key: str, view: str) -> bool:
        """Save ``view`` (MLflow UI's JSON view state) for the address ``ui_url(..., view=key)``; whether it was."""
        try:
            self.client.set_experiment_tag(self.experiment_id, f"{VIEW_TAG_PREFIX}{key}", view)
        except Exception as exc:  # a view is a convenience: the runs are recorded without it
            log.warning("the runs table's view was not saved: %s", store_error_reason(exc))
            return False
        return True

    def saved_view(self, key: str) -> bool:
        """Whether the experiment holds the view ``key``."""
        tags = self.client.get_experiment(self.experiment_id).tags
        return f"{VIEW_TAG_PREFIX}{key}" in tags

    def open_run(self, run_name: str, tags: Mapping[str, Any], outbox: Path | None = None) -> TrackedRun:
        """A new RUNNING run of this process, with a heartbeat; whoever opens it must :meth:`TrackedRun.end` it."""
        tags = {**{key: str(value) for key, value in tags.items()}, **liveness.process_tags()}
        try:
            created = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        except Exception as exc:
            reason = store_error_reason(exc)
            raise RunCreationError(f"tracking store {self.uri} cannot create the run: {reason[:300]}") from None
        run = TrackedRun(self.client, created.info.run_id, outbox)
        run.start_heartbeat()
        return run

    def reopen_run(self, run_id: str, outbox: Path | None = None) -> TrackedRun:
        """Run ``run_id`` RUNNING again, in this process; see :func:`resumable`."""
        resumable(self.client, self.client.get_run(run_id))
        run = TrackedRun(self.client, run_id, outbox)
        # Where it lives now before the status: a RUNNING run with the dead process's pid would be marked again.
        run.set_tags({**liveness.process_tags(), "resumed": "true", "failure_reason": ""})
        self.client.update_run(run_id, status="RUNNING")
        run.start_heartbeat()
        return run

    def record_failure(self, run_name: str, tags: Mapping[str, Any], reason: str, params: Mapping[str, Any]) -> str:
        """A run that failed before it could start, kept so a sweep shows every job; returns its id."""
        run = self.open_run(run_name, tags)
        run.log_params(params)
        run.end("FAILED", reason)
        return run.run_id

    @contextlib.contextmanager
    def start_run(
        self, run_name: str, tags: Mapping[str, Any], resume: str | None = None, outbox: Path | None = None
    ) -> Iterator[TrackedRun]:
        """A run that ends FINISHED, KILLED on Ctrl-C, or FAILED with a ``failure_reason`` tag otherwise.

        With ``resume``, that existing run is reopened (RUNNING again) instead of a new one created.
        """
        run = self.open_run(run_name, tags, outbox) if resume is None else self.reopen_run(resume, outbox)
        try:
            yield run
        except BaseException as exc:
            stop = interruption(exc)
            reason = str(stop or exc) or ("interrupted (SIGINT)" if stop else type(exc).__name__)
            try:
                run.end("FAILED" if stop is None else "KILLED", reason)
            except TrackingStoreError as lost:  # the original error matters more; say where the rest went
                log.warning("%s", lost)
            if stop is not None:
                code = getattr(stop, "exit_code", 128 + signal.SIGINT)
                raise Interrupted(f"{reason}; MLflow run {run.run_id} is marked KILLED", code) from None
            raise
        run.end("FINISHED")
