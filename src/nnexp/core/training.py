"""The training loop: shuffled minibatches, per-epoch metrics, callbacks."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnexp.core import Array
from nnexp.core.losses import Loss
from nnexp.core.metrics import accuracy
from nnexp.core.network import Sequential
from nnexp.core.optimizers import Optimizer
from nnexp.errors import TrainingError, require

EVALUATION_BATCH = 4096


@dataclass(frozen=True)
class Examples:
    """Inputs with their encoded targets and integer labels, row-aligned."""

    x: Array
    targets: Array
    labels: np.ndarray

    def __len__(self) -> int:
        return self.x.shape[0]


class Callback:
    """Hooks the trainer calls; ``logs`` maps metric names to this epoch's values."""

    def on_train_begin(self, epochs: int, n_samples: int) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Called before each epoch (numbered from 1); a learning-rate schedule sets the optimizer's rate here."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Called after each epoch (numbered from 1) with its metrics."""


def predict(network: Sequential, x: Array, batch_size: int = EVALUATION_BATCH) -> Array:
    """Network outputs for ``x``, computed in chunks to bound memory."""
    return np.concatenate([network.forward(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def evaluate(network: Sequential, loss: Loss, data: Examples) -> tuple[float, float, np.ndarray]:
    """``(loss, accuracy, predicted labels)`` of ``network`` on ``data``."""
    outputs = predict(network, data.x)
    predicted = outputs.argmax(axis=1)
    return loss.value(data.targets, outputs), accuracy(data.labels, predicted), predicted


class Trainer:
    """Minibatch gradient descent: ``batch_size=1`` is per-sample SGD, ``None`` the full batch."""

    def __init__(self, epochs: int, batch_size: int | None, shuffle: bool = True) -> None:
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

    def fit(
        self,
        network: Sequential,
        loss: Loss,
        optimizer: Optimizer,
        train: Examples,
        rng: np.random.Generator,
        validation: Examples | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> dict[str, list[float]]:
        """Train for ``self.epochs`` epochs and return each metric's per-epoch history.

        Besides losses and accuracies, the history holds ``learning_rate``: the optimizer's rate during each epoch.
        """
        history: dict[str, list[float]] = {}
        for callback in callbacks:
            callback.on_train_begin(self.epochs, len(train))
        for epoch in range(1, self.epochs + 1):
            for callback in callbacks:
                callback.on_epoch_begin(epoch)
            learning_rate = float(optimizer.learning_rate)  # read after the callbacks: a schedule may have set it
            started = time.perf_counter()
            # Overflow is not worth a warning per batch: a loss that stops being finite ends training, in one line.
            with np.errstate(over="ignore", invalid="ignore"):
                train_loss, train_accuracy = self._epoch(network, loss, optimizer, train, rng, epoch)
            logs = {
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "epoch_seconds": time.perf_counter() - started,
                "learning_rate": learning_rate,
            }
            if validation is not None and len(validation):
                logs["val_loss"], logs["val_accuracy"], _ = evaluate(network, loss, validation)
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
        return history

    def _epoch(
        self,
        network: Sequential,
        loss: Loss,
        optimizer: Optimizer,
        train: Examples,
        rng: np.random.Generator,
        epoch: int,
    ) -> tuple[float, float]:
        """One pass over ``train``; returns the running mean loss and accuracy over its batches."""
        n_samples = len(train)
        size = n_samples if self.batch_size is None else min(self.batch_size, n_samples)
        x, targets, labels = train.x, train.targets, train.labels
        if self.shuffle and size < n_samples:
            order = rng.permutation(n_samples)
            x, targets, labels = x[order], targets[order], labels[order]  # one permuted copy per epoch
        loss_sum = 0.0
        predicted = np.empty(n_samples, dtype=np.intp)
        for batch, start in enumerate(range(0, n_samples, size), start=1):
            stop = start + size
            outputs = network.forward(x[start:stop])
            batch_loss, grad = loss.value_and_gradient(targets[start:stop], outputs)
            if not math.isfinite(batch_loss):
                raise TrainingError(
                    f"loss became {batch_loss} at epoch {epoch}, batch {batch}; try a smaller learning rate"
                )
            outputs.argmax(axis=1, out=predicted[start:stop])
            network.backward(grad)
            optimizer.step(network.packed_parameters())
            loss_sum += batch_loss * outputs.shape[0]
        return loss_sum / n_samples, accuracy(labels, predicted)
