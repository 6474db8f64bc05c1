"""MLflow tracking: where runs are stored, how they are recorded in batches, and how they always end.

Over 350 lines (about 460): every check of a store's URI and file (no scheme, in-memory, URI options, a folder,
a FIFO or device, a file that is no SQLite database, a server or database that does not answer) sits with the
others, so that each command that opens a store refuses the same things in the same words.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sqlite3
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nnexp.errors import ConfigError
from nnexp.folders import describe_os_error, enclosing_run_folder, special_file
from nnexp.tracking import liveness

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs there must not create a store concurrently
    fcntl = None

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


log = logging.getLogger(__name__)

DEFAULT_STORE = Path("outputs") / "mlflow.db"
OUTBOX = "mlflow_outbox.json"
#: The run tag MLflow's UI shows as a run's description (Markdown): the only tag of MLflow's own an outbox may hold.
DESCRIPTION_TAG = "mlflow.note.content"
#: The final statuses an outbox may hold.
OUTBOX_STATUSES = ("FINISHED", "FAILED", "KILLED")


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


def relative_location(location: str) -> bool:
    """Whether an experiment's artifact ``location`` is a local path relative to the working folder, as MLflow
    before 2.2 recorded them (its Default experiment's ``./mlruns/0``): each process then writes the artifacts under
    the folder it runs in."""
    parsed = urllib.parse.urlparse(location)
    return parsed.scheme in ("", "file") and not parsed.netloc and not Path(parsed.path).is_absolute()


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


def check_uri(uri: str) -> None:
    """Raise :class:`ConfigError` naming ``uri`` unless its form is one of a store nnexp can keep runs in; nothing
    is opened or created."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "" and not Path(uri).is_dir():
        raise ConfigError(
            f"tracking store {uri} has no scheme: write sqlite:///{uri} for an SQLite database, "
            "or a tracking server's http(s):// URL"
        )
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
    options = re.search(r"[?#]", uri)
    if database is not None and options:
        # SQLAlchemy passes a query to the driver and MLflow still writes: ?mode=ro ran a whole run and left a lock
        # file named after the options.
        raise ConfigError(
            f"tracking store {uri}: nnexp does not support SQLite URI options ({uri[options.start() :]}); "
            f"set tracking.uri to the database file alone: {uri[: options.start()]}"
        )


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming ``uri``, on a store MLflow cannot use or a server that does not answer; create the
    folder of a SQLite database.

    MLflow itself retries an unreachable server for minutes, and its file store now refuses to start.
    """
    check_uri(uri)
    scheme = urllib.parse.urlparse(uri).scheme
    database = sqlite_path(uri)
    if database is not None:
        if database.is_dir():
            raise ConfigError(
                f"tracking store {uri}: {database} is a folder, expected an SQLite database file such as "
                f"{database / 'mlflow.db'}"
            )
        if kind := special_file(database):
            raise ConfigError(
                f"tracking store {uri}: {database} is {kind}, not an SQLite database file; "
                "point tracking.uri at a regular file"
            )
        around = enclosing_run_folder(database) if not os.path.lexists(database) else None
        if around is not None:  # its lock, database and artifacts would be kept and synced as that run's files
            raise ConfigError(
                f"tracking.uri={uri}: a new store there lies inside the folder of another run or sweep ({around}); "
                "a store needs a folder of its own, such as sqlite:///outputs/mlflow.db"
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
    if scheme.partition("+")[0] in SERVER_DATABASES:
        check_database(uri, timeout)
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


#: MLflow's database stores other than SQLite: a server that MLflow, when it cannot connect, retries for 100 s.
SERVER_DATABASES = ("postgresql", "mysql", "mssql")
#: The connect-timeout argument of the drivers that do not call it ``connect_timeout``, as libpq and MySQL do.
TIMEOUT_ARGUMENTS = {"pg8000": "timeout", "pyodbc": "timeout", "pymssql": "login_timeout"}


def check_database(uri: str, timeout: float) -> None:
    """Connect once to the database server of ``uri``, giving up after ``timeout`` seconds, and say why it failed:
    MLflow's own engine retries a refused connection ten times, for 100 s, before it says anything."""
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(uri)
        argument = TIMEOUT_ARGUMENTS.get(url.get_dialect().driver, "connect_timeout")
        engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, connect_args={argument: max(1, round(timeout))}
        )
    except ImportError as exc:
        raise ConfigError(
            f"tracking store {uri} cannot be used: its database driver {exc.name} is not installed ({exc}); install "
            "it into nnexp's Python environment, or name an installed one in the URI: "
            f"{url.get_backend_name()}+DRIVER://..."
        ) from None
    except sqlalchemy.exc.ArgumentError as exc:  # an unknown driver: "Can't load plugin: ..."
        raise unusable_store(uri, exc) from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise unusable_store(uri, exc) from None
    finally:
        engine.dispose()


