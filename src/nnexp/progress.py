"""Terminal progress: a tqdm bar on a terminal, a few plain lines otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

from nnexp.core.training import Callback

PLAIN_LINES = 10


class Progress(Callback):
    """Shows epoch, loss, accuracy, samples per second and, once a schedule changes it, the learning rate."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label, self.stream = label, stream
        self._bar = None

    def on_train_begin(self, epochs: int, n_samples: int) -> None:
        self.epochs, self.n_samples = epochs, n_samples
        self._first_rate: float | None = None
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
        elif epoch % max(1, self.epochs // PLAIN_LINES) == 0 or epoch == self.epochs:
            details = " ".join(f"{key}={value}" for key, value in shown.items())
            print(f"{self.label} epoch {epoch}/{self.epochs} {details}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
