"""Full disks, read-only and blocked folders, and setup errors: one line each, nothing half-written, the model first.

The disk faults use a small tmpfs, which only root may mount; elsewhere those tests skip and say why.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nnexp import atomic
from nnexp.job.sweep import Sweep, write_summary
from nnexp.tracking import tracked_run
from nnexp.tracking.outbox import sync
from nnexp.tracking.store import OUTBOX, disk_error
from nnexp.tracking.tables import Table
from nnexp.tracking.tracked_run import Tracker, TrackingStoreError

QUICK = ("trainer.epochs=2",)


def one_line_error(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """The error line of a run that failed as a user error should: exit 1, no traceback, the line names ``named``."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for text in named:
        assert text in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (root only), unmounted afterwards."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> None:
    """Write until the disk is full."""
    with open(disk / "filler", "wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass


def test_negative_seed_is_one_line_and_leaves_no_folder(project):
    one_line_error(project.run("seed=-1"), "seed must be >= 0, got -1")
    assert not (project.root / "outputs").exists()


def test_outputs_that_is_a_file_is_one_line(project):
    (project.root / "outputs").write_text("not a folder")
    one_line_error(project.run(*QUICK, "tracking.uri=sqlite:///store/mlflow.db"), "outputs", "Not a directory")
    assert (project.root / "outputs").read_text() == "not a folder"


def test_store_path_that_is_a_folder_is_one_line_at_once(project):
    (project.root / "store").mkdir()
    started = time.monotonic()
    line = one_line_error(project.run(*QUICK, f"tracking.uri=sqlite:///{project.root / 'store'}"), "is a folder")
    assert "expected an SQLite database file" in line
    assert time.monotonic() - started < 60  # MLflow's own retries took minutes
    assert not (project.root / "outputs").exists()


def test_read_only_outputs_is_one_line(project, tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    line = one_line_error(project.run(*QUICK, f"hydra.run.dir={tmpfs}/run"), "Read-only file system")
    assert str(tmpfs) in line


def test_full_disk_before_the_run_is_one_line_and_leaves_no_folder(project, tmpfs):
    fill(tmpfs)
    store = f"tracking.uri=sqlite:///{project.root / 'store.db'}"
    one_line_error(project.run(*QUICK, store, f"hydra.run.dir={tmpfs}/run"), "disk is full")
    assert sorted(path.name for path in tmpfs.iterdir()) == ["filler"]


def test_disk_full_during_training_fails_the_run_naming_the_model(project, tmpfs):
    """Training goes on without disk space; the run is FAILED because its model could not be kept."""
    store = f"tracking.uri=sqlite:///{project.root / 'store.db'}"
    process = project.start("trainer.epochs=100", "checkpoint.every=0", store, f"hydra.run.dir={tmpfs}/run")
    assert process.stderr is not None
    for line in process.stderr:  # the first progress line: training has begun
        if "epoch" in line:
            break
    fill(tmpfs)
    stdout, stderr = process.communicate(timeout=300)
    line = one_line_error(subprocess.CompletedProcess([], process.returncode, stdout, stderr), "model was not kept")
    assert "disk is full" in line
    (run,) = MlflowClient(tracking_uri=f"sqlite:///{project.root / 'store.db'}").search_runs(["1"])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] in line
    assert not (tmpfs / "run" / "model").exists()  # no half-written MLflow model


def test_a_run_folder_with_room_for_the_weights_only_finishes_and_logs_its_model(project, tmpfs, monkeypatch):
    """The 1.1 MB of weights fit in the run folder, their MLflow model's copy does not: the store gets it all."""
    temporary = project.root / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    store = f"tracking.uri=sqlite:///{project.root / 'store.db'}"
    folder = f"hydra.run.dir={tmpfs}/run"
    result = project.run(*QUICK, "model.hidden_sizes=[520,520]", "checkpoint.every=0", store, folder)
    assert result.returncode == 0, result.stderr
    assert (
        f"warning: not written: model/: cannot write in {tmpfs}/run: No space left on device (the disk is full; "
        "free some space); model.npz is kept, and the MLflow model is logged from a temporary copy\n"
    ) in result.stdout
    assert "not kept" not in result.stdout + result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{project.root / 'store.db'}")
    (run,) = client.search_runs(["1"])
    assert run.info.status == "FINISHED"
    logged = {entry.path for entry in client.list_artifacts(run.info.run_id)}
    assert {"model.npz", "config.yaml", "confusion_matrix.csv"} <= logged
    assert run.outputs.model_outputs
    assert (tmpfs / "run" / "model.npz").is_file() and not (tmpfs / "run" / "model").exists()
    assert not any(temporary.iterdir()), "the temporary MLflow model is removed once logged"


#: A Hydra callback, in a project's plugin file, that puts a file where a run's folder ``NAME`` goes once the run has
#: started: a folder holding it beforehand is refused.
BLOCKER = """import sys
from pathlib import Path

from hydra.experimental.callback import Callback

sys.modules["nnexp_test_blocker"] = sys.modules[__name__]  # a name Hydra's _target_ can import


class Block(Callback):
    def on_job_start(self, config, **kwargs):
        (Path(config.hydra.runtime.output_dir) / "NAME").write_text("a file where the NAME folder goes")
"""


def blocked(project, name: str) -> str:
    """The override that makes a run find a file where its folder ``name`` goes (see :data:`BLOCKER`)."""
    (project.root / "plugins" / "blocker.py").write_text(BLOCKER.replace("NAME", name))
    return "+hydra.callbacks.blocker._target_=nnexp_test_blocker.Block"


def test_plots_that_cannot_be_written_are_a_warning_and_the_model_is_kept(project):
    result = project.run(*QUICK, "hydra.run.dir=outputs/blocked", blocked(project, "plots"))
    assert result.returncode == 0, result.stderr
    assert "warning: plots not written" in result.stdout + result.stderr
    (run,) = project.runs()
    assert run.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=project.store_uri)
    logged = {entry.path for entry in client.list_artifacts(run.info.run_id)}
    assert {"model.npz", "config.yaml", "confusion_matrix.csv"} <= logged and "plots" not in logged
    assert client.get_run(run.info.run_id).outputs.model_outputs


