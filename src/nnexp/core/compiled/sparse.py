"""The first Dense layer's products when most inputs are zero, as MNIST's pixels are (81% of them).

A batch's product ``x @ w`` with BLAS does every multiply-add; these kernels do only those of the non-zero inputs,
which on MNIST is a fifth of them, and gather the batch's rows from the data in the same pass. The first layer is
the one that needs no input gradient, so its input is only ever read. Rows (forward) and the weight's rows
(gradient) are split over the cores; each sum runs over the inputs in increasing order, whatever the split, so
results do not depend on the number of threads. :class:`SparseFirstLayer` runs a network's passes with them, the
layers above the first by the NumPy reference's code.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from nnexp.core import Array
from nnexp.core.network import Sequential

JIT = {"cache": True, "error_model": "numpy", "parallel": True, "nogil": True}


@njit(**JIT)
def forward(
    x: np.ndarray,
    order: np.ndarray,
    start: int,
    rows: int,
    w: np.ndarray,
    bias: np.ndarray,
    out: np.ndarray,
    index: np.ndarray,
    value: np.ndarray,
    count: np.ndarray,
) -> None:
    """``out[:rows] = x[order[start:start + rows]] @ w + bias`` over the non-zero inputs only.

    Leaves each row's non-zero inputs in ``index[r, :count[r]]`` and ``value[r, :count[r]]`` for
    :func:`weight_gradient`. An empty ``bias`` adds nothing.
    """
    n_in, n_out = w.shape
    zero = out.dtype.type(0)
    for r in prange(rows):
        source = x[order[start + r]]
        found = 0
        for i in range(n_in):
            if source[i] != zero:
                index[r, found] = i
                value[r, found] = source[i]
                found += 1
        count[r] = found
        row = out[r]
        for j in range(n_out):
            row[j] = zero
        for k in range(found):
            coefficient = value[r, k]
            weights = w[index[r, k]]
            for j in range(n_out):
                row[j] += coefficient * weights[j]
        if bias.size:
            for j in range(n_out):
                row[j] += bias[j]


@njit(**JIT)
def weight_gradient(
    index: np.ndarray, value: np.ndarray, count: np.ndarray, rows: int, delta: np.ndarray, gradient: np.ndarray
) -> None:
    """``gradient = x.T @ delta[:rows]`` for the batch :func:`forward` last saw, over its non-zero inputs only."""
    n_in, n_out = gradient.shape
    zero = gradient.dtype.type(0)
    starts = np.zeros(n_in + 1, np.int64)
    for r in range(rows):
        for k in range(count[r]):
            starts[index[r, k] + 1] += 1
    for i in range(n_in):
        starts[i + 1] += starts[i]
    by_input_row = np.empty(starts[n_in], np.int64)
    by_input_value = np.empty(starts[n_in], gradient.dtype)
    filled = starts[:n_in].copy()
    for r in range(rows):
        for k in range(count[r]):
            i = index[r, k]
            by_input_row[filled[i]] = r
            by_input_value[filled[i]] = value[r, k]
            filled[i] += 1
    for i in prange(n_in):
        row = gradient[i]
        for j in range(n_out):
            row[j] = zero
        for p in range(starts[i], starts[i + 1]):
            coefficient = by_input_value[p]
            source = delta[by_input_row[p]]
            for j in range(n_out):
                row[j] += coefficient * source[j]


class SparseFirstLayer:
    """Forward and backward passes whose first Dense layer multiplies only its non-zero inputs; the other layers are
    the NumPy reference's."""

    def __init__(self, network: Sequential, size: int, workers: int) -> None:
        # Numba's threads otherwise number the machine's cores, whatever a launcher allowed this process.
        numba.set_num_threads(min(workers, numba.config.NUMBA_NUM_THREADS))
        self.network, self.size = network, size
        self.layer = network.layers[0]
        n_in = self.layer.params["weight"].shape[0]
        self.index = np.empty((size, n_in), np.int64)
        self.value = np.empty((size, n_in), self.layer.params["weight"].dtype)
        self.count = np.empty(size, np.int64)
        self.rows = 0
        bias = self.layer.params.get("bias")
        self.bias = bias if bias is not None else np.empty(0, self.value.dtype)

    def forward(self, x: Array, order: np.ndarray, start: int, stop: int) -> Array:
        """The network's output for the rows ``order[start:stop]`` of ``x``."""
        weight = self.layer.params["weight"]
        self.rows = stop - start
        out = self.layer.buffer("out", (self.rows, weight.shape[1]), weight.dtype)
        forward(x, order, start, self.rows, weight, self.bias, out, self.index, self.value, self.count)
        return self.network.forward_above_first(out)

    def backward(self, grad_out: Array) -> None:
        """Fill every layer's gradients for the batch :meth:`forward` last saw."""
        grad_out = self.network.backward_above_first(grad_out)
        grads = self.layer.grads
        weight_gradient(self.index, self.value, self.count, self.rows, grad_out, grads["weight"])
        if "bias" in grads:
            grad_out.sum(axis=0, out=grads["bias"])
