"""Work a job hands to a thread so that it overlaps other work: matplotlib's import during training, the plots
while the model is saved and logged."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def in_thread(work: Callable[[], T], name: str) -> Future[tuple[T, float]]:
    """Start ``work`` in a daemon thread; the future holds what it returned and the wall seconds it took, or what
    it raised."""
    future: Future[tuple[T, float]] = Future()

    def run() -> None:
        started = time.perf_counter()
        try:
            result = work()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result((result, time.perf_counter() - started))

    future.set_running_or_notify_cancel()
    threading.Thread(target=run, name=name, daemon=True).start()
    return future
