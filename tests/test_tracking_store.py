"""The tracking store: stores that cannot be used are one line naming the store and why, and leave nothing behind."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from nnexp.errors import ConfigError, Interrupted
from nnexp.tracking.store import check_store, existing_store, relative_location, store_error_reason
from nnexp.tracking.tracked_run import Tracker


def test_a_store_interrupted_while_being_created_is_not_left_half_made(tmp_path, monkeypatch):
    database = tmp_path / "mlflow.db"

    def interrupted(tracking_uri: str) -> None:
        database.write_bytes(b"SQLite format 3\0half a store")
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(mlflow, "MlflowClient", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Tracker(f"sqlite:///{database}", "nnexp")
    assert list(tmp_path.iterdir()) == []


#: Every way nnexp opens a store: each refuses the same URIs in the same words.
STORE_OPENERS = (check_store, lambda uri: Tracker(uri, "nnexp"), lambda uri: existing_store(uri, ""))


def test_a_file_that_is_no_database_is_one_line_and_gets_no_lock_beside_it(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_text("my notes\n")
    uri = f"sqlite:///{junk}"
    for use in STORE_OPENERS:
        with pytest.raises(ConfigError, match=r"junk\.db is not an SQLite database$"):
            use(uri)
    assert list(tmp_path.iterdir()) == [junk] and junk.read_text() == "my notes\n"


@pytest.mark.parametrize("uri", ["sqlite:///:memory:", "sqlite://", "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_store_is_refused_before_anything_is_written(tmp_path, monkeypatch, uri):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        Tracker(uri, "nnexp")
    assert str(caught.value) == (
        f"tracking store {uri} is an in-memory database that ends with the process; give a file, "
        "e.g. sqlite:///outputs/mlflow.db"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_store_error_is_described_by_the_database_s_own_reason():
    driver = sqlite3.OperationalError("attempt to write a readonly database")
    try:
        try:
            raise sqlalchemy.exc.OperationalError("INSERT ...", {}, driver)
        except sqlalchemy.exc.OperationalError as wrapped:
            raise MlflowException("(raised as a result of Query-invoked autoflush; consider ...)") from wrapped
    except MlflowException as exc:
        assert store_error_reason(exc) == "attempt to write a readonly database"
    assert store_error_reason(ValueError("plain\nsecond line")) == "plain"


def test_a_deleted_experiment_is_named_with_how_to_restore_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "old")
    tracker.client.delete_experiment(tracker.experiment_id)
    deleted = r"^tracking\.experiment='old' is deleted in sqlite:///.*; restore it with mlflow experiments restore"
    with pytest.raises(ConfigError, match=deleted):
        Tracker(uri, "old")


def test_ui_addresses_open_mlflows_model_training_view():
    from nnexp.tracking.store import ui_url

    assert ui_url("http://127.0.0.1:5000/", "3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    assert ui_url("http://mlflow:5000", "3", "ab12") == (
        "http://mlflow:5000/#/experiments/3/runs/ab12?workflowType=machine_learning"
    )
    # A saved view applies on the runs table's own page only: /#/experiments/3 redirects there without it.
    assert ui_url("http://mlflow:5000", "3", view="cd34") == (
        "http://mlflow:5000/#/experiments/3/runs?viewStateShareKey=cd34&workflowType=machine_learning"
    )


def test_a_saved_view_is_an_experiment_tag_where_mlflows_ui_looks_for_it(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")
    assert not tracker.saved_view("ab12")
    assert tracker.save_view("ab12", '{"orderByKey": "metrics.`test_loss`"}')
    assert tracker.saved_view("ab12")
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.sharedViewState.ab12"] == '{"orderByKey": "metrics.`test_loss`"}'


def test_a_view_the_store_refuses_is_a_warning_not_a_failure(tmp_path, monkeypatch, caplog):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")

    def refused(*args: object) -> None:
        raise MlflowException("attempt to write a readonly database")

    monkeypatch.setattr(tracker.client, "set_experiment_tag", refused)
    assert not tracker.save_view("ab12", "{}")
    assert "the runs table's view was not saved: attempt to write a readonly database" in caplog.text


def test_a_store_another_mlflow_migrated_is_one_line_for_the_commands_that_read_it(tmp_path):
    import sqlite3
    import subprocess
    import sys

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the store
    with sqlite3.connect(tmp_path / "mlflow.db") as database:
        database.execute("update alembic_version set version_num = 'ffffffffffff'")
    for command in (["runs"], ["compare"]):  # a new process: MLflow checks a store's schema once per process
        result = subprocess.run(
            [sys.executable, "-m", "nnexp", *command, "--uri", uri], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 1
        assert result.stderr.startswith(f"error: tracking store {uri} cannot be used: Detected out-of-date database")
        assert result.stderr.count("\n") == 1


def test_a_file_where_the_stores_artifacts_belong_is_one_line_before_any_run(tmp_path):
    """The run's artifacts then failed one by one, in warnings alternating with the metrics that got through."""
    from nnexp.errors import ConfigError
    from nnexp.tracking.store import check_store

    (tmp_path / "mlartifacts").write_text("x")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ConfigError, match=r"mlartifacts is a file, where the store keeps its runs' artifacts"):
        check_store(uri)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_stop_python_wrapped_in_another_error_still_kills_the_run(tmp_path):
    """Python 3.11 wraps a Ctrl-C that lands in a class's ``__set_name__`` (an import after training) in a
    RuntimeError; the run was FAILED with that error and a traceback."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")
    with pytest.raises(Interrupted) as raised, tracker.start_run("wrapped", {}) as run:
        try:
            raise Interrupted("interrupted again (SIGTERM)", 143)
        except Interrupted as stop:
            raise RuntimeError("Error calling __set_name__ on 'PydanticDescriptorProxy' instance") from stop
    assert raised.value.exit_code == 143
    assert str(raised.value) == f"interrupted again (SIGTERM); MLflow run {run.run_id} is marked KILLED"
    assert tracker.client.get_run(run.run_id).info.status == "KILLED"
def test_a_path_without_a_scheme_is_told_to_write_sqlite(tmp_path, monkeypatch):
    """``tracking.uri=rel.db`` was called a plain directory of MLflow's retired file store; there was nothing."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        check_store("rel.db")
    assert str(refused.value) == (
        "tracking store rel.db has no scheme: write sqlite:///rel.db for an SQLite database, "
        "or a tracking server's http(s):// URL"
    )
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old_store").mkdir()  # a folder is what MLflow's file store was
    with pytest.raises(ConfigError, match="old_store is a plain directory, and MLflow's file store is retired"):
        check_store("old_store")


