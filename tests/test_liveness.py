"""No RUNNING ghosts: runs record where their process lives, and a run whose process is gone is marked KILLED."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nnexp.tracking import liveness
from nnexp.tracking.liveness import HEARTBEAT, HOST, PID, PID_SPACE, PID_STARTED, REASON, reap
from nnexp.tracking.store import RunCreationError
from nnexp.tracking.tables import run_list
from nnexp.tracking.tracked_run import Tracker


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    """One real SQLite store for the module: creating its tables takes a second or two."""
    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}", "nnexp")


def ago(minutes: float) -> str:
    """A heartbeat ``minutes`` ago."""
    moment = datetime.now(timezone.utc) - timedelta(minutes=minutes)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def crafted(tracker: Tracker, status: str = "RUNNING", **tags: str) -> str:
    """A run whose liveness tags are this process's, except ``tags`` (a None value leaves a tag out)."""
    values = {**liveness.process_tags(), **tags}
    created = tracker.client.create_run(
        tracker.experiment_id, run_name="crafted", tags={k: v for k, v in values.items() if v is not None}
    )
    if status != "RUNNING":
        tracker.client.set_terminated(created.info.run_id, status)
    return created.info.run_id


def ended_pid() -> int:
    """The pid of a process that has ended and been waited for."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def judged(tracker: Tracker, run_id: str) -> tuple[object, list[liveness.Ghost]]:
    [run], ghosts = reap(tracker.client, [tracker.client.get_run(run_id)])
    return run, ghosts


def assert_killed(run, ghosts) -> None:
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == REASON
    assert run.info.end_time is not None and run.info.end_time >= run.info.start_time
    assert [ghost.run.info.run_id for ghost in ghosts] == [run.info.run_id]


def test_a_run_of_this_process_is_alive_and_its_heartbeat_stops_when_it_ends(tracker):
    opened = tracker.open_run("alive", {})
    tags = tracker.client.get_run(opened.run_id).data.tags
    assert (tags[HOST], tags[PID]) == (socket.gethostname(), str(os.getpid()))
    assert tags[PID_STARTED] == liveness.process_started(os.getpid()) != ""
    thread = opened._heartbeat.thread
    assert thread.is_alive() and thread.daemon, "a daemon thread never holds the process at exit"
    run, ghosts = judged(tracker, opened.run_id)
    assert (run.info.status, ghosts) == ("RUNNING", [])
    opened.end("FINISHED")
    assert not thread.is_alive()
    assert tracker.client.get_run(opened.run_id).info.status == "FINISHED"


def test_a_run_whose_process_ended_is_marked_killed_at_its_last_heartbeat(tracker, caplog):
    pid = ended_pid()
    heartbeat = ago(0.5)
    run_id = crafted(tracker, **{PID: str(pid), HEARTBEAT: heartbeat})
    with caplog.at_level(logging.WARNING, "nnexp.tracking.liveness"):
        run, ghosts = judged(tracker, run_id)
    assert_killed(run, ghosts)
    last = datetime.fromisoformat(heartbeat.replace("Z", "+00:00")).timestamp()
    assert run.info.end_time == max(run.info.start_time, int(last * 1000))
    expected = f"run crafted ({run_id}) marked KILLED: process {pid} on {socket.gethostname()} has ended"
    assert caplog.messages == [expected]
    assert judged(tracker, run_id)[1] == [], "a second look finds nothing more to mark"


def test_a_reused_pid_is_told_apart_by_its_start_time(tracker):
    run_id = crafted(tracker, **{PID: str(os.getpid()), PID_STARTED: "1"})
    run, ghosts = judged(tracker, run_id)
    assert_killed(run, ghosts)
    assert ghosts[0].why.endswith("has ended (its pid now belongs to another process)")


def test_a_zombie_process_has_ended(tracker):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while liveness.process_started(child.pid) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        run, ghosts = judged(tracker, crafted(tracker, **{PID: str(child.pid), PID_STARTED: "1"}))
        assert_killed(run, ghosts)
    finally:
        child.wait()


def test_a_paused_process_is_alive(tracker):
    """Ctrl-Z or SIGSTOP: the process will go on, and so will its run."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        tags = {PID: str(child.pid), PID_STARTED: liveness.process_started(child.pid), HEARTBEAT: ago(60)}
        run, ghosts = judged(tracker, crafted(tracker, **tags))
        assert (run.info.status, ghosts) == ("RUNNING", [])
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("where", "minutes", "killed"),
    [
        ({HOST: "elsewhere"}, 1, False),
        ({HOST: "elsewhere"}, 9, False),
        ({HOST: "elsewhere"}, 11, True),
        ({PID_SPACE: "another container's pids"}, 1, False),
        ({PID_SPACE: "another container's pids"}, 11, True),
    ],
    ids=["other-host-fresh", "other-host-9-min", "other-host-stale", "other-pid-namespace-fresh", "stale"],
)
def test_elsewhere_a_run_is_gone_after_ten_minutes_without_heartbeat(tracker, where, minutes, killed):
    """Its pid means nothing here, even one that has ended on this machine."""
    run_id = crafted(tracker, **{PID: str(ended_pid()), HEARTBEAT: ago(minutes), **where})
    run, ghosts = judged(tracker, run_id)
    if killed:
        assert_killed(run, ghosts)
        assert ghosts[0].why.endswith(f"sent no heartbeat for {minutes} minutes")
    else:
        assert (run.info.status, ghosts) == ("RUNNING", [])


