"""Every sub-command stops in one line on Ctrl-C or SIGTERM, errors are one line, and children end with nnexp."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from nnexp import __main__ as cli
from nnexp.errors import RECURRING, STOPPED, Interrupted, one_line, raise_on_stop_signals, report


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
@pytest.mark.parametrize(
    ("stop", "status", "line"),
    [
        (KeyboardInterrupt(), 130, "error: interrupted (SIGINT)"),
        (Interrupted("terminated (SIGTERM)", 143), 143, "error: terminated (SIGTERM)"),
    ],
)
def test_a_stop_anywhere_in_a_sub_command_is_one_line(monkeypatch, capsys, command, stop, status, line):
    """A Ctrl-C landing in MLflow or SQLAlchemy under ``nnexp runs``, ``sync`` or ``compare`` printed a
    KeyboardInterrupt traceback; a SIGTERM to ``nnexp ui`` before it served, a traceback and exit status 1."""

    def main(argv: list[str]) -> int:
        raise stop

    monkeypatch.setattr(cli, "raise_on_stop_signals", lambda: None)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: types.SimpleNamespace(main=main))
    monkeypatch.setattr(sys, "argv", ["nnexp", command])
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == status
    assert capsys.readouterr().err == line + "\n"


def test_sub_commands_fetch_artifacts_without_progress_bars(monkeypatch):
    """``resume=`` from MLflow's copy of a deleted checkpoint drew three tqdm bars on stderr."""
    seen = {}

    def main(argv: list[str]) -> int:
        seen.update(os.environ)
        return 0

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.setattr(cli, "raise_on_stop_signals", lambda: None)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: types.SimpleNamespace(main=main))
    monkeypatch.setattr(sys, "argv", ["nnexp", "runs"])
    with pytest.raises(SystemExit):
        cli.main()
    assert seen["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_an_error_line_shows_control_characters_escaped():
    assert one_line("run name 'a\nb\tc\x1b[31m'") == "run name 'a\\nb\\tc\\x1b[31m'"
    assert one_line("plain, é and ✓") == "plain, é and ✓"


def test_a_newline_in_an_override_is_one_line(project):
    """The error echoed the raw newline, over two lines."""
    result = project.run("tracking.run_name=a\nb")
    assert result.returncode == 1
    assert result.stderr == (
        "error: cannot parse override 'tracking.run_name=a\\nb': '\\n' is allowed only inside a quoted value, "
        "as in tracking.run_name='...'\n"
    )
    assert not (project.root / "outputs").exists()


def test_a_sigint_to_nnexp_runs_waiting_on_its_store_is_one_line(project):
    """The signal lands in the store's client; a tracking server that accepts and never answers holds it there."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        accepted = threading.Event()

        def hold() -> None:
            connection, _ = silent.accept()
            accepted.set()
            time.sleep(60)
            connection.close()

        threading.Thread(target=hold, daemon=True).start()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        process = project.start("runs", "--uri", uri)
        assert accepted.wait(timeout=120), process.communicate()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (130, "error: interrupted (SIGINT)\n")


def stat(pid: int | str) -> list[str] | None:
    """The fields of Linux's /proc/PID/stat after the name (state, ppid, pgrp, session, ...); ``None`` for a
    process that has ended, a zombie included: a container's init may never reap it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields


def session_members(session: int) -> list[int]:
    """The live processes of the session ``session``."""
    found = ((entry.name, stat(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [int(pid) for pid, fields in found if fields is not None and int(fields[3]) == session]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)])
def test_a_signal_to_nnexp_ui_alone_stops_its_server_and_workers(project, signum, status):
    """SIGINT: nnexp exited 130 and left the uvicorn server and its 4 workers running, reparented; SIGKILL left
    ``mlflow ui`` too."""
    assert project.run("trainer.epochs=1", "dataset.n_samples=50").returncode == 0
    ui, _ = project.start_ui()
    try:
        ui.stdout.readline()
        deadline = time.monotonic() + 120
        while len(session_members(ui.pid)) < 3:  # nnexp, mlflow ui, uvicorn and its workers
            assert ui.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        ui.send_signal(signum)  # to nnexp's pid only
        assert ui.wait(timeout=60) == status
        deadline = time.monotonic() + 30
        while session_members(ui.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert session_members(ui.pid) == []
    finally:
        for pid in session_members(ui.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_started_with_die_with_parent_ends_when_its_parent_is_killed():
    """``kill -9`` of ``nnexp reproduce`` left its training child running, to finish under a KILLED parent."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from nnexp.children import die_with_parent\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
            "preexec_fn=die_with_parent())\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while stat(child) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stat(child) is None


def test_an_error_line_to_a_closed_pipe_is_dropped_not_a_traceback(monkeypatch):
    """A training child whose parent died printed a BrokenPipeError traceback and exited 1, not 143."""

    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stderr", Closed())
    report("terminated (SIGTERM)")


def test_a_second_stop_raised_where_python_ignores_exceptions_is_sent_again(tmp_path):
    """It landed in a weak reference's callback (which imports run), was printed as ignored, and the run went on
    to end FINISHED."""
    import weakref

    from nnexp.job.callbacks import StopRequests

    class Trainer:
        def request_stop(self, reason: str, exit_code: int) -> None:
            self.requested = (reason, exit_code)

    class Held:
        pass

    def callback(_: object) -> None:
        signal.raise_signal(signal.SIGTERM)
        for _ in range(1000):  # the handler runs here, inside the callback
            pass

    with StopRequests(Trainer(), tmp_path) as stops:
        signal.raise_signal(signal.SIGTERM)
        assert stops.request == ("interrupted (SIGTERM)", 128 + signal.SIGTERM)
        held = Held()
        reference = weakref.ref(held, callback)
        with pytest.raises(Interrupted, match=r"^interrupted again \(SIGTERM\)"):
            del held
            for _ in range(100):
                time.sleep(0.01)
        assert reference() is None


STOPS = sorted(signal.Signals(signum).name for signum in STOPPED)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_every_signal_that_would_end_a_process_silently_is_a_stop():
    """SIGUSR1, SIGALRM, SIGXCPU (``ulimit -t``), SIGVTALRM and SIGPROF ended a run at once, no checkpoint, RUNNING;
    SIGUSR2 stays SLURM's warning (:mod:`hydra_plugins.nnexp_slurm`)."""
    assert STOPS == ["SIGALRM", "SIGHUP", "SIGPROF", "SIGTERM", "SIGUSR1", "SIGVTALRM", "SIGXCPU"]
    assert signal.SIGUSR2 not in STOPPED


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("name", STOPS)
def test_a_stop_signal_outside_a_run_is_one_interruption(name):
    signum = signal.Signals[name]
    previous = {each: signal.getsignal(each) for each in (*STOPPED, signal.SIGINT)}
    try:
        raise_on_stop_signals()
        with pytest.raises(Interrupted) as stopped:
            signal.raise_signal(signum)
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)
    assert (str(stopped.value), stopped.value.exit_code) == (STOPPED[signum], 128 + signum)
    assert f"({name})" in str(stopped.value)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("name", STOPS)
def test_a_stop_signal_during_a_run_asks_for_a_stop_and_only_a_persons_second_one_stops_at_once(tmp_path, name):
    """The CPU limit sends SIGXCPU every CPU second past it, a timer fires again: that is no one insisting."""
    from nnexp.job.callbacks import StopRequests

    class Trainer:
        def request_stop(self, reason: str, exit_code: int) -> None:
            self.requested = (reason, exit_code)

    signum = signal.Signals[name]
    trainer = Trainer()
    with StopRequests(trainer, tmp_path):
        signal.raise_signal(signum)
        assert trainer.requested == (f"interrupted ({name})", 128 + signum)
        if signum in RECURRING:
            signal.raise_signal(signum)
        else:
            with pytest.raises(Interrupted, match=rf"^interrupted again \({name}\)"):
                signal.raise_signal(signum)
