"""How commands end when their surroundings go away: a closed pipe, a hang-up, a read-only run folder, a run deleted
from its store while it trains."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from mlflow import MlflowClient
from test_signals import session_members

CLOSED_PIPE_STATUS = 141  # 128 + SIGPIPE, as a shell reports a reader gone


def run_into(project, stdout: int | IO[str], *arguments: str) -> subprocess.CompletedProcess[str]:
    """The CLI with its stdout ``stdout``, its stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "nnexp", *arguments],
        cwd=project.root,
        env=project.env(),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def closed_pipe_run(project, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The CLI with its stdout a pipe whose reader is gone, as ``| head`` leaves it once it has read its lines."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return run_into(project, writer, *arguments)
    finally:
        os.close(writer)


def assert_quiet_end(result: subprocess.CompletedProcess[str], status: int = CLOSED_PIPE_STATUS) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_a_closed_pipe_ends_a_command_quietly(project):
    assert_quiet_end(closed_pipe_run(project, "--version"))


def test_a_closed_pipe_ends_a_run_and_the_tables_quietly(project):
    """A run prints its progress on stderr: stdout's closed pipe does not stop it."""
    assert_quiet_end(closed_pipe_run(project, "dataset=quadrants", "trainer.epochs=1"), 0)
    assert [run.info.status for run in project.runs()] == ["FINISHED"]
    for arguments in (["runs"], ["compare", "--all"]):
        assert_quiet_end(closed_pipe_run(project, *arguments))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a file whose writes find a full disk")
@pytest.mark.parametrize("arguments", [["--version"], ["check", "--only", "relu"]])
def test_output_to_a_full_disk_is_one_line(project, arguments):
    """A 10-13 line traceback ending ``OSError: [Errno 28] No space left on device`` before."""
    with open("/dev/full", "w") as full:
        result = run_into(project, full, *arguments)
    assert result.returncode == 1
    line = "error: cannot write the output: No space left on device (the disk is full; free some space)\n"
    assert result.stderr == line


def closed_stream_run(project, closed: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The CLI started with its descriptor ``closed`` (``1`` or ``2``) closed, as ``nnexp ... 2>&-`` starts it, and
    the other captured."""
    return subprocess.run(
        ["sh", "-c", f'exec "$0" -m nnexp "$@" {closed}>&-', sys.executable, *arguments],
        cwd=project.root,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_run_and_a_sweep_with_stderr_closed_finish(project):
    """Python leaves ``sys.stderr`` None: the run FAILED (``'NoneType' object has no attribute 'isatty'``), its
    folder deleted, and a sweep's every job; the plotting process, given the descriptor, ended with status 1."""
    result = closed_stream_run(project, "2", "dataset=quadrants", "trainer.epochs=1")
    assert result.returncode == 0 and "test_accuracy=" in result.stdout and "warning" not in result.stdout
    (folder,) = project.job_dirs()
    assert (folder / "model.npz").is_file() and any((folder / "plots").iterdir())
    assert closed_stream_run(project, "2", "-m", "dataset=quadrants", "trainer.epochs=1", "seed=1,2").returncode == 0
    statuses = [run.info.status for run in project.runs()]
    assert statuses == ["FINISHED"] * 4, statuses  # the run, the sweep's parent run and its two jobs


def test_a_run_with_stdout_closed_finishes_and_a_command_says_its_output_is_lost(project):
    """A run ended in a traceback from ``sys.stdout.flush()``, its status 1; ``--version`` and ``runs`` too."""
    result = closed_stream_run(project, "1", "dataset=quadrants", "trainer.epochs=1")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert [run.info.status for run in project.runs()] == ["FINISHED"]
    for arguments in (["--version"], ["runs"]):
        result = closed_stream_run(project, "1", *arguments)
        assert (result.returncode, result.stderr) == (1, "error: cannot write the output: standard output is closed\n")


#: A server as uvicorn is to SIGHUP: it reloads and serves on; SIGTERM ends it.
RELOADING_SERVER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGHUP, lambda *_: None)\n"
    "print('serving', flush=True)\n"
    "time.sleep(300)\n"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_hang_up_ends_a_group_of_children_in_one_exit_status_without_a_traceback():
    """``kill -HUP`` of ``nnexp ui``: a traceback from the group's leader, which got its own SIGHUP back while it
    stopped the group, and uvicorn, reloading on SIGHUP, left serving the port."""
    leader = subprocess.Popen(
        [sys.executable, "-m", "nnexp.children", sys.executable, "-c", RELOADING_SERVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert leader.stdout.readline() == "serving\n"
        leader.send_signal(signal.SIGHUP)
        assert leader.wait(timeout=60) == 128 + signal.SIGHUP
        assert "Traceback" not in leader.stderr.read()
        assert session_members(leader.pid) == []
    finally:
        for pid in session_members(leader.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_request_refused_because_the_run_is_deleted_raises_at_once(tmp_path):
    """It read as a store that does not answer: retried every 30 s until the run's end, then kept in an outbox."""
    from mlflow import MlflowClient

    from nnexp.tracking.tracked_run import RunDeletedError, TrackedRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("nnexp")).info.run_id
    run = TrackedRun(client, run_id, tmp_path)
    client.delete_run(run_id)
    run.log_metrics({"train_loss": 0.5}, step=1)
    with pytest.raises(RunDeletedError) as raised:
        run.flush()
    assert str(raised.value) == (
        f"run {run_id} was deleted from {uri} while it trained; restore it with: mlflow runs restore --run-id {run_id}"
    )
    assert run.deleted and not (tmp_path / "mlflow_outbox.json").exists()


def test_a_run_deleted_while_it_trains_stops_with_its_checkpoint(project):
    process = project.start("dataset=quadrants", "trainer.epochs=100000000", "hydra.run.dir=outputs/deleted")
    try:
        for line in process.stderr:  # the first progress line: the run is open and training
            if "epoch" in line:
                break
        [run] = project.runs()
        MlflowClient(tracking_uri=project.store_uri).delete_run(run.info.run_id)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    run_id, folder = run.info.run_id, project.root / "outputs" / "deleted" / "checkpoints"
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: run {run_id} was deleted from {project.store_uri} while it trained in epoch "), line
    assert line.endswith(
        f"; checkpoint in {folder}; restore it with: mlflow runs restore --run-id {run_id}, then resume with: "
        f"python -m nnexp resume={run_id}"
    ), line
    assert "Traceback" not in stderr and "does not answer" not in stderr, stderr
    assert process.returncode == 1
    assert (folder / "checkpoint.json").is_file()
    assert not (project.root / "outputs" / "deleted" / "mlflow_outbox.json").exists()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only: a read-only bind mount as root (whom permissions do not stop), else its mode."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_resume_into_a_read_only_run_folder_is_one_line_naming_it(tmp_path):
    """A warning from a Hydra callback, then advice to run from a writable folder or set hydra.run.dir, which a
    resume cannot."""
    from test_checkpoint_files import saved, store_with_run

    from nnexp.errors import ConfigError
    from nnexp.job.resume import hydra_arguments

    folder = tmp_path / "run"
    uri, run_id = store_with_run(tmp_path, folder)
    directory = saved(folder, run_id=run_id, config=f"tracking:\n  uri: {uri}\ntrainer:\n  epochs: 3\n")
    with read_only(folder), pytest.raises(ConfigError) as raised:
        hydra_arguments([f"resume={run_id}", f"tracking.uri={uri}"], tmp_path)
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert str(raised.value) == (
        f"run folder {folder.resolve()} cannot be written ({reason}); resume writes the run's checkpoints, log and "
        "model there: make it writable, then resume again"
    )
    assert directory.is_dir() and MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "KILLED"
