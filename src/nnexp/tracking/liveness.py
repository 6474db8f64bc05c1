"""Where a run's process lives, its heartbeat, and marking KILLED the RUNNING runs whose process is gone.

Every run nnexp opens records its host, process id and process start time as tags, and a heartbeat that its
metric flushes and a daemon thread refresh. A RUNNING run is judged gone when, on the same machine, its process
no longer exists or its pid now belongs to a process started at another time; from another machine, when its
heartbeat is older than :data:`STALE_SECONDS`. Runs without these tags (older nnexp, other tools) are left as
they are.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from nnexp.atomic import remove_run_partials
from nnexp.errors import one_line

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)

HOST = "nnexp.host"
PID = "nnexp.pid"
#: The process's start time in clock ticks after boot (``/proc/<pid>/stat`` field 22); tells a reused pid apart.
PID_STARTED = "nnexp.pid_started"
#: The boot and pid namespace the pid belongs to: pids compare only within one (not across containers or reboots).
PID_SPACE = "nnexp.pid_space"
#: UTC time of the process's last sign of life.
HEARTBEAT = "nnexp.heartbeat"
REASON = "process ended without closing the run"
HEARTBEAT_SECONDS = 60.0
#: A run seen from another machine is gone after this long without a heartbeat: ten missed beats.
STALE_SECONDS = 10 * HEARTBEAT_SECONDS
#: No system gives out pids this large; a tag that says otherwise was not written by nnexp.
MAX_PID = 2**31
#: How long ending a run waits for a heartbeat request in flight; the thread is a daemon and never holds the process.
JOIN_SECONDS = 1.0


def beat() -> str:
    """Now, as the heartbeat tag records it: UTC, ISO 8601, milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def where_this_process_lives() -> dict[str, str]:
    """Host, process id, process start time and pid space of this process, as :func:`why_gone` reads them."""
    pid = os.getpid()
    return {HOST: socket.gethostname(), PID: str(pid), PID_STARTED: process_started(pid) or "", PID_SPACE: pid_space()}


def process_tags() -> dict[str, str]:
    """The tags that say where this process lives, with a fresh heartbeat."""
    return {**where_this_process_lives(), HEARTBEAT: beat()}


