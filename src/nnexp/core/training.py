"""The training loop: shuffled minibatches, per-epoch metrics, callbacks, and a state it can resume from.

About 350 lines: the loop, its callbacks' hooks and its resumable state are read together by anyone who changes one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnexp.core import Array
from nnexp.core.activations import ACTIVATIONS, Activation
from nnexp.core.engine import ENGINES, CompiledSteps, select
from nnexp.core.losses import LOSSES, Loss
from nnexp.core.metrics import accuracy
from nnexp.core.network import Sequential
from nnexp.core.optimizers import Optimizer
from nnexp.errors import TrainingError, require
from nnexp.registry import is_builtin

EVALUATION_BATCH = 4096
#: A compiled call trains this long at most, so that a stop request is honoured within about this time.
COMPILED_CALL_SECONDS = 0.1


@dataclass(frozen=True)
class Examples:
    """Inputs with their encoded targets and integer labels, row-aligned."""

    x: Array
    targets: Array
    labels: np.ndarray

    def __len__(self) -> int:
        return self.x.shape[0]


#: The metrics :meth:`Trainer.fit` records for every epoch (the validation ones with a validation split).
EPOCH_METRICS = ("train_loss", "train_accuracy", "epoch_seconds", "learning_rate", "val_loss", "val_accuracy")


@dataclass
class TrainingState:
    """Where training stands, so it can go on exactly where it stopped.

    ``epoch`` epochs are complete and ``batch`` batches of the next one; ``rng_state`` is the generator's state at
    the start of that next epoch, before its shuffle, so a resumed epoch draws the same order. ``loss_sum``,
    ``predicted`` and ``seconds`` hold the partial epoch's running loss, predicted labels and training time.
    """

    epoch: int = 0
    batch: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    rng_state: dict[str, Any] | None = None
    loss_sum: float = 0.0
    predicted: np.ndarray | None = None
    seconds: float = 0.0


class Stopped(KeyboardInterrupt):
    """Training stopped at a batch boundary because :meth:`Trainer.request_stop` was called (Ctrl-C, SIGTERM).

    ``state`` is where it stopped, ready for a checkpoint; ``exit_code`` is the conventional 128 + signal number.
    """

    def __init__(self, message: str, state: TrainingState, exit_code: int) -> None:
        super().__init__(message)
        self.state, self.exit_code = state, exit_code


class Callback:
    """Hooks the trainer calls; ``logs`` maps metric names to this epoch's values."""

    def on_train_begin(self, epochs: int, n_samples: int) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Called before each epoch (numbered from 1); a learning-rate schedule sets the optimizer's rate here."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Called after each epoch (numbered from 1) with its metrics."""

    def on_train_end(self, history: dict[str, list[float]]) -> None:
        """Called once after the last epoch, also when a callback stopped training early."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep for training to resume exactly: JSON values and NumPy arrays."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs, as
    Keras's callback does; the weights of the best epoch are restored at the end, also when training ran out of
    epochs first."""

    def __init__(
        self,
        trainer: Trainer,
        network: Sequential,
        monitor: str = "val_loss",
        maximize: bool = False,
        patience: int = 5,
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
    ) -> None:
        self.check(patience, min_delta)
        self.trainer, self.network = trainer, network
        self.monitor, self.maximize, self.patience, self.min_delta = monitor, maximize, patience, min_delta
        self.restore_best_weights = restore_best_weights
        self.best = -math.inf if maximize else math.inf
        self.best_epoch = 0
        self.wait = 0
        self.best_weights: dict[str, Array] = {}

    @staticmethod
    def check(patience: int | None, min_delta: float) -> None:
        """Raise :class:`ParameterError` for a value out of range; ``patience=None`` (no early stopping) is not."""
        require(patience is None or patience >= 1, "patience", "must be >= 1", patience)
        require(min_delta >= 0, "min_delta", "must be >= 0", min_delta)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise TrainingError(f"early stopping monitors {self.monitor}, which is not logged; have {sorted(logs)}")
        value = logs[self.monitor]
        improved = value > self.best + self.min_delta if self.maximize else value < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = {key: param.copy() for key, param in self.network.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.trainer.stop_training = True

    def on_train_end(self, history: dict[str, list[float]]) -> None:
        if self.best_weights:
            self.network.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
        state.update({f"best_weights.{key}": value for key, value in self.best_weights.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = float(state["best"]), int(state["best_epoch"]), int(state["wait"])
        prefix = "best_weights."
        best_weights = {key[len(prefix) :]: np.array(value) for key, value in state.items() if key.startswith(prefix)}
        own = self.network.state_dict()
        for key, value in best_weights.items():  # checked now: they are loaded only when training ends
            if key not in own or value.shape != own[key].shape:
                raise ValueError(f"early stopping's best_weights.{key} {value.shape} does not fit the network")
        self.best_weights = best_weights


def predict(network: Sequential, x: Array, batch_size: int = EVALUATION_BATCH) -> Array:
    """Network outputs for ``x``, computed in chunks to bound memory."""
    outputs = None
    for start in range(0, x.shape[0], batch_size):
        chunk = network.forward(x[start : start + batch_size])  # valid until the next call: copied out at once
        if outputs is None:
            outputs = np.empty((x.shape[0], *chunk.shape[1:]), chunk.dtype)
        outputs[start : start + chunk.shape[0]] = chunk
    return network.forward(x).copy() if outputs is None else outputs


def evaluate(network: Sequential, loss: Loss, data: Examples) -> tuple[float, float, np.ndarray]:
    """``(loss, accuracy, predicted labels)`` of ``network`` on ``data``."""
    outputs = predict(network, data.x)
    predicted = outputs.argmax(axis=1)
    return loss.value(data.targets, outputs), accuracy(data.labels, predicted), predicted


class Trainer:
    """Minibatch gradient descent: ``batch_size=1`` is per-sample SGD, ``None`` the full batch.

    A callback may set :attr:`stop_training` to end training after the current epoch (early stopping);
    :meth:`request_stop` ends it at the next batch boundary by raising :class:`Stopped`. ``engine`` is
    ``numpy`` (the layers' own code), ``compiled`` (kernels for the built-in MLP) or ``auto`` (compiled when
    every component has a kernel); see :mod:`nnexp.core.engine`.
    """

    def __init__(self, epochs: int, batch_size: int | None, shuffle: bool = True, engine: str = "numpy") -> None:
        require(engine in ENGINES, "engine", f"must be one of {', '.join(ENGINES)}", engine)
        require(epochs >= 1, "epochs", "must be >= 1", epochs)
        require(
            batch_size is None or batch_size >= 1,
            "batch_size",
            "must be >= 1 or null (full batch)",
            batch_size,
        )
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.stop_training = False
        self.state = TrainingState()
        self.engine = engine
        self._stop_request: tuple[str, int] | None = None
        self._selected: tuple[Sequential, Loss, Optimizer, CompiledSteps | None] | None = None
        self._call_batches = 1

    def select_engine(self, network: Sequential, loss: Loss, optimizer: Optimizer) -> str:
        """Choose the engine that trains ``network`` with ``loss`` and ``optimizer``; returns ``numpy`` or
        ``compiled``. :meth:`fit` calls it when nobody did; calling it first raises a config error sooner."""
        if self._selected is None or self._selected[:3] != (network, loss, optimizer):
            self._selected = (network, loss, optimizer, select(self.engine, network, loss, optimizer))
        return self.engine_used

    @property
    def engine_used(self) -> str:
        """The engine :meth:`select_engine` chose: ``numpy`` or ``compiled``."""
        return "numpy" if self._selected is None or self._selected[3] is None else "compiled"

    def request_stop(self, reason: str, exit_code: int) -> None:
        """Stop at the next batch boundary; safe to call from a signal handler."""
        self._stop_request = (reason, exit_code)

    def fit(
        self,
        network: Sequential,
        loss: Loss,
        optimizer: Optimizer,
        train: Examples,
        rng: np.random.Generator,
        validation: Examples | None = None,
        callbacks: Sequence[Callback] = (),
        resume: TrainingState | None = None,
    ) -> dict[str, list[float]]:
        """Train for ``self.epochs`` epochs and return each metric's per-epoch history.

        Besides losses and accuracies, the history holds ``learning_rate``: the optimizer's rate during each epoch.
        With ``resume`` (and the network, optimizer and callbacks restored to that moment), training goes on from
        there and gives the same result, bit for bit, as if it had never stopped.
        """
        self.state = state = resume or TrainingState()
        self.stop_training = False
        self.select_engine(network, loss, optimizer)
        for callback in callbacks:
            callback.on_train_begin(self.epochs, len(train))
        while state.epoch < self.epochs and not self.stop_training:
            epoch = state.epoch + 1
            if state.batch == 0:
                state.rng_state = rng.bit_generator.state
            else:
                rng.bit_generator.state = state.rng_state  # replay the interrupted epoch's shuffle
            for callback in callbacks:
                callback.on_epoch_begin(epoch)
            learning_rate = float(optimizer.learning_rate)  # read after the callbacks: a schedule may have set it
            # Overflow is not worth a warning per batch: a loss that stops being finite ends training, in one line.
            with np.errstate(over="ignore", invalid="ignore"):
                train_loss, train_accuracy = self._epoch(network, loss, optimizer, train, rng, epoch)
            logs = {
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "epoch_seconds": state.seconds,
                "learning_rate": learning_rate,
            }
            if validation is not None and len(validation):
                logs["val_loss"], logs["val_accuracy"], _ = evaluate(network, loss, validation)
            for key, value in logs.items():
                state.history.setdefault(key, []).append(value)
            state.epoch, state.batch, state.loss_sum, state.predicted, state.seconds = epoch, 0, 0.0, None, 0.0
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
        for callback in callbacks:
            callback.on_train_end(state.history)
        return state.history

    def batch_length(self, n_samples: int) -> int:
        """Samples per batch for a training set of ``n_samples``: all of them when ``batch_size`` is None."""
        return n_samples if self.batch_size is None else min(self.batch_size, n_samples)

    def _epoch(
        self,
        network: Sequential,
        loss: Loss,
        optimizer: Optimizer,
        train: Examples,
        rng: np.random.Generator,
        epoch: int,
    ) -> tuple[float, float]:
        """One pass over ``train``, from ``self.state.batch`` on; returns the mean loss and accuracy over it."""
        state = self.state
        n_samples = len(train)
        size = self.batch_length(n_samples)
        started = time.perf_counter() - state.seconds
        x, targets, labels = train.x, train.targets, train.labels
        order = rng.permutation(n_samples) if self.shuffle and size < n_samples else None
        if order is not None:
            # Each batch is gathered when its turn comes: a permuted copy of the inputs would double their memory.
            targets, labels = targets[order], labels[order]
        if state.predicted is None:
            state.predicted = np.empty(n_samples, dtype=np.intp)
        predicted = state.predicted
        compiled = self._selected[3] if self._selected else None
        if compiled is not None:
            self._compiled_epoch(compiled, x, targets, order, size, predicted, epoch, started)
            state.seconds = time.perf_counter() - started
            return state.loss_sum / n_samples, accuracy(labels, predicted)
        for batch, start in enumerate(range(state.batch * size, n_samples, size), start=state.batch + 1):
            self._stop_if_requested(epoch, started)
            stop = start + size
            outputs = network.forward(x[start:stop] if order is None else x[order[start:stop]])
            batch_loss, grad = loss.value_and_gradient(targets[start:stop], outputs)
            _check_loss(network, loss, batch_loss, epoch, batch)
            outputs.argmax(axis=1, out=predicted[start:stop])
            network.backward(grad)
            optimizer.step(network.packed_parameters())
            state.loss_sum += batch_loss * outputs.shape[0]
            state.batch = batch
        state.seconds = time.perf_counter() - started
        return state.loss_sum / n_samples, accuracy(labels, predicted)

    def _compiled_epoch(
        self,
        compiled: CompiledSteps,
        x: Array,
        targets: Array,
        order: np.ndarray | None,
        size: int,
        predicted: np.ndarray,
        epoch: int,
        started: float,
    ) -> None:
        """The rest of the epoch by the kernels, in calls of about :data:`COMPILED_CALL_SECONDS` each."""
        state = self.state
        while state.batch * size < len(x):
            self._stop_if_requested(epoch, started)
            called = time.perf_counter()
            count = self._call_batches
            done, state.loss_sum, batch_loss = compiled.run(
                x, targets, order, state.batch, count, size, predicted, state.loss_sum
            )
            state.batch += done
            _check_loss(compiled.network, compiled.loss, batch_loss, epoch, state.batch + 1)
            seconds = time.perf_counter() - called
            if done == count:  # a call cut short by the epoch's end says nothing about the pace
                self._call_batches = max(1, min(4 * count, int(count * COMPILED_CALL_SECONDS / max(seconds, 1e-6))))

    def _stop_if_requested(self, epoch: int, started: float) -> None:
        """Raise :class:`Stopped` if :meth:`request_stop` was called, with the state after the last batch."""
        if self._stop_request is None:
            return
        reason, exit_code = self._stop_request
        self._stop_request = None
        self.state.seconds = time.perf_counter() - started
        raise Stopped(f"{reason} in epoch {epoch}, after {self.state.batch} of its batches", self.state, exit_code)


def _check_loss(network: Sequential, loss: Loss, batch_loss: float, epoch: int, batch: int) -> None:
    """Raise :class:`TrainingError` if ``batch_loss``, the loss of ``batch`` (numbered from 1), is negative, which
    no loss is (nnexp's records of a run take losses as >= 0), or not finite: a learning rate too large, or one of
    the network's plugins."""
    if batch_loss < 0:
        raise TrainingError(
            f"{LOSSES.label(type(loss))} returned {batch_loss:.4g} at epoch {epoch}, batch {batch}; a loss must be >= 0"
        )
    if not math.isfinite(batch_loss):
        used = {type(layer): ACTIVATIONS for layer in network.layers if isinstance(layer, Activation)}
        used[type(loss)] = LOSSES
        plugins = [registry.label(cls) for cls, registry in used.items() if not is_builtin(cls)]
        suspects = f", or check the run's plugins: {', '.join(plugins)}" if plugins else ""
        raise TrainingError(
            f"loss became {'NaN' if math.isnan(batch_loss) else 'infinite'} at epoch {epoch}, batch {batch}; "
            f"try a smaller optimizer.learning_rate{suspects}"
        )