def test_an_abandoned_new_store_leaves_an_older_artifacts_folder_as_it_was(tmp_path, monkeypatch):
    """A store created over an ``mlartifacts`` folder kept when its database was deleted removed that folder whole
    when the sweep that created it stopped before its first job."""
    monkeypatch.chdir(tmp_path)
    older = tmp_path / "outputs" / "mlartifacts" / "1" / "abc" / "artifacts"
    older.mkdir(parents=True)
    (older / "model.npz").write_bytes(b"weights")
    tracker = Tracker(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "nnexp")
    tracker.discard_new_store()
    assert (older / "model.npz").read_bytes() == b"weights"
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_a_socket_where_the_store_belongs_is_one_line_naming_what_it_is(tmp_path):
    """A store path that is no regular file was opened as a database, which MLflow then failed on in its own words."""
    import socket

    path = tmp_path / "sock.db"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        uri = f"sqlite:///{path}"
        for use in STORE_OPENERS:
            with pytest.raises(ConfigError) as refused:
                use(uri)
            assert str(refused.value) == (
                f"tracking store {uri}: {path} is a socket, not an SQLite database file; "
                "point tracking.uri at a regular file"
            )
    assert sorted(tmp_path.iterdir()) == [path]


def test_a_fifo_as_the_store_is_refused_before_anything_blocks_or_is_written(project):
    """Opening the FIFO to read its header blocked for good; the run ignored SIGTERM and left its folder behind."""
    import os

    fifo = project.root / "fifo.db"
    os.mkfifo(fifo)
    result = project.run(f"tracking.uri=sqlite:///{fifo}", "dataset=quadrants", "trainer.epochs=1", timeout=60)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: tracking store sqlite:///{fifo}: {fifo} is a named pipe (FIFO), not an SQLite database file; "
        "point tracking.uri at a regular file\n"
    )
    assert not (project.root / "outputs").exists()
    assert sorted(path.name for path in project.root.iterdir()) == ["conf", "fifo.db", "plugins"]


