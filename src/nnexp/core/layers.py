"""Layers: ``forward`` caches what ``backward`` needs; parameters and gradients are dicts with equal keys."""

from __future__ import annotations

import numpy as np

from nnexp.core import Array
from nnexp.core.initializers import INITIALIZERS


class Layer:
    """A differentiable map from a batch of inputs to a batch of outputs."""

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}

    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        """Fill ``self.grads`` and return the gradient with respect to the last ``forward`` input.

        ``input_grad=False`` lets a layer skip that last product when nobody needs it (the network's first layer).
        """
        raise NotImplementedError

    def _add_param(self, key: str, value: Array) -> None:
        self.params[key] = value
        self.grads[key] = np.zeros_like(value)


class Dense(Layer):
    """Affine map ``x @ weight + bias``; ``weight`` has shape (n_inputs, n_outputs)."""

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        rng: np.random.Generator,
        initializer: str = "glorot_uniform",
        use_bias: bool = True,
        dtype: type[np.floating] = np.float32,
    ) -> None:
        super().__init__()
        make = INITIALIZERS.build({"name": initializer})
        self._add_param("weight", make((n_inputs, n_outputs), rng).astype(dtype, copy=False))
        if use_bias:
            self._add_param("bias", np.zeros(n_outputs, dtype=dtype))

    def forward(self, x: Array) -> Array:
        """Affine map.

        Parameters
        ----------
        x : (n_samples, n_inputs)

        Returns
        -------
        (n_samples, n_outputs)
        """
        self._x = x
        out = x @ self.params["weight"]
        if "bias" in self.params:
            out += self.params["bias"]
        return out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        if grad_out.shape[0] == 1:
            # For one sample the weight gradient is an outer product, which NumPy's matmul computes about three
            # times slower than a broadcast multiply; per-sample SGD spends most of its time here.
            np.multiply(self._x.T, grad_out, out=self.grads["weight"])
        else:
            np.matmul(self._x.T, grad_out, out=self.grads["weight"])
        if "bias" in self.params:
            grad_out.sum(axis=0, out=self.grads["bias"])
        return grad_out @ self.params["weight"].T if input_grad else grad_out


class Bias(Layer):
    """Adds a learned per-feature offset, ``x + bias``: a diagonal layer with no mixing between features."""

    def __init__(self, n_features: int, dtype: type[np.floating] = np.float32) -> None:
        super().__init__()
        self._add_param("bias", np.zeros(n_features, dtype=dtype))

    def forward(self, x: Array) -> Array:
        return x + self.params["bias"]

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        grad_out.sum(axis=0, out=self.grads["bias"])
        return grad_out