def test_checkpoints_that_cannot_be_written_are_a_warning_and_training_goes_on(project):
    result = project.run("trainer.epochs=3", "hydra.run.dir=outputs/blocked", blocked(project, "checkpoints"))
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("warning: checkpoint not written") == 1, output
    (run,) = project.runs()
    assert run.info.status == "FINISHED"


def test_a_project_without_conf_still_runs_in_a_folder_of_its_own(project):
    """The folder claim needs no preset: the embedded defaults use it too."""
    shutil.rmtree(project.root / "conf")
    for _ in range(2):
        assert project.run("trainer.epochs=1").returncode == 0
    assert len(project.job_dirs()) == 2


def test_a_new_store_on_a_full_disk_is_one_line_and_not_left_half_made(project, tmpfs):
    fill(tmpfs)
    line = one_line_error(project.run(*QUICK, f"tracking.uri=sqlite:///{tmpfs}/mlflow.db"), "cannot be used")
    assert "disk is full" in line
    assert sorted(path.name for path in tmpfs.iterdir()) == ["filler"]
    assert not (project.root / "outputs").exists()


def test_a_store_whose_folder_is_a_file_is_one_line(project):
    (project.root / "taken").write_text("")
    line = one_line_error(project.run(*QUICK, "tracking.uri=sqlite:///taken/mlflow.db"), "taken")
    assert "a file stands where a folder is expected" in line


def test_a_store_that_cannot_be_written_is_one_line_naming_the_database_s_reason(project):
    assert project.run(*QUICK).returncode == 0
    database = project.root / "outputs" / "mlflow.db"
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    if subprocess.run(["mount", "--bind", str(database), str(database)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(database)], check=True, capture_output=True)
        result = project.run(*QUICK)
    finally:
        subprocess.run(["umount", "-l", str(database)], check=False)
    line = one_line_error(result, str(database), "cannot create the run: attempt to write a readonly database")
    assert result.stderr.strip() == line, result.stderr


def test_a_checkpoint_on_a_full_disk_is_a_warning_naming_its_folder(project):
    """A write on a full disk raises an OSError with no file name: the warning names the checkpoint folder."""
    (project.root / "plugins" / "full_disk.py").write_text(
        "import errno, os\n"
        "import nnexp.job.checkpoint\n"
        "def save(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "nnexp.job.checkpoint.save = save\n"
    )
    result = project.run("trainer.epochs=2", "hydra.run.dir=outputs/full")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in (result.stdout + result.stderr).splitlines() if "checkpoint not written" in line]
    assert str(Path("outputs", "full", "checkpoints")) in line, line
    assert "No space left on device" in line