@pytest.mark.parametrize("options", ["?mode=ro", "?mode=ro&cache=shared", "#part"])
def test_sqlite_uri_options_are_refused_before_the_store_is_touched(tmp_path, options):
    """``?mode=ro`` printed two SQLAlchemy warnings, wrote the run anyway and left ``mlflow.db?mode=ro.lock``."""
    database = tmp_path / "mlflow.db"
    Tracker(f"sqlite:///{database}", "nnexp")
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}
    uri = f"sqlite:///{database}{options}"
    for use in STORE_OPENERS:
        with pytest.raises(ConfigError) as refused:
            use(uri)
        assert str(refused.value) == (
            f"tracking store {uri}: nnexp does not support SQLite URI options ({options}); "
            f"set tracking.uri to the database file alone: sqlite:///{database}"
        )
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == before


def test_a_read_only_store_option_is_one_line_and_no_run(project):
    uri = f"{project.store_uri}?mode=ro"
    result = project.run(f'tracking.uri="{uri}"', "dataset=quadrants", "trainer.epochs=1")
    assert result.returncode == 1
    assert result.stderr == (
        f"error: tracking store {uri}: nnexp does not support SQLite URI options (?mode=ro); "
        f"set tracking.uri to the database file alone: {project.store_uri}\n"
    )
    assert not (project.root / "outputs").exists()


def test_a_run_resumed_on_other_data_is_refused_and_keeps_its_status(tmp_path):
    """A dataset plugin that ignored its rng gave other data at each load: the run went on training on it, while
    its dataset_digest tag named the first."""
    from nnexp.tracking.store import RunCreationError

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")
    run_id = tracker.open_run("drifting", {"dataset_digest": "a" * 64}).run_id
    tracker.client.set_terminated(run_id, "KILLED")
    with pytest.raises(RunCreationError) as refused:
        tracker.open_or_reopen("drifting", {"dataset_digest": "b" * 64, "engine": "numpy"}, resume=run_id)
    assert str(refused.value) == (
        f"run {run_id} trained on other data than it is given now (dataset_digest aaaaaaaaaaaa… recorded, "
        "bbbbbbbbbbbb… now); a resumed run goes on with what it began with: restore that, or start anew"
    )
    assert tracker.client.get_run(run_id).info.status == "KILLED"
    reopened = tracker.open_or_reopen("drifting", {"dataset_digest": "a" * 64}, resume=run_id)
    reopened.end("FINISHED")
    assert tracker.client.get_run(run_id).data.tags["dataset_digest"] == "a" * 64


def test_mlflows_default_experiment_keeps_its_artifacts_beside_a_new_store(tmp_path, monkeypatch):
    """``tracking.experiment=Default`` put the run's artifacts in ./mlruns/0 of the folder nnexp ran from."""
    from nnexp.tracking.store import artifact_root

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    (tmp_path / "outputs").mkdir()
    tracker = Tracker(uri, "Default")
    assert tracker.experiment_id == "0"
    location = tracker.client.get_experiment("0").artifact_location
    assert location.rstrip("/").removeprefix("file://") == f"{artifact_root(uri).removeprefix('file://')}/0"
    assert not (tmp_path / "mlruns").exists()


#: What nnexp says of an experiment whose artifacts would land in the folder each run starts from.
RELATIVE_LOCATION = (
    "tracking.experiment='Default' keeps its artifacts in ./mlruns/0, relative to whatever folder a run starts in, "
    "so its runs would leave them there; choose another tracking.experiment (a new experiment gets an absolute "
    "artifact location)"
)


def store_made_by_old_mlflow(folder: Path) -> str:
    """A SQLite store that MLflow made without nnexp, with one finished run in its Default experiment, whose artifact
    location is ./mlruns/0 as MLflow before 2.2 recorded it (later ones resolve it where the store is made), and an
    experiment keeping its artifacts beside ``folder``."""
    database = folder / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{database}")
    run_id = client.create_run("0", run_name="by-mlflow").info.run_id
    client.log_param(run_id, "seed", "1")
    client.log_metric(run_id, "test_accuracy", 0.5)
    client.set_terminated(run_id)
    client.create_experiment("elsewhere", artifact_location=str(folder.parent / "elsewhere"))
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = './mlruns/0' WHERE experiment_id = 0")
    return f"sqlite:///{database}"