@pytest.mark.parametrize(
    "tags",
    [
        {HOST: None, PID: None, PID_STARTED: None, PID_SPACE: None, HEARTBEAT: None},
        {PID: None},
        {HOST: None},
        {PID: "0"},
        {PID: "-1"},
        {PID: "abc"},
        {PID: str(2**63)},
        {HOST: "elsewhere", HEARTBEAT: None},
        {HOST: "elsewhere", HEARTBEAT: "yesterday"},
    ],
    ids=["none", "no-pid", "no-host", "pid-0", "pid-negative", "pid-text", "pid-huge", "no-heartbeat", "bad-beat"],
)
def test_runs_that_do_not_say_where_they_live_are_left_alone(tracker, tags):
    """Older nnexp, other tools, or tags edited by hand: nothing says the process is gone."""
    run, ghosts = judged(tracker, crafted(tracker, **{HEARTBEAT: ago(60), **tags}))
    assert (run.info.status, ghosts) == ("RUNNING", [])
    assert "failure_reason" not in run.data.tags


def test_a_store_that_refuses_the_change_leaves_the_run_as_it_was(tracker, monkeypatch, caplog):
    run_id = crafted(tracker, **{PID: str(ended_pid())})

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("403 PERMISSION_DENIED: read-only user\nmore detail")

    monkeypatch.setattr(tracker.client, "set_tag", refuse)
    with caplog.at_level(logging.WARNING, "nnexp.tracking.liveness"):
        run, ghosts = judged(tracker, run_id)
    assert (run.info.status, ghosts) == ("RUNNING", [])
    assert caplog.messages == [
        f"run crafted ({run_id}): its process has ended, but it could not be marked KILLED: "
        "403 PERMISSION_DENIED: read-only user"
    ]


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_ended_runs_keep_their_status(tracker, status):
    run, ghosts = judged(tracker, crafted(tracker, status, **{PID: str(ended_pid())}))
    assert (run.info.status, ghosts) == (status, [])


def test_the_heartbeat_thread_and_each_flush_refresh_the_heartbeat(tracker):
    opened = tracker.open_run("beating", {})
    opened._heartbeat.stop()
    client = tracker.client
    old = ago(30)
    client.set_tag(opened.run_id, HEARTBEAT, old)
    opened._heartbeat = liveness.Heartbeat(client, opened.run_id, every=0.01)
    deadline = time.monotonic() + 30
    while client.get_run(opened.run_id).data.tags[HEARTBEAT] == old and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.get_run(opened.run_id).data.tags[HEARTBEAT] > old
    opened._heartbeat.stop()
    assert not opened._heartbeat.thread.is_alive()

    client.set_tag(opened.run_id, HEARTBEAT, old)
    opened.log_metrics({"train_loss": 0.5}, step=1)
    assert opened.flush()
    assert client.get_run(opened.run_id).data.tags[HEARTBEAT] > old
    opened.end("FINISHED")