def pid_space() -> str:
    """This boot's id and this process's pid namespace, or "" where they cannot be read (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot} {namespace}"


def process_started(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks after boot; None if there is no such live process (a zombie
    has ended), "" if it exists but its start time cannot be read."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses; fields 3 on follow the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def heartbeat_age(tags: Mapping[str, str], now: float) -> float | None:
    """Seconds since the run's last heartbeat, or None without a readable one."""
    try:
        last = datetime.fromisoformat(tags[HEARTBEAT].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None
    return now - last


def lives_here(tags: Mapping[str, str]) -> bool:
    """Whether the process a run's ``tags`` name lived on this machine, in this boot and pid namespace."""
    space = pid_space()
    return tags.get(HOST) == socket.gethostname() and bool(space) and tags.get(PID_SPACE) == space


def why_gone(tags: Mapping[str, str], now: float | None = None) -> str | None:
    """Why the process a run's ``tags`` name has ended without closing it; None if it may be alive, or if the
    tags do not say where it lives."""
    host, pid_text = tags.get(HOST), tags.get(PID, "")
    if not host or not pid_text.isdigit() or not 0 < int(pid_text) < MAX_PID:
        return None
    pid = int(pid_text)
    if lives_here(tags):
        started = process_started(pid)
        if started is None:
            return f"process {pid} on {host} has ended"
        if started and tags.get(PID_STARTED) and started != tags[PID_STARTED]:
            return f"process {pid} on {host} has ended (its pid now belongs to another process)"
        return None
    age = heartbeat_age(tags, time.time() if now is None else now)
    if age is None or age <= STALE_SECONDS:
        return None
    return f"process {pid} on {host} sent no heartbeat for {math.floor(age / 60)} minutes"


def remove_left_partials(tags: Mapping[str, str]) -> list[Path]:
    """Remove the partial files that the ended process of a run with ``tags`` left in its run folder (or sweep
    folder, whose jobs write in folders of their own); returns them."""
    removed = []
    if tags.get("output_dir"):
        removed += remove_run_partials(Path(tags["output_dir"]))
    if tags.get("sweep_dir"):
        removed += remove_run_partials(Path(tags["sweep_dir"]), subfolders=())
    return removed


@dataclass
class Ghost:
    """A RUNNING run whose process was found gone, and why; ``removed``: the partial files it left, now removed."""

    run: Run
    why: str
    removed: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        marked = f"{describe(self.run)} marked KILLED: {self.why}"
        if not self.removed:
            return marked
        files = "the partial file" if len(self.removed) == 1 else f"the {len(self.removed)} partial files"
        return f"{marked}; removed {files} it was writing: {', '.join(map(str, self.removed))}"


def describe(run: Run) -> str:
    """``run NAME (ID)``, or ``run ID`` for a run without a name."""
    info = run.info
    return f"run {one_line(info.run_name)} ({info.run_id})" if info.run_name else f"run {info.run_id}"


def reap(client: MlflowClient, runs: Sequence[Run]) -> tuple[list[Run], list[Ghost]]:
    """Mark KILLED each RUNNING run among ``runs`` whose process is gone, with ``failure_reason`` and its last
    heartbeat as end time; returns ``runs`` as they are now, and the ones marked (each also logged).

    A store that refuses the change (a read-only user of a server) leaves the run as it was, with a warning.
    """
    now = time.time()
    current, ghosts = [], []
    for run in runs:
        if run.info.status == "RUNNING" and why_gone(run.data.tags, now) is not None:
            try:
                run, ghost = mark(client, run.info.run_id, now)
            except Exception as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                log.warning("%s: its process has ended, but it could not be marked KILLED: %s", describe(run), reason)
                ghost = None
            if ghost is not None:
                log.warning("%s", ghost)
                ghosts.append(ghost)
        current.append(run)
    return current, ghosts


def reap_unless_deleted(client: MlflowClient, run: Run) -> Run:
    """``run`` as it is after :func:`reap`; a deleted run is left as it is, as MLflow refuses to change one."""
    if run.info.lifecycle_stage == "deleted":
        return run
    [run], _ = reap(client, [run])
    return run


def mark(client: MlflowClient, run_id: str, now: float) -> tuple[Run, Ghost | None]:
    """Mark run ``run_id`` KILLED if it is still RUNNING in a process that is gone; returns it as it is now."""
    # Read again just before writing: a resume may have just reopened it in a live process.
    run = client.get_run(run_id)
    why = why_gone(run.data.tags, now) if run.info.status == "RUNNING" else None
    if why is None:
        return run, None
    age = heartbeat_age(run.data.tags, now)
    last_seen = now if age is None else min(now, now - age)
    client.set_tag(run_id, "failure_reason", REASON)
    client.set_terminated(run_id, "KILLED", end_time=max(run.info.start_time, int(last_seen * 1000)))
    # Only for a process seen gone here: one judged gone by its heartbeat may yet write on another machine.
    removed = remove_left_partials(run.data.tags) if lives_here(run.data.tags) else []
    return client.get_run(run_id), Ghost(run, why, removed)


class Heartbeat:
    """A daemon thread that refreshes a run's heartbeat tag every ``every`` seconds until :meth:`stop`."""

    def __init__(self, client: MlflowClient, run_id: str, every: float = HEARTBEAT_SECONDS) -> None:
        self.client, self.run_id, self.every = client, run_id, every
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"nnexp heartbeat {run_id}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(self.every):
            # A store that is away: the run's own requests say so, and the next beat tries again.
            with contextlib.suppress(Exception):
                self.client.set_tag(self.run_id, HEARTBEAT, beat())

    def stop(self) -> None:
        self._stopped.set()
        self.thread.join(JOIN_SECONDS)
