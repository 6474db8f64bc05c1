"""Processes nnexp starts (a tutorial's training run, ``mlflow ui``) end with nnexp, however nnexp ends.

Ctrl-C at a terminal reaches a whole process group, but a signal to nnexp's pid alone, or ``kill -9``, reaches nnexp
only: a child would go on, reparented, training under a parent run marked KILLED or serving on a port. On Linux the
kernel sends a child a signal of our choice when its parent dies (``PR_SET_PDEATHSIG``), even by SIGKILL.

``python -m nnexp.children COMMAND...`` is the leader of such a group: it runs ``COMMAND`` and, when it is told to
stop, when its parent dies or when ``COMMAND`` ends, stops every process of its group (``mlflow ui`` starts uvicorn,
its workers and job consumers, and passes a signal on to uvicorn alone).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nnexp.errors import STOPPED, Interrupted, raise_on_stop_signals

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
    return lambda: _signal_at_parents_death(prctl, parent, signum)


def follow_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Have this process get ``signum`` when its parent, ``parent``, ends (at once if it has already); for a child
    to call itself, where a ``preexec_fn`` would be unsafe (a parent with threads)."""
    if sys.platform.startswith("linux"):
        _signal_at_parents_death(ctypes.CDLL(None, use_errno=True).prctl, parent, signum)


def _signal_at_parents_death(prctl: Callable[..., int], parent: int, signum: int) -> None:
    prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signum)


def run_group(command: Sequence[str]) -> int:
    """Run ``command`` in a process group of its own, under a leader that stops the whole group when nnexp stops
    (Ctrl-C, SIGTERM) or dies; returns the command's exit status."""
    leader = subprocess.Popen(
        [sys.executable, "-m", "nnexp.children", *command], process_group=0, preexec_fn=die_with_parent()
    )
    try:
        return leader.wait()
    except KeyboardInterrupt as exc:
        leader.send_signal(Interrupted.of(exc).exit_code - 128)  # the signal nnexp got, as a shell reports it
        try:
            leader.wait(timeout=2 * GRACE_SECONDS)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a wedged leader, or a second Ctrl-C: at once
            os.killpg(leader.pid, signal.SIGKILL)
            leader.wait()
        raise


def lead(command: Sequence[str]) -> int:
    """The group leader: run ``command`` and return its exit status, or 128 + the signal that stopped it; either
    way, stop what is left of the group."""
    raise_on_stop_signals()
    child = subprocess.Popen(command)
    signum = signal.SIGTERM
    try:
        return child.wait()
    except KeyboardInterrupt as exc:
        signum = Interrupted.of(exc).exit_code - 128
        return 128 + signum
    finally:
        end_group(child, signum)


def end_group(child: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the leader's group, give it :data:`GRACE_SECONDS` to end, then kill what is left.

    A stop other than Ctrl-C is passed on as SIGTERM: uvicorn, under ``mlflow ui``, takes SIGHUP as "reload" and
    serves on, and the other signals nnexp stops on would end a process without its own cleanup (a core dump).
    """
    for each in (signal.SIGINT, *STOPPED):  # the leader outlives the signal it sends its group
        signal.signal(each, signal.SIG_IGN)
    os.killpg(0, signum if signum in (signal.SIGINT, signal.SIGTERM) else signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        child.poll()  # reap the command, or it would count as left
        if child.returncode is not None and not others_in_group():
            return
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)  # the leader too


def others_in_group() -> bool:
    """Whether a live process other than this one is in this process's group; off Linux, without /proc to tell,
    False: the signal already sent is all the group gets."""
    if not Path("/proc/self/stat").exists():
        return False
    group, me = os.getpgrp(), os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # ended while being looked at
            continue
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):  # after the name: state, ppid, pgrp
            return True
    return False


if __name__ == "__main__":
    sys.exit(lead(sys.argv[1:]))