def test_resume_moves_the_run_to_this_process_and_marks_a_ghost_first(tracker, caplog):
    pid = ended_pid()
    run_id = crafted(tracker, **{PID: str(pid)})
    logger = "nnexp.tracking.liveness"
    with caplog.at_level(logging.WARNING, logger), tracker.start_run("x", {}, resume=run_id) as reopened:
        run = tracker.client.get_run(run_id)
        assert run.info.status == "RUNNING"
        assert run.data.tags[PID] == str(os.getpid())
        assert run.data.tags[PID_STARTED] == liveness.process_started(os.getpid())
        assert run.data.tags["failure_reason"] == "" and run.data.tags["resumed"] == "true"
        thread = reopened._heartbeat.thread
        assert thread.is_alive()
    host = socket.gethostname()
    assert caplog.messages == [f"run crafted ({run_id}) marked KILLED: process {pid} on {host} has ended"]
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    assert not thread.is_alive()


def test_resume_refuses_a_run_whose_process_is_alive(tracker):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = liveness.process_started(child.pid)
        run_id = crafted(tracker, **{PID: str(child.pid), PID_STARTED: started})
        with pytest.raises(RunCreationError) as refused, tracker.start_run("x", {}, resume=run_id):
            pass
        assert str(refused.value) == (
            f"run {run_id} is still RUNNING in process {child.pid} on {socket.gethostname()}; "
            "stop that process first, or wait until it ends"
        )
        assert tracker.client.get_run(run_id).data.tags[PID] == str(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_resumed_run_logs_what_the_store_lacks_and_nothing_twice(tracker):
    """The store got epochs 1-2 and 4-5 (flushed past a checkpoint of epoch 3 taken every 3 epochs)."""
    run_id = crafted(tracker, status="KILLED")
    client = tracker.client
    from mlflow.entities import Metric

    stored = [Metric("train_loss", 10.0 + step, 0, step) for step in (1, 2, 4, 5)]
    client.log_batch(run_id, metrics=[*stored, Metric("test_loss", 9.0, 0, 6)])
    with tracker.start_run("x", {}, resume=run_id) as reopened:
        # The checkpoint's history has training's own names; the store, MLflow's (system/learning_rate).
        reopened.complete_history({"train_loss": [11.0, 12.0, 13.0], "learning_rate": [0.1, 0.1, 0.1]})
        for step in (4, 5, 6):  # the replayed epochs, then a new one
            reopened.log_metrics({"train_loss": 20.0 + step, "system/learning_rate": 0.1}, step)
        reopened.log_metrics({"test_loss": 1.0}, 6)

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    assert history("train_loss") == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 14.0), (5, 15.0), (6, 26.0)]
    assert history("system/learning_rate") == [(step, 0.1) for step in range(1, 7)]
    assert history("test_loss") == [(6, 9.0)]


def test_training_diagnostics_are_named_for_the_system_metrics_tab_and_a_constant_rate_is_left_out():
    """MLflow's UI charts ``system/`` metrics in a tab of their own, so the Model metrics tab leads with the model."""
    from nnexp.tracking.store import mlflow_metrics

    logs = {"train_loss": 0.5, "val_accuracy": 0.9, "epoch_seconds": 0.01, "learning_rate": 0.1}
    assert mlflow_metrics(logs) == {
        "train_loss": 0.5,
        "val_accuracy": 0.9,
        "system/epoch_seconds": 0.01,
        "system/learning_rate": 0.1,
    }
    assert mlflow_metrics(logs, rate_changes=False) == {
        "train_loss": 0.5,
        "val_accuracy": 0.9,
        "system/epoch_seconds": 0.01,
    }