@pytest.mark.parametrize(
    ("location", "relative"),
    [
        ("./mlruns/0", True),
        ("mlruns/0", True),
        ("file:./mlruns/0", True),
        ("/srv/mlruns/0", False),
        ("file:///srv/mlruns/0", False),
        ("s3://bucket/0", False),
        ("mlflow-artifacts:/0", False),
    ],
)
def test_a_relative_artifact_location_is_a_local_path_that_is_not_absolute(location, relative):
    assert relative_location(location) is relative


def test_runs_are_not_logged_into_an_experiment_whose_artifacts_go_to_a_relative_folder(tmp_path, monkeypatch):
    """Their artifacts went to ./mlruns/0 of whatever folder nnexp ran from; reading such an experiment, or logging
    into one whose absolute artifact location lies outside the store's folder, is the user's choice and goes on."""
    store = tmp_path / "store"
    store.mkdir()
    uri = store_made_by_old_mlflow(store)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        Tracker(uri, "Default")
    assert str(refused.value) == RELATIVE_LOCATION
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["mlflow.db", "store"]  # no lock file, no mlruns
    assert Tracker(uri, "Default", create=False).experiment_id == "0"
    kept = Tracker(uri, "elsewhere").open_run("kept", {})
    kept.log_artifact(store / "mlflow.db")
    kept.end("FINISHED")
    assert (tmp_path / "elsewhere" / kept.run_id / "artifacts" / "mlflow.db").is_file()


def test_a_run_into_an_experiment_with_a_relative_artifact_folder_is_one_line_and_no_run(project):
    outputs = project.root / "outputs"
    outputs.mkdir()
    store_made_by_old_mlflow(outputs)
    result = project.run("tracking.experiment=Default", "dataset=quadrants", "trainer.epochs=1")
    assert (result.returncode, result.stderr) == (1, f"error: {RELATIVE_LOCATION}\n")
    assert sorted(path.name for path in project.root.iterdir()) == ["conf", "outputs", "plugins"]
    assert sorted(path.name for path in outputs.iterdir()) == ["mlflow.db"]
    assert [run.info.run_name for run in project.runs()] == ["by-mlflow"]
    for command in ("runs", "compare"):
        shown = project.run(command, "--experiment", "Default")
        assert shown.returncode == 0 and "by-mlflow" in shown.stdout, shown.stderr


def half_built_store(database: Path) -> None:
    """A SQLite store as a process killed while MLflow created its tables leaves one: the next migration's table is
    there, its revision not recorded (as ``kill -9`` 5 s after a first run's start left it)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()  # creates the store
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '3500859a5d39'")  # the one before datasets'
        connection.execute("DROP TABLE webhooks")  # a table missing: MLflow migrates again, from that revision
        connection.commit()


def test_a_store_cut_short_while_being_created_says_so_and_what_to_remove(project):
    """The store of a first run killed while creating it, and that run's folder, which holds no record."""
    import json
    import subprocess

    from nnexp.folders import FOLDER_LOCK, OPENED, STORE
    from nnexp.tracking import liveness

    database = project.root / "outputs" / "mlflow.db"
    database.parent.mkdir()
    half_built_store(database)
    ended = subprocess.Popen(["true"])
    ended.wait()
    killed = project.root / "outputs" / "2026-01-01" / "12-00-00"
    (killed / ".hydra").mkdir(parents=True)
    lock = {**liveness.where_this_process_lives(), liveness.PID: str(ended.pid), OPENED: True, STORE: project.store_uri}
    (killed / FOLDER_LOCK).write_text(json.dumps(lock))
    result = project.run("trainer.epochs=1")
    assert result.returncode == 1
    assert result.stderr == (
        f"error: tracking store {project.store_uri}: its creation was cut short (table datasets already exists) and "
        "it holds no runs; remove outputs/mlflow.db to start again\n"
    )
    assert [path.name for path in (project.root / "outputs").iterdir()] == ["mlflow.db"]
    database.unlink()
    assert project.run("trainer.epochs=1").returncode == 0


