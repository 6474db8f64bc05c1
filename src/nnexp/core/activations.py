"""Element-wise activations (and softmax); each ``backward`` reuses the output cached by ``forward``."""

from __future__ import annotations

import numpy as np

from nnexp.core import Array
from nnexp.core.layers import Layer
from nnexp.registry import Registry


class Activation(Layer):
    """A layer with no parameters."""


ACTIVATIONS: Registry[Activation] = Registry("activation", Activation)


@ACTIVATIONS.register("identity")
class Identity(Activation):
    """Passes its input through; the output of a network trained on logits."""

    def forward(self, x: Array) -> Array:
        return x

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        return grad_out


@ACTIVATIONS.register("sigmoid")
class Sigmoid(Activation):
    """Logistic function."""

    def forward(self, x: Array) -> Array:
        # 0.5 (1 + tanh(x / 2)) equals 1 / (1 + exp(-x)) without overflow for large negative x.
        self._out = np.tanh(x * 0.5)
        self._out += 1.0
        self._out *= 0.5
        return self._out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        return grad_out * self._out * (1.0 - self._out)  # d sigmoid = s (1 - s), from the cached output


@ACTIVATIONS.register("tanh")
class Tanh(Activation):
    """Hyperbolic tangent."""

    def forward(self, x: Array) -> Array:
        self._out = np.tanh(x)
        return self._out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        return grad_out * (1.0 - self._out**2)  # d tanh = 1 - tanh^2, from the cached output


@ACTIVATIONS.register("relu")
class ReLU(Activation):
    """Rectified linear unit, ``max(x, 0)``."""

    def forward(self, x: Array) -> Array:
        self._out = np.maximum(x, 0.0)
        return self._out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        return grad_out * (self._out > 0)


@ACTIVATIONS.register("softmax")
class Softmax(Activation):
    """Softmax over the feature axis; pair a softmax output with ``mse``, never with ``cross_entropy``."""

    def forward(self, x: Array) -> Array:
        self._out = softmax(x)
        return self._out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        # Jacobian-vector product of softmax: s * (g - <g, s>), row by row.
        s = self._out
        return s * (grad_out - np.sum(grad_out * s, axis=1, keepdims=True))


def softmax(x: Array) -> Array:
    """Row-wise softmax, shifted by each row's maximum so ``exp`` cannot overflow."""
    shifted = x - x.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def log_softmax(x: Array) -> Array:
    """Row-wise log-softmax by the log-sum-exp shift."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