def test_a_resumed_run_with_a_constant_rate_logs_no_rate(tracker):
    run_id = crafted(tracker, status="KILLED")
    with tracker.start_run("x", {}, resume=run_id) as reopened:
        reopened.complete_history({"train_loss": [1.0, 2.0], "learning_rate": [0.1, 0.1]}, rate_changes=False)
    metrics = tracker.client.get_run(run_id).data.metrics
    assert "train_loss" in metrics and not any("learning_rate" in key for key in metrics)


def test_a_sweep_summary_counts_a_ghost_child_as_killed(tracker, tmp_path, capsys):
    from nnexp.job.sweep import Sweep

    parent = tracker.open_run("sweep", {"nnexp_command": "sweep"})
    child_tags = {"mlflow.parentRunId": parent.run_id}
    finished = crafted(tracker, "FINISHED", **child_tags)
    tracker.client.log_metric(finished, "test_accuracy", 0.9, step=1)
    ghost = crafted(tracker, **child_tags, **{PID: str(ended_pid())})
    assert Sweep(tracker, parent, tmp_path, []).summarise() == (1, 1)
    parent.end("FINISHED")
    assert tracker.client.get_run(ghost).info.status == "KILLED"
    assert "KILLED" in capsys.readouterr().out


def test_run_list_shows_where_running_runs_live_and_marks_ghosts(tracker):
    live = tracker.open_run("listed", {"output_dir": str(Path.cwd() / "outputs" / "x")})
    ghost = crafted(tracker, **{PID: str(ended_pid())})
    text = run_list(tracker.uri, "nnexp", 0)
    live.end("FAILED", "stopped by the test")
    lines = {line.split()[-1]: line for line in text.splitlines()[2:]}
    assert lines[live.run_id].startswith("RUNNING ")
    assert {f"{socket.gethostname()}:{os.getpid()}", "outputs/x", "listed"} <= set(lines[live.run_id].split())
    assert lines[ghost].startswith("KILLED ")
    assert text.splitlines()[0].startswith("experiment nnexp: ") and text.splitlines()[0].endswith("newest first")


@pytest.mark.parametrize(
    ("seconds", "shown"), [(-0.2, "0 s"), (42.4, "42 s"), (600, "10 min"), (5400, "1.5 h"), (2 * 86400, "2.0 d")]
)
def test_spans_read_as_people_say_them(seconds, shown):
    from nnexp.tracking.tables import span

    assert span(seconds) == shown


def test_nnexp_runs_imports_no_sklearn_or_matplotlib(project):
    """Listing runs needs MLflow only; scikit-learn and matplotlib would cost seconds."""
    Tracker(project.store_uri, "nnexp").open_run("listed", {}).end("FINISHED")
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['nnexp', 'runs']\n"
        "try:\n    runpy.run_module('nnexp', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n    pass\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'sklearn', 'matplotlib'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=project.root, env=project.env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "experiment nnexp: 1 run, newest first" and lines[-2].startswith("FINISHED ")
    assert lines[-1] == "[]"


def test_nnexp_runs_without_a_store_or_with_a_bad_limit_says_so_in_one_line(project):
    missing = project.run("runs")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.strip() == (
        f"error: no MLflow store at {project.root / 'outputs' / 'mlflow.db'}; "
        "run an experiment first, or name the store with --uri"
    )
    assert not (project.root / "outputs").exists()
    assert project.run("runs", "--limit", "0").stderr.strip() == "error: --limit must be >= 1, got 0"


def test_a_store_uri_naming_a_folder_says_so_for_every_command_that_reads_a_store(tmp_path):
    """runs, compare, sync, predict run= and resume= share this check ("no MLflow store" before)."""
    from nnexp.errors import ConfigError
    from nnexp.tracking.store import existing_store

    uri = f"sqlite:///{tmp_path}"
    with pytest.raises(ConfigError) as raised:
        existing_store(uri, "run an experiment first")
    assert str(raised.value) == (
        f"tracking store {uri}: {tmp_path} is a folder, expected an SQLite database file such as {tmp_path}/mlflow.db"
    )
    assert list(tmp_path.iterdir()) == []


