"""A job's threads end before the job does: a stopped run leaves no thread drawing while the interpreter exits,
which aborted the process (``terminate called without an active exception``) and left plots half-written."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nnexp.errors import Interrupted
from nnexp.job.background import Workers


def main_thread_waits() -> bool:
    """Whether the main thread is blocked in :meth:`Workers.wait`, on one of :mod:`threading`'s locks."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None or frame.f_code.co_filename != threading.__file__:
        return False
    while frame is not None and frame.f_code is not Workers.wait.__code__:
        frame = frame.f_back
    return frame is not None


def until_the_main_thread_waits() -> None:
    """Return once the main thread waits for this one, as the work left when a run stops does; a test whose
    main thread never waits fails on its assertions instead of hanging."""
    deadline = time.monotonic() + 30
    while not main_thread_waits() and time.monotonic() < deadline:
        time.sleep(0.001)


@pytest.fixture
def sigint_seen() -> Iterator[threading.Event]:
    """SIGINT raises KeyboardInterrupt as Python's own handler does, and sets the event first."""
    seen = threading.Event()

    def handler(signum: int, frame: object) -> None:
        seen.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    yield seen
    signal.signal(signal.SIGINT, previous)


def test_a_stop_leaves_the_block_once_its_threads_have_ended():
    ended = threading.Event()

    def work() -> str:
        until_the_main_thread_waits()  # still drawing when the stop reaches the end of the block
        ended.set()
        return "drawn"

    with pytest.raises(Interrupted, match="interrupted again"), Workers() as workers:
        future = workers.start(work, "test-plots")
        raise Interrupted("interrupted again (SIGTERM)", 143)
    assert ended.is_set()
    assert future.result()[0] == "drawn"


def ctrl_c_then_end(sigint_seen: threading.Event, ended: threading.Event) -> Callable[[], None]:
    """Work that sends the main thread a Ctrl-C once it waits for the threads, and ends once that was seen."""

    def work() -> None:
        until_the_main_thread_waits()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        sigint_seen.wait()
        ended.set()

    return work


def test_a_further_stop_while_the_threads_end_waits_for_them_and_keeps_the_first(sigint_seen):
    ended = threading.Event()
    work = ctrl_c_then_end(sigint_seen, ended)

    with pytest.raises(Interrupted, match="interrupted again"), Workers() as workers:
        workers.start(work, "test-plots")
        raise Interrupted("interrupted again (SIGTERM)", 143)
    assert sigint_seen.is_set() and ended.is_set()


def test_a_stop_while_the_threads_end_is_raised_once_they_have(sigint_seen):
    ended = threading.Event()
    work = ctrl_c_then_end(sigint_seen, ended)

    with pytest.raises(KeyboardInterrupt), Workers() as workers:
        workers.start(work, "test-import")
    assert ended.is_set()