def sqlite_full_error() -> Exception:
    """SQLite's own error for a write that finds no room, raised by a real database that cannot grow, and wrapped by
    SQLAlchemy and MLflow as a store on a full disk raises it."""
    connection = sqlite3.connect(":memory:")
    connection.execute("PRAGMA max_page_count=2")
    try:
        connection.execute("CREATE TABLE t (x)")
        connection.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100)
    except sqlite3.OperationalError as driver:
        try:
            raise sqlalchemy.exc.OperationalError("INSERT ...", {}, driver) from driver
        except sqlalchemy.exc.OperationalError as wrapped:
            try:
                raise MlflowException("(raised as a result of Query-invoked autoflush)") from wrapped
            except MlflowException as exc:
                return exc
    raise AssertionError("the database grew past its page limit")


def test_sqlite_s_full_disk_is_a_disk_error_naming_the_database():
    """SQLite raises no OSError on a full disk; its store read as one that stopped answering."""
    database = Path("/data/outputs/mlflow.db")
    assert disk_error(sqlite_full_error(), database) == f"database or disk is full: {database}"
    assert disk_error(MlflowException("no such table: runs")) is None


def test_a_store_full_at_the_end_of_a_run_keeps_the_model_for_nnexp_sync(tmp_path, monkeypatch):
    """The run is not closed FINISHED with no model (nor with a FAILED one): the outbox holds the status and the
    model folder, the message says the disk is full, and nnexp sync logs the model once there is room."""
    from nnexp import LOSSES, MODELS
    from nnexp.network_files import describe
    from nnexp.serving import has_ready_model, log_saved_model, save_model

    database = tmp_path / "outputs" / "mlflow.db"
    uri = f"sqlite:///{database}"
    folder = tmp_path / "run"
    loss = LOSSES.build({"name": "cross_entropy"})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [4]}).build(2, 2, loss, np.random.default_rng(0), np.float32)
    save_model(folder / "model", network, describe(network, loss, ["left", "right"]), np.zeros((3, 2)))
    tracker = Tracker(uri, "nnexp")
    network.save(folder / "model.npz")
    run = tracker.open_run("full", {"output_dir": str(folder)}, outbox=folder)
    run.log_params({"trainer.epochs": 2})
    for epoch in (1, 2):
        run.log_metrics({"train_loss": 0.5, "train_accuracy": 0.5}, step=epoch)
    run.log_metrics({"test_loss": 0.5, "test_accuracy": 0.5}, step=2)

    def full(*args, **kwargs):
        raise sqlite_full_error()

    for request in ("log_batch", "set_terminated", "create_logged_model", "log_artifact", "log_artifacts"):
        monkeypatch.setattr(tracker.client, request, full)
    monkeypatch.setattr(tracked_run, "END_PAUSE_SECONDS", 0.0)
    assert log_saved_model(run, folder / "model", 2) is None
    with pytest.raises(TrackingStoreError) as raised:
        run.end("FINISHED")
    message = str(raised.value)
    assert f"cannot write (database or disk is full: {database})" in message
    assert f"model (saved in {folder / 'model'})" in message and message.endswith(f"nnexp sync {folder}")
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run.run_id).info.status == "RUNNING"  # not FINISHED without its model
    assert json.loads((folder / OUTBOX).read_text())["status"] == "FINISHED"

    assert "the model" in sync(folder)  # there is room again
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert has_ready_model(client, run.run_id)


def test_an_outbox_that_cannot_be_written_either_says_what_is_lost(tmp_path, monkeypatch):
    """The run's folder on the store's full disk: no traceback, and the line says the run stays RUNNING."""
    database = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{database}", "nnexp")
    folder = tmp_path / "run"
    folder.write_text("a file where the run's folder goes, so that no outbox can be written")
    run = tracker.open_run("full", {}, outbox=folder)
    run.log_metrics({"train_loss": 0.5}, step=1)
    monkeypatch.setattr(tracker.client, "log_batch", lambda *args, **kwargs: (_ for _ in ()).throw(sqlite_full_error()))
    monkeypatch.setattr(tracked_run, "END_PAUSE_SECONDS", 0.0)
    with pytest.raises(TrackingStoreError) as raised:
        run.end("FINISHED")
    message = str(raised.value)
    assert f"cannot write (database or disk is full: {database}), and the outbox cannot be kept either" in message
    assert f"run {run.run_id} stays RUNNING" in message
def removed_run_folder(tmp_path: Path) -> tuple[Tracker, tracked_run.TrackedRun, Path]:
    """A run whose folder held model.npz and Hydra's .hydra, and was removed once model.npz was logged."""
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (folder / "model.npz").write_bytes(b"weights")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")
    run = tracker.open_run("rmdir", {"output_dir": str(folder)}, outbox=folder)
    run.log_metrics({"train_loss": 0.5}, step=1)
    run.log_artifact(folder / "model.npz")
    shutil.rmtree(folder)
    return tracker, run, folder