def quiet_mlflow() -> None:
    """Keep MLflow's and alembic's INFO chatter (creating or migrating a SQLite store's tables) off the terminal;
    call after importing MLflow, which sets its own logger to INFO when imported."""
    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Each retry of a server that does not answer would be a warning line; nnexp says it once instead.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # MLflow logs a database error with two tracebacks before raising it; nnexp reports it, in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def existing_store(uri: str, hint: str) -> MlflowClient:
    """A client for a store that must already exist: a missing SQLite file is an error (``hint`` says what to
    do), not a new empty store; a folder or a FIFO in its place is named as one by :func:`check_store`."""
    from mlflow import MlflowClient

    check_uri(uri)
    database = sqlite_path(uri)
    if database is not None and not database.exists():
        raise ConfigError(f"no MLflow store at {database}; {hint}")
    check_store(uri)
    quiet_mlflow()
    try:  # a SQLite store's schema is checked as it opens: another MLflow may have migrated it
        client = MlflowClient(tracking_uri=uri)
        if database is not None:
            client.search_experiments(max_results=1)
    except Exception as exc:
        raise unusable_store(uri, exc) from None
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


#: The files SQLite keeps beside a database while it writes it: a stale one must go with the database it belongs to.
SQLITE_COMPANIONS = ("-journal", "-wal", "-shm")


def unusable_store(uri: str, exc: BaseException) -> ConfigError:
    """The one-line error for the store ``uri`` that cannot be opened; for a SQLite store left half-built by a process
    killed while it created (or migrated) MLflow's tables, what happened and what to do."""
    reason = store_error_reason(exc)[:300]
    database = sqlite_path(uri)
    runs = sqlite_runs(database) if database is not None and reason.endswith(" already exists") else None
    if database is None or runs is None:
        return ConfigError(f"tracking store {uri} cannot be used: {reason}")
    inside = Path.cwd().resolve() in database.resolve().parents
    files = [database] + [database.with_name(database.name + end) for end in SQLITE_COMPANIONS]
    shown = [os.path.relpath(path) if inside else str(path) for path in files if path == database or path.exists()]
    if runs == 0:
        return ConfigError(
            f"tracking store {uri}: its creation was cut short ({reason}) and it holds no runs; remove "
            f"{' and '.join(shown)} to start again"
        )
    return ConfigError(
        f"tracking store {uri}: a migration of its tables was cut short ({reason}); it holds {runs} runs: restore "
        f"{shown[0]} from a backup"
    )


def sqlite_runs(database: Path) -> int | None:
    """How many runs the SQLite store ``database`` holds, read without MLflow, which would go on migrating a
    half-built one: 0 without MLflow's runs table, None when it cannot be read."""
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=rw", uri=True)) as connection:
            tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return connection.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except (sqlite3.Error, OSError):
        return None


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


def saved_copy(run: Run, name: str) -> str:
    """The hint to use the copy of model ``name`` that ``run`` saved in its folder; empty when there is none."""
    kept = Path(run.data.tags["output_dir"]) / name if run.data.tags.get("output_dir") else None
    return f"; its saved copy: nnexp predict model={kept}" if kept is not None and (kept / "MLmodel").is_file() else ""


def without_model(client: MlflowClient, run: Run, name: str) -> str:
    """What is true of ``run``, which logged no model ``name``: its status, why it has none, and what to do."""
    from nnexp.job.checkpoint import MANIFEST

    info, tags = run.info, run.data.tags
    missing = f"has no logged MLflow model '{name}'"
    if info.status == "RUNNING":
        where = f" in process {tags[liveness.PID]} on {tags.get(liveness.HOST)}" if liveness.PID in tags else ""
        return f"is still RUNNING{where} and {missing} yet; ask again once it has finished"
    folder = Path(tags["output_dir"]) if tags.get("output_dir") else None
    if info.status == "FINISHED":
        return f"is FINISHED and {missing}{saved_copy(run, name)}"
    reason = (tags.get("failure_reason", "").strip().splitlines() or [""])[0][:200]
    found = f"is {info.status}" + (f" ({reason})" if reason else "") + f" and {missing}: it ended before logging one"
    local = folder is not None and (folder / "checkpoints" / MANIFEST).is_file()
    if local or "checkpoint" in {entry.path for entry in client.list_artifacts(info.run_id)}:
        found += f"; continue it with: python -m nnexp resume={info.run_id}"
    return found