def test_nnexp_runs_with_a_folder_for_its_store_names_the_folder(project):
    folder = project.root / "store"
    folder.mkdir()
    result = project.run("runs", "--uri", f"sqlite:///{folder}")
    assert (result.returncode, result.stdout, result.stderr.strip()) == (
        1,
        "",
        f"error: tracking store sqlite:///{folder}: {folder} is a folder, expected an SQLite database file such as "
        f"{folder}/mlflow.db",
    )


# The real CLI, killed with SIGKILL: nothing in the process can close its run.
# Epochs long enough to be caught between a checkpoint and a send of metrics: the compiled engine is too quick.
SLOW = ("trainer.batch_size=2", "trainer.engine=numpy", "seed=3")
PER_EPOCH = ("train_loss", "train_accuracy", "system/epoch_seconds")


def stored_steps(project, run_id: str) -> list[int] | None:
    """The steps of ``train_loss`` in the store, or None while a write holds the database (a stopped process may)."""
    database = sqlite3.connect(f"file:{project.root / 'outputs' / 'mlflow.db'}?mode=ro", uri=True, timeout=0.1)
    try:
        rows = database.execute(
            "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'train_loss'", (run_id,)
        ).fetchall()
    except sqlite3.OperationalError:
        return None
    finally:
        database.close()
    return sorted(step for (step,) in rows)


def kill_when(project, overrides, ready) -> tuple[str, dict, list[int]]:
    """Start the CLI and SIGKILL it once ``ready(checkpoint epoch, epochs in the store)``; returns the run id, the
    checkpoint manifest and the store's ``train_loss`` steps. Each look is taken with the process stopped
    (SIGSTOP), so that what it saw is what the kill leaves."""
    process = project.start(*overrides)
    deadline = time.monotonic() + 120
    try:
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            found = list((project.root / "outputs").glob("*/*/checkpoints/checkpoint.json"))
            if found:  # the run and its store exist once a checkpoint does
                os.kill(process.pid, signal.SIGSTOP)
                manifest = json.loads(found[0].read_text())
                steps = stored_steps(project, manifest["run_id"])
                if steps is not None and ready(manifest["progress"]["epoch"], len(steps)):
                    break
                os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return manifest["run_id"], manifest, steps


def test_nnexp_sync_of_a_killed_runs_folder_without_an_outbox_marks_the_run_killed(project):
    """Sync looked at the folder of a run killed with SIGKILL, said it had no outbox, and left the run RUNNING."""
    run_id, manifest, _ = kill_when(project, ("trainer.epochs=100000", "checkpoint.every=1", *SLOW), lambda *_: True)
    synced = project.run("sync", manifest["output_dir"])
    [run] = project.runs()
    assert synced.returncode == 1
    assert synced.stderr.splitlines() == [
        f"run {run.info.run_name} ({run_id}) marked KILLED: process {run.data.tags[PID]} on {socket.gethostname()} "
        "has ended",
        f"error: {Path(manifest['output_dir']) / 'mlflow_outbox.json'}: no outbox here; nothing to send",
    ]
    assert (run.info.status, run.data.tags["failure_reason"]) == ("KILLED", REASON)


