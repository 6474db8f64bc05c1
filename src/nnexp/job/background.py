"""Work a job hands to threads so that it overlaps other work: the wait for the plotting process while the model
is saved and logged, the data's digest while training starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class Workers:
    """The threads a job hands work to; leaving the ``with`` block waits until every one has ended, however the
    block ends (a second Ctrl-C or SIGTERM included).

    A run that ended while its plots were drawn would not log them, though the plotting process would still write
    them into the run's folder. Python's own wait for non-daemon threads at exit is no help: a further Ctrl-C cuts
    it short.
    """

    def __init__(self) -> None:
        #: Set by each thread once its work is done.
        self._done: list[threading.Event] = []

    def start(self, work: Callable[[], T], name: str) -> Future[tuple[T, float]]:
        """Start ``work`` in a thread; the future holds what it returned and the wall seconds it took, or what it
        raised."""
        done = threading.Event()
        self._done.append(done)
        return in_thread(work, name, done)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        stop = self.wait()
        if stop is not None and exc_type is None:  # else the stop that is ending the block says it already
            raise stop

    def wait(self) -> KeyboardInterrupt | None:
        """Wait until the work of every thread is done; a Ctrl-C or SIGTERM meanwhile does not cut the wait short
        (the work left is the plots being drawn, a second or so), and the last one is returned."""
        stop: KeyboardInterrupt | None = None
        for done in self._done:
            while not done.is_set():
                try:
                    # An event, not Thread.join: interrupted by a signal, Python 3.11's join takes the thread for
                    # ended while it runs on.
                    done.wait()
                except KeyboardInterrupt as exc:
                    stop = exc
        return stop


def in_thread(work: Callable[[], T], name: str, done: threading.Event | None = None) -> Future[tuple[T, float]]:
    """Start ``work`` in a thread; the future holds what it returned and the wall seconds it took, or what it
    raised. Without a ``done`` event to set at the end, nobody waits for it: a daemon, for work without effects."""
    future: Future[tuple[T, float]] = Future()

    def run() -> None:
        started = time.perf_counter()
        try:
            result = work()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result((result, time.perf_counter() - started))
        finally:
            if done is not None:
                done.set()

    future.set_running_or_notify_cancel()
    threading.Thread(target=run, name=name, daemon=done is None).start()
    return future
