"""The first Dense layer's products when most inputs are zero, as MNIST's pixels are (81% of them).

A batch's product ``x @ w`` with BLAS does every multiply-add; these kernels do only those of the non-zero inputs,
which on MNIST is a fifth of them, and gather the batch's rows from the data in the same pass. The first layer is
the one that needs no input gradient, so its input is only ever read. Rows (forward) and the weight's rows
(gradient) are split over the cores; each sum runs over the inputs in increasing order, in groups of eight,
whatever the split, so results do not depend on the number of threads. :class:`SparseFirstLayer` runs a network's
passes with them, the layers above the first by the NumPy reference's code.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
from numba import njit, prange
from threadpoolctl import ThreadpoolController

from nnexp.core import Array
from nnexp.core.network import Sequential

JIT = {"cache": True, "error_model": "numpy", "nogil": True}


@njit(**JIT, inline="always")
def _gathered_sum(out: np.ndarray, coefficients: np.ndarray, rows: np.ndarray, matrix: np.ndarray) -> None:
    """``out = coefficients @ matrix[rows]``: eight rows at a time, so that ``out`` is read and written once per
    eight of them rather than once per row (that, not the arithmetic, bounds the simple loop)."""
    zero = out.dtype.type(0)
    width = out.shape[0]
    for j in range(width):
        out[j] = zero
    n = coefficients.shape[0]
    top = n - n % 8
    for k in range(0, top, 8):
        c0, c1, c2, c3 = coefficients[k], coefficients[k + 1], coefficients[k + 2], coefficients[k + 3]
        c4, c5, c6, c7 = coefficients[k + 4], coefficients[k + 5], coefficients[k + 6], coefficients[k + 7]
        m0, m1, m2, m3 = matrix[rows[k]], matrix[rows[k + 1]], matrix[rows[k + 2]], matrix[rows[k + 3]]
        m4, m5, m6, m7 = matrix[rows[k + 4]], matrix[rows[k + 5]], matrix[rows[k + 6]], matrix[rows[k + 7]]
        for j in range(width):
            out[j] += ((c0 * m0[j] + c1 * m1[j]) + (c2 * m2[j] + c3 * m3[j])) + (
                (c4 * m4[j] + c5 * m5[j]) + (c6 * m6[j] + c7 * m7[j])
            )
    for k in range(top, n):
        value = coefficients[k]
        row = matrix[rows[k]]
        for j in range(width):
            out[j] += value * row[j]


@njit(**JIT, parallel=True)
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
        _gathered_sum(row, value[r, :found], index[r, :found], w)
        if bias.size:
            for j in range(n_out):
                row[j] += bias[j]


@njit(**JIT, parallel=True)
def weight_gradient(
    index: np.ndarray, value: np.ndarray, count: np.ndarray, rows: int, delta: np.ndarray, gradient: np.ndarray
) -> None:
    """``gradient = x.T @ delta[:rows]`` for the batch :func:`forward` last saw, over its non-zero inputs only."""
    n_in = gradient.shape[0]
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
        first, last = starts[i], starts[i + 1]
        _gathered_sum(gradient[i], by_input_value[first:last], by_input_row[first:last], delta)


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
        self._blas = ThreadpoolController()

    def blas_on_one_thread(self) -> contextlib.AbstractContextManager[object]:
        """BLAS limited to one thread for as long as the context lasts.

        With the first layer's products in Numba's threads, BLAS is left only the small products of the layers above
        it, too small to share; its own threads then only take turns with Numba's on the cores. A 784-512-10 MNIST
        epoch (Adam, batch 128, 2 cores) took 0.45-1.57 s in fresh processes with two BLAS threads, 0.40-0.50 s
        with one.
        """
        return self._blas.limit(limits=1, user_api="blas")

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
