"""User-facing errors: each message is one line naming the thing, what was expected and what was found."""

from __future__ import annotations

import contextlib
import math
import numbers
import signal
import sys


class NnexpError(Exception):
    """An error caused by the user's input; the CLI prints it as one line, without a traceback."""


class ConfigError(NnexpError):
    """A configuration value is missing, unknown or out of range."""


class PluginError(NnexpError):
    """A plugin cannot be registered, found or imported."""


class DataError(NnexpError):
    """A data file is missing or malformed."""


class TrainingError(NnexpError):
    """Training cannot go on, for example because the loss became NaN."""


class OutOfMemoryError(NnexpError):
    """A run needs more memory than the machine has: refused before allocating, or NumPy could not allocate."""


class StartRefused(BaseException):
    """A user's error found by a Hydra callback before a run or sweep starts; a BaseException, since Hydra turns a
    callback's Exception into a mere warning. ``__main__`` prints it as one line."""


class ParameterError(ConfigError):
    """A constructor argument is out of range; the registry prefixes the config group to ``field``."""

    def __init__(self, field: str, expected: str, got: object) -> None:
        self.field, self.expected, self.got = field, expected, got
        super().__init__(f"{field} {expected}, got {got!r}")

    def within(self, group: str) -> ParameterError:
        """The same error with its field qualified by the config group, e.g. ``optimizer.learning_rate``."""
        return ParameterError(f"{group}.{self.field}", self.expected, self.got)


def require(condition: bool, field: str, expected: str, got: object, finite: bool = True) -> None:
    """Raise :class:`ParameterError` unless ``condition`` holds and, unless ``finite=False``, ``got`` is not a NaN
    or infinite number: one-sided bounds such as ``epsilon > 0`` would let ``inf`` through."""
    if not condition:
        raise ParameterError(field, expected, got)
    if finite and isinstance(got, numbers.Real) and not math.isfinite(got):
        raise ParameterError(field, f"{expected} and finite", got)


def one_line(text: object) -> str:
    """``text`` on one line: a newline, tab or other control character it holds (in a user's value, say) is shown
    escaped, as ``repr`` shows it."""
    text = str(text)
    return text if text.isprintable() else "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


#: How much of a long option name or bad cell a message shows.
SHOWN_NAME = 40


def abbreviated(name: str) -> str:
    """``name``, cut to its first characters when too long to read in a one-line message."""
    return name if len(name) <= SHOWN_NAME else f"{name[:SHOWN_NAME]}…"


def format_bytes(size: int) -> str:
    """``size`` in the largest binary unit (MiB to TiB) that keeps it at 1 or more."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**20:.1f} MiB"


def report(message: object) -> None:
    """Print ``error: <message>`` to stderr, on one line whatever the message holds."""
    with contextlib.suppress(BrokenPipeError):  # no one reads (a parent that died, ``| head``): the status tells
        print(f"error: {one_line(message)}", file=sys.stderr)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; a ``BaseException``, so a sweep stops too instead of going on."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def of(cls, exc: KeyboardInterrupt) -> Interrupted:
        """``exc`` with a message and an exit status: a bare KeyboardInterrupt is Ctrl-C (SIGINT)."""
        if isinstance(exc, Interrupted):
            return exc
        return cls(str(exc) or INTERRUPTED, 128 + signal.SIGINT)


def interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM ``exc`` is, or was raised from: Python wraps one that lands in a class's
    ``__set_name__`` (while a module is imported) in a RuntimeError; None if there is none."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        cause = cause.__cause__
    return None


#: What the line reporting a Ctrl-C (SIGINT) calls the stop.
INTERRUPTED = "interrupted (SIGINT)"
#: The signals, besides Ctrl-C, that stop a run, and what the line reporting each calls the stop: a scheduler's or
#: ``kill``'s SIGTERM, a hang-up (a closed terminal, a dropped ssh, or the end of ``nnexp reproduce``), and every
#: other signal whose default would end the process without a word or a checkpoint: ``kill -USR1``, a timer's
#: alarm, ``ulimit -t``'s CPU limit. SIGUSR2 is not one: SLURM's launcher takes it as a job's warning, to requeue it.
STOPPED = {
    getattr(signal, name): reason
    for name, reason in (
        ("SIGTERM", "terminated (SIGTERM)"),
        ("SIGHUP", "hung up (SIGHUP)"),  # this and those below are not on Windows
        ("SIGUSR1", "user defined signal 1 (SIGUSR1)"),
        ("SIGALRM", "alarm clock (SIGALRM)"),
        ("SIGXCPU", "CPU time limit exceeded (SIGXCPU)"),
        ("SIGVTALRM", "virtual timer expired (SIGVTALRM)"),
        ("SIGPROF", "profiling timer expired (SIGPROF)"),
    )
    if hasattr(signal, name)
}
#: The stops that come again by themselves, so that a second one is no one insisting on stopping at once: a
#: hang-up, the CPU limit (every CPU second past it) and interval timers.
RECURRING = {
    getattr(signal, name) for name in ("SIGHUP", "SIGXCPU", "SIGALRM", "SIGVTALRM", "SIGPROF") if hasattr(signal, name)
}


def raise_on_stop_signals() -> None:
    """Make SIGTERM (a scheduler's or ``timeout``'s stop), SIGHUP and the other :data:`STOPPED` signals end a run
    like Ctrl-C, so it is not left RUNNING, and SIGINT raise KeyboardInterrupt even in a process a shell started in
    the background."""

    def terminate(signum: int, frame: object) -> None:
        raise Interrupted(STOPPED[signum], 128 + signum)

    for signum in STOPPED:
        signal.signal(signum, terminate)
    # A shell starts a background job with SIGINT ignored, and Python then leaves it ignored: ``kill -INT`` would
    # do nothing, and ``nnexp reproduce`` would leave its child training.
    signal.signal(signal.SIGINT, signal.default_int_handler)