def test_kill_9_then_nnexp_runs_marks_the_run_killed_with_the_reason(project):
    process = project.start("trainer.epochs=100000", "checkpoint.every=1", *SLOW)
    try:
        deadline = time.monotonic() + 120
        while not list((project.root / "outputs").glob("*/*/checkpoints/checkpoint.json")):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        listed = project.run("runs")
        assert (listed.returncode, listed.stderr) == (0, "")
        assert f" {socket.gethostname()}:{process.pid} " in listed.stdout.splitlines()[-1]
        assert listed.stdout.splitlines()[-1].startswith("RUNNING ")
        [run] = project.runs()
        twice = project.run(f"resume={run.info.run_id}")
        assert (twice.returncode, twice.stderr.strip()) == (
            1,
            f"error: run {run.info.run_id} is still RUNNING in process {process.pid} on {socket.gethostname()}; "
            "stop that process first, or wait until it ends",
        )
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    [run] = project.runs()
    assert run.info.status == "RUNNING", "nothing in a process killed with SIGKILL can close its run"
    # What a kill while model.npz was written leaves; the checkpoints' own are removed at the next write.
    partial = Path(run.data.tags["output_dir"]) / ".model.c1a3209a.partial.npz"
    partial.write_bytes(b"half")
    listed = project.run("runs")
    assert listed.returncode == 0
    assert listed.stderr.strip() == (
        f"run {run.info.run_name} ({run.info.run_id}) marked KILLED: process {process.pid} on "
        f"{socket.gethostname()} has ended; removed the partial file it was writing: {partial}"
    )
    assert not partial.exists()
    assert listed.stdout.splitlines()[-1].startswith("KILLED ")
    [run] = project.runs()
    assert (run.info.status, run.data.tags["failure_reason"]) == ("KILLED", REASON)


def test_kill_9_then_compare_shows_no_running_run(project):
    kill_when(project, ("trainer.epochs=100000", "checkpoint.every=1", *SLOW), lambda epoch, stored: epoch >= 2)
    compared = project.run("compare")
    assert compared.returncode == 0, compared.stderr
    assert "marked KILLED: process" in compared.stderr
    assert "RUNNING" not in compared.stdout
    assert REASON in compared.stdout.splitlines()[-1] and " KILLED " in compared.stdout.splitlines()[-1]


@pytest.mark.parametrize(
    ("epochs", "every", "ready"),
    [
        # Every epoch checkpointed, metrics sent every 2 s: the store is behind the checkpoint.
        (40, 1, lambda epoch, stored: epoch >= 3 and stored < epoch),
        # Every 10 epochs: metrics sent after the checkpoint reach the store; the resumed run replays those epochs.
        # Enough epochs for several sends, even on a busy machine: one that lands on a checkpoint's epoch leaves the
        # store level with it.
        (150, 10, lambda epoch, stored: epoch >= 10 and stored > epoch),
    ],
    ids=["store-behind-checkpoint", "store-ahead-of-checkpoint"],
)
def test_kill_9_then_resume_logs_each_epoch_exactly_once(project, epochs, every, ready):
    overrides = (f"trainer.epochs={epochs}", f"checkpoint.every={every}", *SLOW)
    run_id, manifest, stored = kill_when(project, overrides, ready)
    checkpointed = manifest["progress"]["epoch"]
    assert stored == list(range(1, len(stored) + 1))
    assert (len(stored) < checkpointed) if every == 1 else (len(stored) > checkpointed), (stored, checkpointed)

    resumed = project.run(f"resume={run_id}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"({run_id}) marked KILLED: process " in resumed.stderr
    client = MlflowClient(tracking_uri=project.store_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["failure_reason"] == ""
    for key in PER_EPOCH:
        assert [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)] == list(
            range(1, epochs + 1)
        ), key
    assert [m.step for m in client.get_metric_history(run_id, "test_accuracy")] == [epochs]


@pytest.mark.parametrize("status", ["KILLED", "RUNNING"])
def test_a_deleted_run_is_not_resumed_and_says_how_to_restore_it(tracker, status):
    """MLflow refuses to reopen it (a traceback before), and a dead RUNNING one could not be marked KILLED."""
    from nnexp.tracking.store import RunCreationError

    run_id = crafted(tracker, status=status, **{liveness.PID: str(ended_pid())})
    tracker.client.delete_run(run_id)
    with pytest.raises(RunCreationError) as refused, tracker.start_run("x", {}, resume=run_id):
        pass
    restore = f"mlflow runs restore --run-id {run_id}"
    assert str(refused.value) == f"run {run_id} is deleted; restore it first with: {restore}"
    assert tracker.client.get_run(run_id).info.status == status


def test_predict_run_marks_a_ghost_killed_and_says_it_ended_before_logging_a_model(tracker, tmp_path, caplog):
    """It left the run RUNNING and said it "was trained before nnexp logged one"."""
    from nnexp.errors import NnexpError
    from nnexp.serving import download_run_model

    bare = crafted(tracker, **{PID: str(ended_pid())})
    kept = crafted(tracker, **{PID: str(ended_pid()), "output_dir": str(tmp_path)})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "checkpoint.json").write_text("{}")
    missing = "has no logged MLflow model 'model': it ended before logging one"
    with caplog.at_level(logging.WARNING, "nnexp.tracking.liveness"):
        for run_id, advice in ((bare, ""), (kept, f"; continue it with: python -m nnexp resume={kept}")):
            with pytest.raises(NnexpError) as raised:
                download_run_model(run_id, tracker.uri, tmp_path / "download")
            assert str(raised.value) == f"run {run_id} in {tracker.uri} is KILLED ({REASON}) and {missing}{advice}"
            assert tracker.client.get_run(run_id).info.status == "KILLED"
    assert [message.split(" marked KILLED")[0] for message in caplog.messages] == [
        f"run crafted ({bare})",
        f"run crafted ({kept})",
    ]


