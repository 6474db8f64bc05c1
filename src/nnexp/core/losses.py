"""Losses: one interface, batch means, targets encoded by the loss itself."""

from __future__ import annotations

import math

import numpy as np

from nnexp.core import Array
from nnexp.core.activations import log_softmax, softmax
from nnexp.errors import require
from nnexp.registry import Registry


class Loss:
    """``value`` and ``gradient`` of a batch-mean loss; ``y_pred`` is the network's output."""

    #: Output activation a model uses when its config leaves it unset.
    default_output_activation: str = "identity"
    #: Output activations this loss accepts; ``None`` means any.
    allowed_output_activations: tuple[str, ...] | None = None

    def value(self, y_true: Array, y_pred: Array) -> float:
        return self.value_and_gradient(y_true, y_pred)[0]

    def gradient(self, y_true: Array, y_pred: Array) -> Array:
        """Gradient of :meth:`value` with respect to ``y_pred``, same shape as ``y_pred``."""
        return self.value_and_gradient(y_true, y_pred)[1]

    def value_and_gradient(self, y_true: Array, y_pred: Array) -> tuple[float, Array]:
        """Both at once, as the trainer needs them. A loss implements either this (sharing the work the two
        have in common) or both :meth:`value` and :meth:`gradient`."""
        if type(self).value is Loss.value or type(self).gradient is Loss.gradient:
            raise NotImplementedError(f"{type(self).__name__} must implement value_and_gradient, or value and gradient")
        return self.value(y_true, y_pred), self.gradient(y_true, y_pred)

    def encode(self, labels: np.ndarray, n_classes: int, dtype: type[np.floating]) -> Array:
        """Targets for integer class ``labels``: one-hot rows."""
        targets = np.zeros((labels.shape[0], n_classes), dtype=dtype)
        targets[np.arange(labels.shape[0]), labels] = 1
        return targets

    def probabilities(self, y_pred: Array) -> Array:
        """Class probabilities from the network's output."""
        return y_pred


LOSSES: Registry[Loss] = Registry("loss", Loss)


@LOSSES.register("mse")
class MeanSquaredError(Loss):
    """Half the squared error summed over outputs, averaged over the batch.

    The half and the sum follow the classic backprop convention (and scikit-learn's MLP), so the gradient is
    ``(y_pred - y_true) / n_samples`` and the tutorials' learning rates carry over unchanged. Targets are one-hot,
    or ``target_low``/``target_high`` in place of 0/1.
    """

    default_output_activation = "sigmoid"

    def __init__(self, target_low: float = 0.0, target_high: float = 1.0) -> None:
        require(math.isfinite(target_low), "target_low", "must be finite", target_low)
        require(target_low < target_high, "target_high", f"must be > target_low ({target_low})", target_high)
        self.target_low, self.target_high = target_low, target_high

    def encode(self, labels: np.ndarray, n_classes: int, dtype: type[np.floating]) -> Array:
        """One-hot rows scaled to ``target_low``/``target_high``: 0.01/0.99 keeps sigmoid outputs off saturation."""
        targets = np.full((labels.shape[0], n_classes), self.target_low, dtype=dtype)
        targets[np.arange(labels.shape[0]), labels] = self.target_high
        return targets

    def value_and_gradient(self, y_true: Array, y_pred: Array) -> tuple[float, Array]:
        diff = y_pred - y_true
        flat = diff.reshape(-1)
        n_samples = y_true.shape[0]
        value = 0.5 * float(np.dot(flat, flat)) / n_samples
        if n_samples > 1:
            diff /= n_samples
        return value, diff


@LOSSES.register("cross_entropy")
class CrossEntropy(Loss):
    """Categorical cross-entropy computed from logits, with softmax fused in.

    The network outputs logits, so the loss takes ``log_softmax`` (stable by the log-sum-exp shift) and its
    gradient with respect to the logits is simply ``(softmax(z) - y) / n_samples``.
    """

    allowed_output_activations = ("identity",)

    def value_and_gradient(self, y_true: Array, y_pred: Array) -> tuple[float, Array]:
        log_probabilities = log_softmax(y_pred)
        value = float(-np.einsum("ij,ij->", y_true, log_probabilities) / y_true.shape[0])
        grad = np.exp(log_probabilities, out=log_probabilities)
        grad -= y_true
        grad /= y_true.shape[0]
        return value, grad

    def probabilities(self, y_pred: Array) -> Array:
        return softmax(y_pred)