def test_a_store_with_runs_whose_migration_was_cut_short_is_to_be_restored(tmp_path):
    from nnexp.tracking.store import unusable_store

    database = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE runs (run_uuid TEXT)")
        connection.executemany("INSERT INTO runs VALUES (?)", [("a",), ("b",)])
        connection.commit()
    (tmp_path / "mlflow.db-journal").write_bytes(b"")
    cut = sqlite3.OperationalError("table _alembic_tmp_experiments already exists")
    assert str(unusable_store(f"sqlite:///{database}", cut)) == (
        f"tracking store sqlite:///{database}: a migration of its tables was cut short (table _alembic_tmp_experiments "
        f"already exists); it holds 2 runs: restore {database} from a backup"
    )
    assert str(unusable_store(f"sqlite:///{tmp_path / 'none.db'}", cut)).endswith("cannot be used: " + str(cut))


@pytest.fixture
def held_port() -> Iterator[socket.socket]:
    """A port of this machine held by a socket that does not listen (yet): a connection to it is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held


def test_a_database_server_that_refuses_connections_is_one_line_at_once(held_port):
    pytest.importorskip("psycopg")  # the driver SQLAlchemy 2.1 loads for postgresql://
    uri = f"postgresql://u@127.0.0.1:{held_port.getsockname()[1]}/db"
    with pytest.raises(ConfigError, match=r"cannot be used: connection failed: .*Connection refused$") as caught:
        check_store(uri)
    assert str(caught.value).startswith(f"tracking store {uri} cannot be used: ")


def test_a_database_server_that_never_answers_is_given_up_after_the_timeout(held_port):
    pytest.importorskip("psycopg")
    held_port.listen()  # the kernel accepts the connection, and nothing ever answers on it
    uri = f"postgresql://u@127.0.0.1:{held_port.getsockname()[1]}/db"
    with pytest.raises(ConfigError, match=r"cannot be used: connection timeout expired$"):
        check_store(uri, timeout=1)


def test_a_database_driver_that_is_not_installed_is_one_line_saying_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as if it were not installed, wherever it is
    uri = "postgresql+psycopg2://u@127.0.0.1:1/db"
    with pytest.raises(ConfigError) as caught:
        check_store(uri)
    assert str(caught.value) == (
        f"tracking store {uri} cannot be used: its database driver psycopg2 is not installed (import of psycopg2 "
        "halted; None in sys.modules); install it into nnexp's Python environment, or name an installed one in the "
        "URI: postgresql+DRIVER://..."
    )
    with pytest.raises(ConfigError, match=r"cannot be used: Can't load plugin: sqlalchemy\.dialects:postgresql\.nodri"):
        check_store("postgresql+nodriver://u@127.0.0.1:1/db")


def test_a_new_store_inside_a_runs_folder_is_refused_and_nothing_created(tmp_path, monkeypatch):
    """``tracking.uri=sqlite:///outputs/base/new.db`` FINISHED, leaving new.db, its lock and mlartifacts/ in run
    base's folder, which base's sync and logging treat as its own."""
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "outputs" / "base"
    base.mkdir(parents=True)
    (base / ".nnexp.lock").write_text("{}")
    for uri in ("sqlite:///outputs/base/new.db", "sqlite:///outputs/base/sub/new.db"):
        with pytest.raises(ConfigError) as caught:
            check_store(uri)
        assert str(caught.value) == (
            f"tracking.uri={uri}: a new store there lies inside the folder of another run or sweep ({base}); "
            "a store needs a folder of its own, such as sqlite:///outputs/mlflow.db"
        )
    assert [path.name for path in base.iterdir()] == [".nnexp.lock"]
    check_store("sqlite:///outputs/mlflow.db")  # beside the run folders, as the default store is


def test_a_new_store_inside_a_runs_folder_is_one_line_and_no_run(project):
    base = project.root / "outputs" / "base"
    base.mkdir(parents=True)
    (base / ".nnexp.lock").write_text("{}")
    result = project.run("tracking.uri=sqlite:///outputs/base/new.db", "trainer.epochs=1")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: tracking.uri=sqlite:///outputs/base/new.db: a new store there lies inside")
    assert [path.name for path in base.iterdir()] == [".nnexp.lock"]
    assert project.job_dirs() == []
