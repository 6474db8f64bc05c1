"""A run opened in a background thread while the job starts training: MLflow's import (two seconds or so)
overlaps that work, and what the job sends the run meanwhile waits, in order, until the run is open."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from nnexp.tracking.tracked_run import TrackedRun, Tracker, end_after


class OpeningRun:
    """A run that a thread opens; it stands in for the :class:`TrackedRun` until then.

    The thread imports MLflow at once, then waits for :meth:`open` (the job's values checked: a bad value must
    create no store) and calls the opener it is given. Calls made before the run is open are queued and replayed
    in order, in the caller's thread, by the first call after it is open; if opening failed, every call raises its
    error, and ``on_failure`` (set before :meth:`open`) is called from the thread so that training stops at once.
    """

    def __init__(self, waiting: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext) -> None:
        #: Wraps each wait for the thread, so the time the caller spends blocked is charged to a phase.
        self.waiting = waiting
        self.on_failure: Callable[[], None] | None = None
        self.tracker: Tracker | None = None
        self.error: BaseException | None = None
        #: Seconds the thread worked (MLflow's import, then opening the run), not counting its wait for :meth:`open`.
        self.seconds = 0.0
        self._opener: Callable[[], tuple[Tracker, TrackedRun]] | None = None
        self._run: TrackedRun | None = None
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._go, self._done = threading.Event(), threading.Event()
        # A daemon: a job interrupted during MLflow's import ends without waiting for it.
        self.thread = threading.Thread(target=self._work, name="nnexp-tracking", daemon=True)
        self.thread.start()

    def open(self, opener: Callable[[], tuple[Tracker, TrackedRun]]) -> None:
        """Let the thread open the run with ``opener``, which returns the tracker and the open run."""
        self._opener = opener
        self._go.set()

    def cancel(self) -> None:
        """The job failed before :meth:`open`: the thread opens nothing."""
        self._go.set()

    def _work(self) -> None:
        started = time.perf_counter()
        try:
            import mlflow  # noqa: F401  the costly part, while the job checks its values and starts training

            self.seconds = time.perf_counter() - started
            self._go.wait()
            if self._opener is None:
                return
            started = time.perf_counter()
            self.tracker, self._run = self._opener()
            self.seconds += time.perf_counter() - started
        except BaseException as exc:
            self.error = exc
        finally:
            self._done.set()
        if self.error is not None and self.on_failure is not None:
            self.on_failure()

    @property
    def opened(self) -> bool:
        """Whether the thread is done: the run is open, or opening it failed (:meth:`wait` raises the error)."""
        return self._done.is_set()

    @property
    def failed(self) -> bool:
        return self._done.is_set() and self.error is not None

    def check(self) -> None:
        """Raise the error opening the run failed with, if it did."""
        if self.failed:
            raise self.error  # type: ignore[misc]

    def wait(self) -> TrackedRun:
        """The open run, after sending it what was queued; waits for the thread, and raises the error it met."""
        if not self._done.is_set():
            with self.waiting():
                self._done.wait()
        self.check()
        assert self._run is not None  # opened: the thread ran the opener without error
        while self._calls:
            method, args, options = self._calls.pop(0)
            getattr(self._run, method)(*args, **options)
        return self._run

    def _call(self, method: str, *args: Any, **options: Any) -> None:
        self.check()
        if self._done.is_set():
            getattr(self.wait(), method)(*args, **options)
        else:
            self._calls.append((method, args, options))

    @property
    def run_id(self) -> str:
        return self.wait().run_id

    @property
    def deleted(self) -> bool:
        """Whether the store said the run was deleted (a run not yet open has not been)."""
        return self._run is not None and self._run.deleted

    @property
    def deleted_reason(self) -> str:
        return self.wait().deleted_reason

    @property
    def restore_command(self) -> str:
        return self.wait().restore_command

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params", dict(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call("set_tags", dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        # The time it was sent, not the time it reaches the run.
        self._call("log_metrics", dict(metrics), step, int(time.time() * 1000))

    def complete_history(self, history: Mapping[str, Sequence[float]], *, rate_changes: bool = True) -> None:
        # A copy: training appends to the history while the call waits in the queue.
        history = {key: list(values) for key, values in history.items()}
        self._call("complete_history", history, rate_changes=rate_changes)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", path, artifact_path)


@contextlib.contextmanager
def ending(opening: OpeningRun) -> Iterator[None]:
    """The run ends as :meth:`Tracker.start_run`'s does, once it is open; if opening it failed, that error is the
    job's, whatever stopped the job meanwhile."""
    try:
        yield
    except BaseException as exc:
        end_after(opening.wait(), exc)
        raise
    opening.wait().end("FINISHED")
