"""Processes nnexp starts (a tutorial's training run, ``mlflow ui``) end with nnexp, however nnexp ends.

Ctrl-C at a terminal reaches a whole process group, but a signal to nnexp's pid alone, or ``kill -9``, reaches nnexp
only: a child would go on, reparented, training under a parent run marked KILLED or serving on a port. On Linux the
kernel sends a child a signal of our choice when its parent dies (``PR_SET_PDEATHSIG``), even by SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from nnexp.errors import Interrupted

#: ``prctl``'s option that sets the signal a process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: Seconds a stopped group has to end on its own (uvicorn closes its workers) before it is killed.
GRACE_SECONDS = 10.0


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` after which the child gets ``signum`` when this process ends; ``None`` off Linux.

    ``prctl`` is looked up here, not in the forked child, where loading a library is unsafe.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signum)

    return arm


def run_group(command: Sequence[str]) -> int:
    """Run ``command`` in a process group of its own until it ends, and return its exit status.

    Its own group, so that its workers can be stopped together; then a stop of nnexp (Ctrl-C, SIGTERM, an error)
    is passed on to the whole group, and whatever of the group outlives the command is stopped too.
    """
    child = subprocess.Popen(command, process_group=0, preexec_fn=die_with_parent())
    try:
        return child.wait()
    except KeyboardInterrupt as exc:
        stop_group(child, Interrupted.of(exc).exit_code - 128)  # the signal nnexp got, as a shell reports it
        raise
    finally:
        stop_group(child, signal.SIGTERM)


def stop_group(child: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to ``child``'s process group, wait up to :data:`GRACE_SECONDS` for the group to end, then
    kill what is left; a second Ctrl-C while waiting kills at once."""
    group = child.pid  # the group ``process_group=0`` made, named after its leader
    if not signal_group(group, signum):
        return
    try:
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline:
            child.poll()  # reap the leader, or the group would never be empty
            if not signal_group(group, 0):
                return
            time.sleep(0.1)
    finally:
        signal_group(group, signal.SIGKILL)
        child.wait()


def signal_group(group: int, signum: int) -> bool:
    """Send ``signum`` to the process group ``group``; False when no process of it is left."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True
