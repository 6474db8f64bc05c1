"""The base of nnexp's Hydra callbacks, whose errors nnexp reports itself: Hydra 1.3 turns any exception a callback
raises into a warning of several lines and goes on, so that an error at a sweep's end was lost (exit 0)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from hydra.experimental.callback import Callback

from nnexp.errors import StartRefused

#: Hydra's callback hooks; those in :data:`STARTS` come before a run or sweep begins, which their error must stop.
HOOKS = ("on_run_start", "on_run_end", "on_multirun_start", "on_multirun_end", "on_job_start", "on_job_end")
STARTS = frozenset({"on_run_start", "on_multirun_start"})

#: The first error an nnexp callback raised and nnexp has not reported yet.
_kept: Exception | None = None


class CallbackFailed(StartRefused):
    """Stops Hydra at a start hook that failed; ``__main__`` reports the error :func:`take_error` gives."""


class NnexpCallback(Callback):
    """A Hydra callback whose hooks never raise into Hydra: the first error is kept for :func:`take_error`, and a
    start hook's error also stops the run or sweep there (as a BaseException, which Hydra lets through)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in HOOKS:
            if name in vars(cls):
                setattr(cls, name, keeping_errors(vars(cls)[name], stops=name in STARTS))


def keeping_errors(hook: Callable[..., None], stops: bool) -> Callable[..., None]:
    """``hook``, its Exception kept (the first one only) instead of raised, and :class:`CallbackFailed` raised
    instead when it ``stops``; a stop (Ctrl-C) or a :class:`StartRefused` goes through as it is."""

    @functools.wraps(hook)
    def kept(self: Callback, *args: Any, **kwargs: Any) -> None:
        global _kept
        try:
            hook(self, *args, **kwargs)
        except Exception as exc:
            if _kept is None:
                _kept = exc
            if stops:
                raise CallbackFailed(str(exc)) from None

    return kept


def take_error() -> Exception | None:
    """The first error an nnexp callback raised since the last call, if any; it is then no longer kept."""
    global _kept
    error, _kept = _kept, None
    return error
