"""Layers: ``forward`` caches what ``backward`` needs; parameters and gradients are dicts with equal keys.

Outputs and input gradients are written into arrays each layer keeps from one batch to the next: a fresh
128x512 float32 array costs about as much as the pass that fills it. So an array a layer returns is valid until
that layer's next call; copy it to keep it.
"""

from __future__ import annotations

import numpy as np

from nnexp.core import Array
from nnexp.core.initializers import initial_weight


class Layer:
    """A differentiable map from a batch of inputs to a batch of outputs."""

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self._buffers: dict[str, Array] = {}
        self._views: dict[str, Array] = {}

    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        """Fill ``self.grads`` and return the gradient with respect to the last ``forward`` input.

        ``input_grad=False`` lets a layer skip that last product when nobody needs it (the network's first layer).
        """
        raise NotImplementedError

    def buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        """An array of ``shape`` kept under ``name`` for the next batch: one of fewer rows reuses its first rows."""
        view = self._views.get(name)
        if view is not None and view.shape == shape and view.dtype == dtype:
            return view  # the common case, checked first: per-sample SGD asks for buffers a million times
        array = self._buffers.get(name)
        if array is None or array.shape[0] < shape[0] or array.shape[1:] != shape[1:] or array.dtype != dtype:
            array = self._buffers[name] = np.empty(shape, dtype)
        view = self._views[name] = array[: shape[0]]
        return view

    def _add_param(self, key: str, value: Array) -> None:
        self.params[key] = value
        self.grads[key] = np.zeros_like(value)


def product_dtype(a: Array, b: Array) -> np.dtype:
    """The dtype of a product of ``a`` and ``b``, without ``np.result_type``'s cost when they already agree."""
    return a.dtype if a.dtype == b.dtype else np.result_type(a, b)


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
        self._add_param("weight", initial_weight(initializer, (n_inputs, n_outputs), rng, dtype))
        if use_bias:
            self._add_param("bias", np.zeros(n_outputs, dtype=dtype))

    @property
    def _bias(self) -> Array | None:
        return self.params.get("bias")

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
        weight = self.params["weight"]
        out = np.dot(x, weight, out=self.buffer("out", (x.shape[0], weight.shape[1]), product_dtype(x, weight)))
        if self._bias is not None:
            out += self._bias
        return out

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        np.dot(self._x.T, grad_out, out=self.grads["weight"])  # np.dot: a third of np.matmul's cost for one row
        if self._bias is not None:
            if grad_out.shape[0] == 1:
                np.copyto(self.grads["bias"], grad_out[0])
            else:
                grad_out.sum(axis=0, out=self.grads["bias"])
        if not input_grad:
            return grad_out
        weight = self.params["weight"]
        return np.dot(grad_out, weight.T, out=self.buffer("grad_in", self._x.shape, product_dtype(grad_out, weight)))


class Bias(Layer):
    """Adds a learned per-feature offset, ``x + bias``: a diagonal layer with no mixing between features."""

    def __init__(self, n_features: int, dtype: type[np.floating] = np.float32) -> None:
        super().__init__()
        self._add_param("bias", np.zeros(n_features, dtype=dtype))

    def forward(self, x: Array) -> Array:
        bias = self.params["bias"]
        return np.add(x, bias, out=self.buffer("out", x.shape, np.result_type(x, bias)))

    def backward(self, grad_out: Array, input_grad: bool = True) -> Array:
        grad_out.sum(axis=0, out=self.grads["bias"])
        return grad_out