def not_logged(path: Path) -> str:
    return f"warning: not logged: {path}: No such file or directory (the run folder was removed?)"


def test_an_artifact_whose_run_folder_was_removed_is_a_warning_and_the_run_finishes(tmp_path, caplog):
    """The store was blamed for the missing .hydra, and the run ended KILLED with an outbox sync refused for good."""
    tracker, run, folder = removed_run_folder(tmp_path)
    with caplog.at_level(logging.WARNING, "nnexp.tracking.tracked_run"):
        run.log_artifact(folder / ".hydra", "hydra")
        run.end("FINISHED")
    assert caplog.messages == [not_logged(folder / ".hydra")]
    finished = tracker.client.get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert [entry.path for entry in tracker.client.list_artifacts(run.run_id)] == ["model.npz"]
    assert [m.value for m in tracker.client.get_metric_history(run.run_id, "train_loss")] == [0.5]
    assert not folder.exists(), "no outbox recreates the folder"


def test_a_file_removed_while_it_is_uploaded_does_not_blame_the_store(tmp_path, monkeypatch, caplog):
    tracker, run, folder = removed_run_folder(tmp_path)
    (folder / "plots").mkdir(parents=True)
    (folder / "plots" / "loss.png").write_bytes(b"png")

    def removed_meanwhile(run_id, path, artifact_path=None):
        shutil.rmtree(folder)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    monkeypatch.setattr(tracker.client, "log_artifacts", removed_meanwhile)
    with caplog.at_level(logging.WARNING, "nnexp.tracking.tracked_run"):
        run.log_artifact(folder / "plots", "plots")
        run.end("FINISHED")
    assert caplog.messages == [not_logged(folder / "plots")]
    assert tracker.client.get_run(run.run_id).info.status == "FINISHED"


def test_an_outbox_lists_no_artifact_whose_file_is_gone(tmp_path, monkeypatch, caplog):
    """The store away too: what it missed is kept, but not a file nnexp sync could never send."""
    tracker, run, folder = removed_run_folder(tmp_path)
    folder.mkdir()
    (folder / "config.yaml").write_text("seed: 0\n")

    def away(*args, **kwargs):
        raise MlflowException("connection refused")

    for request in ("log_batch", "set_terminated", "log_artifact", "log_artifacts"):
        monkeypatch.setattr(tracker.client, request, away)
    monkeypatch.setattr(tracked_run, "END_PAUSE_SECONDS", 0.0)
    run.log_artifact(folder / "config.yaml")
    run.log_artifact(folder / "plots", "plots")
    with caplog.at_level(logging.WARNING, "nnexp.tracking.tracked_run"), pytest.raises(TrackingStoreError):
        run.end("FINISHED")
    assert not_logged(folder / "plots") in caplog.messages
    assert json.loads((folder / OUTBOX).read_text())["artifacts"] == [[str(folder / "config.yaml"), None]]


def test_a_held_model_whose_folder_was_removed_fails_the_run_saying_so(tmp_path, caplog):
    """Never FINISHED without its model; and the store, which answers, is not blamed."""
    from nnexp.serving import log_saved_model

    tracker, run, folder = removed_run_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert log_saved_model(run, folder / "model", 1) is None
        with pytest.raises(tracked_run.ModelLostError) as raised:
            run.end("FINISHED")
    gone = f"{folder / 'model'}: No such file or directory (the run folder was removed?)"
    assert caplog.messages == [f"warning: not logged: {gone}"]
    assert str(raised.value) == f"the model was not logged: {gone}; run {run.run_id} is marked FAILED"
    ended = tracker.client.get_run(run.run_id)
    assert (ended.info.status, ended.data.tags["failure_reason"]) == ("FAILED", f"the model was not logged: {gone}")


