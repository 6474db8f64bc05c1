"""Terminal progress: a tqdm bar on a terminal, plain lines otherwise (a log file, a job's output)."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

from nnexp.core.training import Callback
from nnexp.errors import one_line

PLAIN_LINES = 10
#: Off a terminal, a line at least this often, so that a long run never looks stuck.
PLAIN_SECONDS = 10.0


class Opening(Protocol):
    """A run being opened while training starts (:class:`nnexp.tracking.opening.OpeningRun`)."""

    @property
    def opened(self) -> bool: ...

    def wait(self) -> object: ...


class Progress(Callback):
    """Shows epoch, loss, accuracy, samples per second and, once a schedule changes it, the learning rate.

    Off a terminal, lines are held until ``run`` is open, while training goes on, and the last epoch's line waits
    for it: a job whose run cannot be opened says so in one line, as it did when the run was opened before
    training, and a line shown means a run.
    """

    def __init__(self, label: str, stream: TextIO = sys.stderr, run: Opening | None = None) -> None:
        self.label, self.stream, self.run = one_line(label), stream, run  # a label from overrides may hold an escape
        self._bar = None

    def on_train_begin(self, epochs: int, n_samples: int) -> None:
        self.epochs, self.n_samples = epochs, n_samples
        self._first_rate: float | None = None
        self._last_line = time.monotonic()
        self._unshown: str | None = None  # the last epoch's line, when it was not printed
        self._held = False  # a line was due while the run was opening: the next epoch's is shown once it is open
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=epochs, desc=self.label, unit="epoch", file=self.stream, leave=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        rate = self.n_samples / max(logs["epoch_seconds"], 1e-9)
        shown = {"loss": f"{logs['train_loss']:.4f}", "acc": f"{logs['train_accuracy']:.4f}"}
        if "val_accuracy" in logs:
            shown["val_acc"] = f"{logs['val_accuracy']:.4f}"
        learning_rate = logs.get("learning_rate")
        if self._first_rate is None:
            self._first_rate = learning_rate
        if learning_rate != self._first_rate:
            shown["lr"] = f"{learning_rate:.3g}"
        shown["samples/s"] = f"{rate:,.0f}"
        if self._bar is not None:
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)
            if epoch == self.epochs:
                self._bar.close()
        else:
            details = " ".join(f"{key}={value}" for key, value in shown.items())
            self._unshown = f"{self.label} epoch {epoch}/{self.epochs} {details}"
            every = max(1, self.epochs // PLAIN_LINES)
            due = epoch % every == 0 or time.monotonic() - self._last_line >= PLAIN_SECONDS
            if due or self._held or epoch == self.epochs:
                self._print_unshown(final=epoch == self.epochs)

    def on_train_end(self, history: dict[str, list[float]]) -> None:
        self._print_unshown(final=True)  # where early stopping ended the run

    def _print_unshown(self, final: bool) -> None:
        if self._unshown is None:
            return
        if self.run is not None:
            self._held = not (final or self.run.opened)
            if self._held:
                return
            self.run.wait()
            self.run = None
        print(self._unshown, file=self.stream, flush=True)
        self._unshown = None
        self._last_line = time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