def test_a_run_without_a_model_is_described_as_it_is(tracker, tmp_path):
    from nnexp.tracking.store import without_model

    alive = tracker.client.get_run(crafted(tracker))
    assert without_model(tracker.client, alive, "model") == (
        f"is still RUNNING in process {os.getpid()} on {socket.gethostname()} and has no logged MLflow model 'model' "
        "yet; ask again once it has finished"
    )
    copy = tmp_path / "model"
    copy.mkdir()
    (copy / "MLmodel").write_text("flavors: {}\n")
    finished = tracker.client.get_run(crafted(tracker, "FINISHED", output_dir=str(tmp_path)))
    assert without_model(tracker.client, finished, "model") == (
        f"is FINISHED and has no logged MLflow model 'model'; its saved copy: nnexp predict model={copy}"
    )
    failed = crafted(tracker, "FAILED", failure_reason="loss became NaN at epoch 3, batch 1\nsecond line")
    tracker.client.log_artifact(failed, str(copy / "MLmodel"), "checkpoint")
    assert without_model(tracker.client, tracker.client.get_run(failed), "model") == (
        "is FAILED (loss became NaN at epoch 3, batch 1) and has no logged MLflow model 'model': it ended before "
        f"logging one; continue it with: python -m nnexp resume={failed}"
    )


def test_nnexp_ui_marks_the_ghosts_of_every_experiment_killed(tmp_path, monkeypatch):
    """``nnexp ui`` showed them RUNNING for ever."""
    from nnexp.commands import ui

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    own, other = Tracker(uri, "nnexp"), Tracker(uri, "other")
    ghosts = [crafted(own, **{PID: str(ended_pid())}), crafted(other, **{PID: str(ended_pid())})]
    alive = crafted(own)
    started = []

    def mlflow_ui(command: list[str]) -> int:
        started.append(command)
        return 0

    monkeypatch.setattr(ui, "run_group", mlflow_ui)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert ui.main(["--uri", uri, "--port", str(port)]) == 0 and started
    assert [own.client.get_run(run_id).info.status for run_id in ghosts] == ["KILLED", "KILLED"]
    assert own.client.get_run(alive).info.status == "RUNNING"


def sync_outbox(folder: Path, uri: str, run_id: str) -> None:
    """An outbox in ``folder``, as a run of one epoch whose store was away when it finished leaves it."""
    from mlflow import MlflowClient
    from test_outbox import keep_model

    MlflowClient(tracking_uri=uri).log_param(run_id, "trainer.epochs", "1")
    (folder / "config.yaml").write_text("seed: 0\n")
    if not (folder / "model").is_dir():
        keep_model(folder)
    metrics = {"train_loss": 0.5, "train_accuracy": 0.75, "test_loss": 0.5, "test_accuracy": 0.9}
    contents = {
        "tracking_uri": uri,
        "run_id": run_id,
        "status": "FINISHED",
        "metrics": [[key, value, 1700000000000, 1] for key, value in metrics.items()],
        "tags": {},
        "artifacts": [[str(folder / "config.yaml"), None]],
    }
    (folder / "mlflow_outbox.json").write_text(json.dumps(contents))