def test_an_artifact_copied_while_the_database_refuses_writes_does_not_say_the_store_is_back(
    tmp_path, monkeypatch, caplog
):
    """The store's file deleted mid-run: "does not answer" alternated with "takes requests again" for each
    artifact copied into its folder, while no write reached the database."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")
    run = tracker.open_run("deleted store", {}, outbox=tmp_path / "run")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    log_batch = tracker.client.log_batch

    def read_only(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(tracker.client, "log_batch", read_only)
    with caplog.at_level(logging.WARNING, "nnexp.tracking.tracked_run"):
        run.log_metrics({"train_loss": 0.5}, step=1)
        assert not run.flush()
        run.log_artifact(tmp_path / "config.yaml")
        assert not run.flush()
        monkeypatch.setattr(tracker.client, "log_batch", log_batch)
        assert run.flush()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert caplog.messages == [
        f"tracking store {store} does not answer (attempt to write a readonly database); training goes on, and "
        "what it misses is kept and sent when it takes it again",
        f"tracking store {store} takes requests again; sending what it missed",
    ]
    run.end("FINISHED")


def test_a_run_folder_removed_mid_run_is_a_warning_and_the_run_finishes(project):
    """The store was blamed three times, the run ended KILLED, and its outbox could never be sent."""
    process = project.start("trainer.epochs=400", "checkpoint.every=20", "hydra.run.dir=outputs/rmd")
    folder = project.root / "outputs" / "rmd"
    deadline = time.monotonic() + 120
    while not (folder / "checkpoints" / "checkpoint.json").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGSTOP)  # removed while training, not after
    shutil.rmtree(folder)
    process.send_signal(signal.SIGCONT)
    stdout, stderr = process.communicate(timeout=300)
    output = stdout + stderr
    assert process.returncode == 0, output
    assert not_logged(folder / ".hydra") in output
    assert "does not answer" not in output and not (folder / OUTBOX).exists()
    [run] = project.runs()
    assert run.info.status == "FINISHED"


def test_a_sweep_folder_used_before_is_refused_and_keeps_the_first_sweep(project):
    first = project.run("-m", *QUICK, "seed=1", "hydra.sweep.dir=X")
    assert first.returncode == 0, first.stderr
    second = project.run("-m", *QUICK, "seed=2", "hydra.sweep.dir=X")
    one_line_error(second, "hydra.sweep.dir=", "already holds a sweep")
    assert len(project.runs()) == 2  # the first sweep's parent and job, no more
    assert "seed: 1" in (project.root / "X" / "0" / ".hydra" / "config.yaml").read_text()


def test_a_sweep_folder_on_a_full_disk_is_one_line_naming_it_and_leaves_nothing(project, tmpfs):
    """Hydra's multirun.yaml could not be written: the line named no path, and the parent run ended FAILED."""
    fill(tmpfs)
    result = project.run("-m", *QUICK, "seed=1,2", f"hydra.sweep.dir={tmpfs}/sw")
    line = one_line_error(result, f"the sweep stopped: cannot write in {tmpfs}/sw: No space left on device")
    assert "Errno" not in line
    assert sorted(path.name for path in tmpfs.iterdir()) == ["filler"]
    assert not (project.root / "outputs").exists()


def test_a_read_only_sweep_folder_is_one_line_advising_hydra_sweep_dir(project, tmpfs):
    """The advice named hydra.run.dir, which a sweep does not write to."""
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True, capture_output=True)
    result = project.run("-m", *QUICK, "seed=1,2", f"hydra.sweep.dir={tmpfs}/sw")
    one_line_error(
        result, f"hydra.sweep.dir: cannot create {tmpfs}/sw: Read-only file system (the file system is read-only; "
        "run from a writable folder or set hydra.sweep.dir)"
    )
    assert not (project.root / "outputs").exists()


def test_a_file_where_a_sweep_job_s_folder_goes_is_one_line_naming_it(project):
    (project.root / "sw").mkdir()
    (project.root / "sw" / "0").write_text("mine")
    result = project.run("-m", *QUICK, "seed=1,2", "hydra.sweep.dir=sw")
    one_line_error(result, "the sweep stopped: cannot use sw/0: File exists (a file stands where a folder is expected)")
    assert sorted(path.name for path in (project.root / "sw").iterdir()) == ["0"]
    assert not (project.root / "outputs").exists()


def test_hydra_logging_settings_are_one_line_and_leave_nothing(project):
    one_line_error(project.run(*QUICK, "hydra.job_logging.root.level=BOGUS"), "hydra.job_logging.root: Unknown level")
    one_line_error(
        project.run(*QUICK, "hydra.job_logging.handlers.file.filename=/tmp/nnexp-outside.log"),
        "hydra.job_logging.handlers.file.filename=/tmp/nnexp-outside.log: a run's log files go inside its folder",
    )
    one_line_error(  # a traceback before, as was hydra.verbose=3
        project.run("-m", *QUICK, "seed=1,2", "hydra.job_logging.version=2"),
        "hydra.job_logging.version=2: Unsupported version: 2",
    )
    assert not (project.root / "outputs").exists()
    assert not Path("/tmp/nnexp-outside.log").exists()
    done = project.run(*QUICK, "hydra/job_logging=disabled", "hydra.run.dir=outputs/2026/../x")
    assert done.returncode == 0, done.stderr
    assert (project.root / "outputs" / "x" / "model.npz").is_file()
    assert not (project.root / "outputs" / "2026").exists()


