"""Where a run's wall time goes, phase by phase, and what ran out when memory does."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from nnexp.errors import NnexpError
from nnexp.job import memory
from nnexp.plugins import blame
from nnexp.tracking.store import SYSTEM_PREFIX

#: What a run was doing in a phase, and what to reduce, when it runs out of memory there.
OUT_OF_MEMORY = {
    "setup": ("setting up", memory.ADVICE),
    "data": ("loading the data", "use a smaller dataset, or free memory"),
    "mlflow_setup": ("opening the tracking store", "free memory"),
    "mlflow_logging": ("logging to MLflow", memory.ADVICE),
    "training": ("training", memory.ADVICE),
    "evaluation": ("evaluating", memory.ADVICE),
    "checkpoints": ("writing a checkpoint", memory.ADVICE),
    "model": ("saving the model", memory.ADVICE),
    "plots": ("drawing plots", memory.ADVICE),
}


class Phases:
    """Wall seconds of a run's phases, each second counted once: time in a phase entered inside another (a
    checkpoint written during training) is taken out of the outer one.

    A phase whose work runs in another thread (opening the MLflow run, drawing the plots) is entered here only
    while the run waits for it; :meth:`overlapped` gives its whole work, and the part the run did not wait for is
    hidden behind other phases.
    """

    def __init__(self) -> None:
        self.started = self._since = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.hidden: dict[str, float] = {}
        self._open: list[str] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._charge()
        self._open.append(name)
        doing, advice = OUT_OF_MEMORY.get(name, (name, memory.ADVICE))
        try:
            with memory.running_out(doing, advice):  # the phase says what ran out, in one line
                yield
        except (Exception, SystemExit) as exc:  # a plugin's sys.exit(0) would end the process as a success
            blamed = None if isinstance(exc, NnexpError) else blame(exc)
            if blamed is None:
                raise
            raise blamed from exc  # a user's plugin failed: one line naming it; HYDRA_FULL_ERROR=1 shows where
        finally:
            self._charge()
            self._open.pop()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._open:
            self.seconds[self._open[-1]] = self.seconds.get(self._open[-1], 0.0) + now - self._since
        self._since = now

    def overlapped(self, name: str, seconds: float) -> None:
        """Phase ``name`` took ``seconds`` of work in another thread, of which the run waited the time it spent in
        the phase; the rest was hidden."""
        self._charge()
        self.hidden[name] = self.hidden.get(name, 0.0) + max(0.0, seconds - self.seconds.get(name, 0.0))

    def metrics(self) -> dict[str, float]:
        """``system/<phase>_seconds`` of every phase so far (its whole work), ``system/<phase>_hidden_seconds`` of the
        overlapped ones (the part nobody waited for, already counted in other phases), and ``system/run_seconds``
        since the run started."""
        self._charge()
        found = {
            f"{SYSTEM_PREFIX}{name}_seconds": self.seconds.get(name, 0.0) + self.hidden.get(name, 0.0)
            for name in {**self.seconds, **self.hidden}
        }
        found.update({f"{SYSTEM_PREFIX}{name}_hidden_seconds": seconds for name, seconds in self.hidden.items()})
        found[f"{SYSTEM_PREFIX}run_seconds"] = time.perf_counter() - self.started
        return found
