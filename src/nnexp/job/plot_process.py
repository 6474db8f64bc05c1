"""A run's plots drawn in a process of their own, so that they take the other core rather than the run's.

matplotlib's import and a run's three figures are about 0.7 s of Python; in a thread of the run's own process they
only take turns with MLflow's import and requests for the one interpreter lock, which a short run waits on. The
process starts with the first job, imports matplotlib while the job loads its data and trains, and serves every job
of the process (a sweep's too). It is the run's child, in a session of its own: it gets SIGTERM when the run's process
dies, even by SIGKILL, leaves a Ctrl-C at the terminal to the run, and ends when the run's process closes its end of
the pipe, which the run's process waits for when it exits.

Requests (a drawing function of :mod:`nnexp.job.plots` with its arguments) and replies are pickled over the child's
stdin and stdout, a pipe only the two processes hold; the child's stdout for anything else (matplotlib's own
warnings) goes to its stderr. A sweep's comparison is drawn there too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import nnexp
from nnexp.children import follow_parent

#: The child's program, given the run's process id and the folder this nnexp is imported from. The run decides what
#: a Ctrl-C or a hang-up stops (a drawing it started is finished), so the child ignores them from its first line on,
#: before the imports during which Python would print a KeyboardInterrupt's traceback. The folder goes last on its
#: path: the run's own path (its PYTHONPATH, its working folder) finds the same nnexp first, and nothing there can
#: shadow the standard library.
BOOTSTRAP = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "sys.path.append(sys.argv[2]); from nnexp.job.plot_process import main; main()"
)


class PlotterGoneError(Exception):
    """The plotting process ended before it replied."""


class Plotter:
    """The plotting process, as the run's process sees it: started at once, asked to draw one run's plots at a
    time."""

    def __init__(self) -> None:
        source = str(Path(nnexp.__file__).resolve().parents[1])
        # No preexec_fn: the run's process has threads by now, and code run between fork and exec could deadlock. A
        # session of its own: a Ctrl-C at the terminal would reach it while Python starts, before it can ignore it.
        self._process = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, str(os.getpid()), source],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._import_seconds: float | None = None

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def ready(self) -> float:
        """Wait until matplotlib is imported; the seconds its import took, 0 once told."""
        with self._lock:
            if self._import_seconds is not None:
                return 0.0
            self._import_seconds = float(self._receive())
            return self._import_seconds

    def draw(self, drawing: Callable[[], object]) -> float:
        """Have the process call ``drawing`` (picklable: a function of :mod:`nnexp.job.plots` and its arguments, as
        ``functools.partial(draw_run_plots, plots)``); the seconds the process took, matplotlib's import included the
        first time. Raises what stopped it (an OSError when a plot could not be written)."""
        imported = self.ready()
        with self._lock:
            assert self._process.stdin is not None
            try:
                pickle.dump(drawing, self._process.stdin, pickle.HIGHEST_PROTOCOL)
                self._process.stdin.flush()
            except OSError:  # a broken pipe: the process has ended
                raise self._gone() from None
            error, seconds = self._receive()
        if error is not None:
            raise error
        return imported + float(seconds)

    def close(self) -> None:
        """End the process: it finishes what it draws, then exits; one still importing matplotlib, which has
        written nothing, is ended at once (a run refused in setup must not wait for it)."""
        if self._import_seconds is None:
            self._process.kill()
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def _receive(self) -> Any:
        assert self._process.stdout is not None
        try:
            return pickle.load(self._process.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            raise self._gone() from None

    def _gone(self) -> PlotterGoneError:
        code = self._process.wait()
        return PlotterGoneError(f"the plotting process ended with status {code}")


#: This process's plotting process, once started.
_started: list[Plotter] = []


def plotter() -> Plotter:
    """This process's plotting process, started on first use, or again when the last one ended; this process waits
    for it to end when it exits itself, so that it leaves no process behind."""
    if not _started or not _started[0].alive:
        _started[:] = [Plotter()]
    return _started[0]


def draw_with_plotter(drawing: Callable[[], object]) -> None:
    """Call ``drawing`` in this process's plotting process when one runs, its matplotlib imported; else, or if it
    ends meanwhile, here. Raises what stopped it."""
    if _started and _started[0].alive:
        with contextlib.suppress(PlotterGoneError):
            _started[0].draw(drawing)
            return
    drawing()


def close_plotter() -> None:
    """End this process's plotting process, if one was started."""
    for started in _started:
        started.close()
    _started.clear()


atexit.register(close_plotter)


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop: import matplotlib, say how long it took, then make each drawing asked for and reply with
    what stopped it (None when nothing did) and its seconds."""
    from nnexp.job.plots import pyplot

    started = time.perf_counter()
    pyplot()
    _reply(replies, time.perf_counter() - started)
    while True:
        try:
            drawing = pickle.load(requests)
        except EOFError:  # the run is done with it; nothing is left to write or flush, so no slow interpreter exit
            os._exit(0)
        started = time.perf_counter()
        error = _draw(drawing)
        _reply(replies, (error, time.perf_counter() - started))


def _draw(drawing: Callable[[], object]) -> Exception | None:
    """Make ``drawing``; what stopped it, raised again in the run's process as if it had drawn the plots itself."""
    _drawing.set()
    try:
        drawing()
    except Exception as exc:
        return _picklable(exc)
    finally:
        _drawing.clear()
    return None


def _picklable(exc: Exception) -> Exception:
    """``exc``, or a RuntimeError with its words when it cannot be sent back."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _reply(replies: IO[bytes], value: object) -> None:
    pickle.dump(value, replies, pickle.HIGHEST_PROTOCOL)
    replies.flush()


#: Set while the child makes a drawing, whose partial file a SIGTERM must remove before the child ends.
_drawing = threading.Event()


class _Terminated(BaseException):
    """SIGTERM (the run's process died) while drawing: unwinds the drawing, then the child ends."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """End the child at once, quietly, in whatever phase it is (its interpreter's exit too, where an exception would
    print "Exception ignored"); while drawing, after unwinding the drawing, which removes its partial file."""
    if _drawing.is_set():
        raise _Terminated(128 + signum)
    os._exit(128 + signum)


def main() -> None:
    """The child: ``sys.argv[1]`` is the run's process id."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    follow_parent(int(sys.argv[1]))
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(sys.stdin.buffer, replies)
    except BrokenPipeError:  # the run's process is gone
        pass
    except _Terminated as stop:
        os._exit(stop.status)