def test_nnexp_runs_removes_a_folder_left_at_setup_by_a_killed_process(project):
    import json

    from nnexp.tracking import liveness

    ended = subprocess.Popen(["true"])
    ended.wait()
    folder = project.root / "outputs" / "2026-01-01" / "12-00-00"
    (folder / ".hydra").mkdir(parents=True)
    (folder / "nnexp.log").write_text("")
    dead = {**liveness.where_this_process_lives(), liveness.PID: str(ended.pid), liveness.PID_STARTED: ""}
    (folder / ".nnexp.lock").write_text(json.dumps(dead))
    listed = project.run("runs")
    assert f"removed outputs/2026-01-01/12-00-00: left at setup by a run whose process {ended.pid} " in listed.stderr
    assert not (project.root / "outputs" / "2026-01-01").exists()


def test_nnexp_runs_removes_a_folder_killed_while_opening_its_run_only_when_the_store_has_no_run_of_it(project):
    """A process killed while its MLflow run was being opened: its folder goes once the store it named shows no run
    of it; one the store's run names, one of another store and one of a live process stay."""
    from nnexp.folders import FOLDER_LOCK, OPENED, STORE
    from nnexp.tracking import liveness

    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = {**liveness.where_this_process_lives(), liveness.PID: str(ended.pid), liveness.PID_STARTED: ""}
    day = project.root / "outputs" / "2026-01-01"
    locks = {
        "unrecorded": {**dead, OPENED: True, STORE: project.store_uri},
        "recorded": {**dead, OPENED: True, STORE: project.store_uri},
        "other_store": {**dead, OPENED: True, STORE: f"sqlite:///{project.root / 'other.db'}"},
        "no_store_named": {**dead, OPENED: True},
        "alive": {**liveness.where_this_process_lives(), OPENED: True, STORE: project.store_uri},
    }
    for name, lock in locks.items():
        (day / name / ".hydra").mkdir(parents=True)
        (day / name / "nnexp.log").write_text("")
        (day / name / FOLDER_LOCK).write_text(json.dumps(lock))
    client = MlflowClient(tracking_uri=project.store_uri)
    client.create_run(client.create_experiment("nnexp"), tags={"output_dir": str(day / "recorded")})
    listed = project.run("runs")
    assert listed.returncode == 0, listed.stderr
    assert (
        f"removed outputs/2026-01-01/unrecorded: left by a run whose process {ended.pid} on {dead[liveness.HOST]} "
        "has ended while its MLflow run was being opened, and no run in the store names it\n"
    ) in listed.stderr
    assert listed.stderr.count("removed ") == 1, listed.stderr
    assert sorted(path.name for path in day.iterdir()) == ["alive", "no_store_named", "other_store", "recorded"]


def test_nnexp_runs_keeps_a_leftover_holding_a_user_s_file_and_says_so(project):
    """``nnexp runs`` removed a setup leftover whole, with a file the user kept in its ``.hydra`` folder."""
    import json

    from nnexp.tracking import liveness

    ended = subprocess.Popen(["true"])
    ended.wait()
    folder = project.root / "outputs" / "2026-01-01" / "12-00-00"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "notes.txt").write_text("the user's")
    dead = {**liveness.where_this_process_lives(), liveness.PID: str(ended.pid), liveness.PID_STARTED: ""}
    (folder / ".nnexp.lock").write_text(json.dumps(dead))
    listed = project.run("runs")  # no store yet: it says so after the note
    assert (
        f"kept outputs/2026-01-01/12-00-00: left at setup by a run whose process {ended.pid} on "
        f"{dead[liveness.HOST]} has ended, but it holds files nnexp did not write: .hydra/notes.txt\n"
    ) in listed.stderr
    assert (folder / ".hydra" / "notes.txt").read_text() == "the user's"


def test_a_store_left_without_mlflows_tables_is_opened_without_mlflow_chatter(project):
    import sqlite3

    (project.root / "outputs").mkdir()
    with sqlite3.connect(project.root / "outputs" / "mlflow.db") as database:  # as a kill before MLflow's tables
        database.execute("create table unrelated (x int)")
    listed = project.run("runs")
    assert "INFO" not in listed.stderr, listed.stderr
    assert listed.stderr.startswith("error: tracking store"), listed.stderr


