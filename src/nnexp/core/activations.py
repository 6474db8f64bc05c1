"""Element-wise activations (and softmax); each ``backward`` reuses the output cached by ``forward``."""

from __future__ import annotations

import numpy as np

from nnexp.core import Array
from nnexp.core.layers import Layer
from nnexp.registry import Registry


class Activation(Layer):
    """A layer with no parameters."""

    def output(self, x: Array) -> Array:
        """The array ``forward`` writes into, shaped and typed like ``x``."""
        return self.buffer("out", x.shape, x.dtype)

    def input_grad(self, grad_out: Array) -> Array:
        """The array ``backward`` writes into, shaped and typed like ``grad_out``."""
        return self.buffer("grad_in", grad_out.shape, grad_out.dtype)


ACTIVATIONS: Registry[Activation] = Registry("activation", Activation, by_name_only=True)

# As 0-d float32 arrays these constants cost a ufunc half of what a Python float does (which NumPy converts on
# every call), and they never widen a float32 array.
HALF = np.array(0.5, np.float32)
ONE = np.array(1.0, np.float32)
ZERO = np.array(0.0, np.float32)


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
        self._out = out = np.multiply(x, HALF, out=self.output(x))
        np.tanh(out, out=out)
        np.add(out, ONE, out=out)
        np.multiply(out, HALF, out=out)
        return out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        grad = np.subtract(ONE, self._out, out=self.input_grad(grad_out))  # d sigmoid = s (1 - s), from the output
        grad *= self._out
        grad *= grad_out
        return grad


@ACTIVATIONS.register("tanh")
class Tanh(Activation):
    """Hyperbolic tangent."""

    def forward(self, x: Array) -> Array:
        self._out = np.tanh(x, out=self.output(x))
        return self._out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        grad = np.multiply(self._out, self._out, out=self.input_grad(grad_out))  # d tanh = 1 - tanh^2
        np.subtract(ONE, grad, out=grad)
        grad *= grad_out
        return grad


@ACTIVATIONS.register("relu")
class ReLU(Activation):
    """Rectified linear unit, ``max(x, 0)``."""

    def forward(self, x: Array) -> Array:
        self._out = np.maximum(x, ZERO, out=self.output(x))
        return self._out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        return np.multiply(grad_out, self._out > ZERO, out=self.input_grad(grad_out))


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