def test_nnexp_sync_marks_its_ghost_and_sends_the_outbox_status_in_place_of_the_guess(tracker, tmp_path):
    """``nnexp sync`` left a ghost RUNNING when it refused its outbox, and kept the reap's failure_reason on a run
    whose outbox then said FINISHED."""
    from nnexp.errors import NnexpError
    from nnexp.tracking.outbox import sync

    own, elsewhere = tmp_path / "own", tmp_path / "elsewhere"
    own.mkdir()
    elsewhere.mkdir()
    refused = crafted(tracker, **{PID: str(ended_pid()), "output_dir": str(elsewhere)})
    sync_outbox(own, tracker.uri, refused)
    with pytest.raises(NnexpError, match="is the run of"):
        sync(own)
    run = tracker.client.get_run(refused)
    assert (run.info.status, run.data.tags["failure_reason"]) == ("KILLED", REASON)

    sent = crafted(tracker, **{PID: str(ended_pid()), "output_dir": str(own)})
    sync_outbox(own, tracker.uri, sent)
    assert sync(own).endswith("status FINISHED")
    run = tracker.client.get_run(sent)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert [metric.value for metric in tracker.client.get_metric_history(sent, "train_loss")] == [0.5]


def test_through_the_cli_predict_run_of_a_ghost_says_it_was_killed(tracker, tmp_path):
    run_id = crafted(tracker, **{PID: str(ended_pid())})
    (tmp_path / "points.csv").write_text("1,2\n")
    command = ["predict", f"run={run_id}", f"input={tmp_path / 'points.csv'}", f"tracking.uri={tracker.uri}"]
    result = subprocess.run(
        [sys.executable, "-m", "nnexp", *command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"run crafted ({run_id}) marked KILLED: process {tracker.client.get_run(run_id).data.tags[PID]} on "
        f"{socket.gethostname()} has ended",
        f"error: run {run_id} in {tracker.uri} is KILLED ({REASON}) and has no logged MLflow model 'model': it ended "
        "before logging one",
    ]


def left_partials(folder: Path) -> list[Path]:
    """What a process killed while writing model.npz and its first checkpoint leaves in run folder ``folder``."""
    partials = [folder / ".model.c1a3209a.partial.npz", folder / "checkpoints" / ".checkpoint-e1.d12b3339.partial.npz"]
    for path in partials:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    return partials


def test_marking_a_run_killed_removes_the_partial_files_its_process_left(tracker, tmp_path, caplog):
    """A kill -9 while the first checkpoint was written left a 13.7 MB partial file for good."""
    partials = left_partials(tmp_path / "run")
    (tmp_path / "run" / "model.npz").write_bytes(b"whole")
    pid = ended_pid()
    run_id = crafted(tracker, **{PID: str(pid), "output_dir": str(tmp_path / "run")})
    with caplog.at_level(logging.WARNING, "nnexp.tracking.liveness"):
        run, ghosts = judged(tracker, run_id)
    assert_killed(run, ghosts)
    assert caplog.messages == [
        f"run crafted ({run_id}) marked KILLED: process {pid} on {socket.gethostname()} has ended; removed the 2 "
        f"partial files it was writing: {partials[0]}, {partials[1]}"
    ]
    assert [path.name for path in (tmp_path / "run").rglob("*")] == ["checkpoints", "model.npz"]


def test_a_run_judged_gone_by_its_heartbeat_keeps_its_partial_files(tracker, tmp_path):
    """Its process may yet be writing them on another machine, behind a broken network."""
    partials = left_partials(tmp_path / "run")
    tags = {PID: str(ended_pid()), HOST: "elsewhere", HEARTBEAT: ago(11), "output_dir": str(tmp_path / "run")}
    run, ghosts = judged(tracker, crafted(tracker, **tags))
    assert_killed(run, ghosts)
    assert ghosts[0].removed == []
    assert all(path.exists() for path in partials)