class FullFile(io.StringIO):
    """A file on a full disk: every write fails."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_sweep_summary_on_a_full_disk_is_one_warning_naming_its_folder_and_no_empty_file(
    tmp_path, monkeypatch, capsys
):
    def full_disk_open(descriptor: int, *args, **kwargs) -> FullFile:
        os.close(descriptor)
        return FullFile()

    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    table = Table(["run", "test_accuracy"], [["seed=1", "0.5000"]])
    folder = tmp_path / "summary"

    assert not write_summary(folder, table, table, lambda path: path.write_bytes(b"png"))
    assert list(folder.iterdir()) == [], "no empty or partial summary file is left"
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"warning: cannot write the summary in {folder}: No space left on device (the disk is full; free some space); "
        "the table above is kept in MLflow"
    ]


def test_a_sweep_whose_folder_fills_up_prints_its_table_and_ends_with_its_failed_job(project, tmpfs):
    (tmpfs / "filler").write_bytes(b"\0" * 1_750_000)  # room for one job, not for the second and the summary
    result = project.run("-m", "dataset=quadrants", *QUICK, "seed=1,2", f"hydra.sweep.dir={tmpfs}/sw")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[-1] == "error: 1 of 2 jobs failed; the table above and their MLflow runs give the reasons"
    assert errors[0].startswith("error: job 1 failed: the trained model was not kept"), errors
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: cannot write the summary in {tmpfs}/sw/summary: No space left on device "
        "(the disk is full; free some space); the table above is kept in MLflow"
    ]
    assert "seed=1  FINISHED" in result.stdout and "seed=2  FAILED" in result.stdout
    assert all(path.stat().st_size for path in (tmpfs / "sw" / "summary").iterdir()), "no empty summary file"
    client = MlflowClient(tracking_uri=project.store_uri)
    [parent] = [run for run in project.runs() if run.data.tags.get("nnexp_command") == "sweep"]
    assert parent.info.status == "FINISHED"
    assert "seed=1" in parent.data.tags["mlflow.note.content"]
    assert parent.data.metrics["jobs_failed"] == 1
    assert client.get_run(parent.info.run_id).data.tags["best_run_name"] == "seed=1"


def test_sigterm_while_the_checkpoint_disk_is_full_ends_the_run_killed_saying_both(project):
    """It printed "cannot use …/checkpoint.json: No such file or directory": the stop logged a manifest not written."""
    (project.root / "plugins" / "full_checkpoints.py").write_text(
        "import contextlib, errno, os, pathlib\n"
        "import nnexp.job.checkpoint\n"
        "real = nnexp.job.checkpoint.replacing\n"
        "@contextlib.contextmanager\n"
        "def full(path, mode='wb'):\n"
        "    with real(path, mode) as file:\n"
        "        file.write(b'PK' if 'b' in mode else 'x')\n"
        "        pathlib.Path('disk_full').touch()\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "nnexp.job.checkpoint.replacing = full\n"
    )
    process = project.start("trainer.epochs=100000", "checkpoint.every=1", "hydra.run.dir=outputs/full")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (project.root / "disk_full").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    [run] = project.runs()
    folder = Path("outputs", "full", "checkpoints")
    assert line.startswith("error: interrupted (SIGTERM) in epoch "), line
    assert f"the checkpoint could not be written (cannot write in {project.root / folder}: No space left" in line
    assert line.endswith(f"there is none to resume from; MLflow run {run.info.run_id} is marked KILLED"), line
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == line.removeprefix("error: ").rsplit("; MLflow run", 1)[0]
    assert not [path for path in (project.root / "outputs").rglob("*") if atomic.PARTIAL.fullmatch(path.name)]


def locked_error() -> MlflowException:
    """What MLflow's SQLite store raises while another process holds the database: SQLAlchemy's lines and all."""
    driver = sqlite3.OperationalError("database is locked")
    locked = sqlalchemy.exc.OperationalError("SELECT runs.run_uuid\nFROM runs", {}, driver)
    try:
        raise MlflowException(str(locked)) from locked
    except MlflowException as exc:
        return exc


def finished_sweep(tmp_path: Path) -> tuple[Tracker, Sweep]:
    """A sweep whose two jobs finished, about to be summarised, with its folder in ``tmp_path / "sw"``."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")
    directory = tmp_path / "sw"
    directory.mkdir()
    parent = tracker.open_run("sweep seed=1,2", {"nnexp_command": "sweep"}, outbox=directory)
    for seed in (1, 2):
        child = tracker.open_run(f"seed={seed}", {"mlflow.parentRunId": parent.run_id})
        child.log_params({"seed": seed})
        child.log_metrics({"test_accuracy": seed / 4}, step=1)
        child.end("FINISHED")
    return tracker, Sweep(tracker, parent, directory, ["seed"])


def fail_requests(monkeypatch: pytest.MonkeyPatch, client: MlflowClient, *requests: str) -> None:
    for request in requests:
        monkeypatch.setattr(client, request, lambda *args, **kwargs: (_ for _ in ()).throw(locked_error()))


def test_a_store_that_stops_answering_during_a_sweep_s_summary_keeps_it_for_nnexp_sync(tmp_path, monkeypatch):
    """The parent was ended FAILED with SQLAlchemy's dump as its reason though its jobs finished, its outbox in the
    project's folder, and the summary's files were never logged."""
    tracker, sweep = finished_sweep(tmp_path)
    monkeypatch.setattr(tracked_run, "END_PAUSE_SECONDS", 0.0)
    with monkeypatch.context() as store_away:
        fail_requests(store_away, tracker.client, "log_batch", "set_tag", "log_artifacts", "set_terminated")
        with pytest.raises(TrackingStoreError, match=f"kept in {sweep.directory / OUTBOX}; send them with: nnexp sync"):
            sweep.finish()
    outbox = json.loads((sweep.directory / OUTBOX).read_text())
    assert outbox["status"] == "FINISHED" and "failure_reason" not in outbox["tags"]
    assert [row[:2] for row in outbox["metrics"] if row[0] == "jobs_finished"] == [["jobs_finished", 2.0]]
    assert outbox["artifacts"] == [[str(sweep.directory / "summary"), "summary"]]

    assert "status FINISHED" in sync(sweep.directory)
    client = MlflowClient(tracking_uri=tracker.uri)
    parent = client.get_run(sweep.parent.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == 2
    assert {item.path for item in client.list_artifacts(parent.info.run_id, "summary")} >= {"summary/children.csv"}


def test_a_sweep_summary_that_cannot_read_its_jobs_fails_the_parent_in_one_line(tmp_path, monkeypatch):
    tracker, sweep = finished_sweep(tmp_path)
    fail_requests(monkeypatch, tracker.client, "search_runs")
    assert sweep.finish() == "the sweep's summary failed: database is locked"
    parent = MlflowClient(tracking_uri=tracker.uri).get_run(sweep.parent.run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure_reason"] == "the sweep's summary failed: database is locked"


def test_a_temporary_model_the_store_does_not_take_fails_the_run_saying_it_is_kept_nowhere(tmp_path, monkeypatch):
    """A run folder with no room for the MLflow model logs it from a temporary copy; when the store took it neither,
    the copy was removed and nnexp sync closed the run FINISHED with no model."""
    from nnexp import LOSSES, MODELS
    from nnexp.network_files import describe
    from nnexp.serving import log_saved_model, save_model

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")
    folder = tmp_path / "run"
    loss = LOSSES.build({"name": "cross_entropy"})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [4]}).build(2, 2, loss, np.random.default_rng(0), np.float32)
    temporary = tmp_path / "nnexp-model-x" / "model"
    save_model(temporary, network, describe(network, loss, ["left", "right"]), np.zeros((3, 2)))
    run = tracker.open_run("full", {"output_dir": str(folder)}, outbox=folder)
    run.log_metrics({"test_accuracy": 0.5}, step=2)
    monkeypatch.setattr(tracked_run, "END_PAUSE_SECONDS", 0.0)
    with monkeypatch.context() as store_away:
        fail_requests(store_away, tracker.client, "log_batch", "set_terminated", "create_logged_model")
        assert log_saved_model(run, temporary, 2, temporary=True) is None
        with pytest.raises(TrackingStoreError, match="model was not logged and is kept nowhere") as raised:
            run.end("FINISHED")
    assert "status FAILED are kept in" in str(raised.value) and str(temporary) not in str(raised.value)
    outbox = json.loads((folder / OUTBOX).read_text())
    assert outbox["status"] == "FAILED" and "kept nowhere" in outbox["tags"]["failure_reason"]

    assert sync(folder).endswith("status FAILED")
    closed = MlflowClient(tracking_uri=tracker.uri).get_run(run.run_id)
    assert closed.info.status == "FAILED" and "kept nowhere" in closed.data.tags["failure_reason"]
