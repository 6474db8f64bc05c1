"""Numba kernels for the built-in MLP: the same formulas as the NumPy reference, in the same order, compiled.

Imported only by :mod:`nnexp.core.engine` when a run asks for the compiled path: importing Numba costs about a
second. Each kernel works on the network's packed parameters (every weight in one flat array, every bias in
another; see :meth:`~nnexp.core.network.Sequential.packed_parameters`) and on the optimizer's own state arrays,
so checkpoints see no difference. Batches of a few rows multiply with loops, larger ones with BLAS's products
(Numba's ``np.dot``, through SciPy's BLAS), as the NumPy layers do. Constants are made in the arrays' dtype: a
float64 literal would turn float32 arithmetic into float64 and stop the loops from vectorising.
``error_model="numpy"`` lets loops that divide vectorise too (a division by zero gives inf or NaN, as in NumPy,
instead of raising).

Over 350 lines (about 450): every kernel sits beside the others it is composed with, as the NumPy reference does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from nnexp.core.compiled.codes import (
    ACTIVATION,
    BIAS_AT,
    DENSE,
    KIND,
    MSE,
    N_IN,
    N_OUT,
    RELU,
    RMSPROP,
    SGD,
    SIGMOID,
    SOFTMAX,
    TANH,
    WEIGHT_AT,
)

#: ``nogil``: a kernel call trains for up to a tenth of a second, during which the run's other threads (MLflow's
#: import and store, the plots) use the other core instead of waiting for Python's lock.
JIT = {"cache": True, "error_model": "numpy", "nogil": True}
#: From this many rows on, the input gradient ``delta @ w.T`` of the loops copies ``w`` transposed and combines its
#: rows, rather than taking one dot product per number: the copy pays for itself over the rows.
TRANSPOSE_ROWS = 4


@njit(**JIT, fastmath={"reassoc"})
def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)``, reassociated so that it vectorises into partial sums, as BLAS's dot products do."""
    total = a[0] * 0
    for k in range(a.size):
        total += a[k] * b[k]
    return total


@njit(**JIT)
def _activate(out: np.ndarray, rows: int, width: int, code: int) -> None:
    """Apply activation ``code`` to ``out[:rows, :width]`` in place, as the activation classes' ``forward``."""
    one = out.dtype.type(1)
    half = out.dtype.type(0.5)
    zero = out.dtype.type(0)
    if code == SIGMOID:
        for r in range(rows):
            for j in range(width):
                out[r, j] = (np.tanh(out[r, j] * half) + one) * half
    elif code == TANH:
        for r in range(rows):
            for j in range(width):
                out[r, j] = np.tanh(out[r, j])
    elif code == RELU:
        for r in range(rows):
            for j in range(width):
                out[r, j] = max(out[r, j], zero)
    elif code == SOFTMAX:
        for r in range(rows):
            top = out[r, 0]
            for j in range(1, width):
                top = max(top, out[r, j])
            total = zero
            for j in range(width):
                out[r, j] = np.exp(out[r, j] - top)
                total += out[r, j]
            for j in range(width):
                out[r, j] /= total


@njit(**JIT)
def _activation_backward(grad: np.ndarray, out: np.ndarray, rows: int, width: int, code: int) -> None:
    """Turn ``grad`` (with respect to an activation's output ``out``) into the gradient of its input, in place."""
    one = out.dtype.type(1)
    zero = out.dtype.type(0)
    if code == SIGMOID:
        for r in range(rows):
            for j in range(width):
                grad[r, j] = (one - out[r, j]) * out[r, j] * grad[r, j]
    elif code == TANH:
        for r in range(rows):
            for j in range(width):
                grad[r, j] = (one - out[r, j] * out[r, j]) * grad[r, j]
    elif code == RELU:
        for r in range(rows):
            for j in range(width):
                grad[r, j] = grad[r, j] * (one if out[r, j] > zero else zero)
    elif code == SOFTMAX:
        for r in range(rows):
            dot = zero
            for j in range(width):
                dot += grad[r, j] * out[r, j]
            for j in range(width):
                grad[r, j] = out[r, j] * (grad[r, j] - dot)


@njit(**JIT)
def _loss(out: np.ndarray, targets: np.ndarray, grad: np.ndarray, rows: int, width: int, code: int) -> float:
    """The batch-mean loss of ``out`` against ``targets`` (float64), its gradient written into ``grad``; as
    ``value_and_gradient`` of the loss classes."""
    zero = out.dtype.type(0)
    count = out.dtype.type(rows)
    total = zero
    if code == MSE:
        for r in range(rows):
            for j in range(width):
                diff = out[r, j] - targets[r, j]
                total += diff * diff
                grad[r, j] = diff / count if rows > 1 else diff
        return 0.5 * float(total) / rows
    for r in range(rows):
        top = out[r, 0]
        for j in range(1, width):
            top = max(top, out[r, j])
        norm = zero
        for j in range(width):
            norm += np.exp(out[r, j] - top)
        log_norm = np.log(norm)
        for j in range(width):
            log_probability = out[r, j] - top - log_norm
            total += targets[r, j] * log_probability
            grad[r, j] = (np.exp(log_probability) - targets[r, j]) / count
    return float(-total / count)


@njit(**JIT)
def _update(
    param: np.ndarray,
    grad: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    decay: bool,
    code: int,
    hyper: np.ndarray,
    hyper64: np.ndarray,
    iteration: int,
) -> None:
    """One optimizer step on a flat parameter array, one pass over it; as ``Optimizer.step`` with ``update``.

    ``hyper`` holds the rule's constants in the parameter's dtype: ``[learning_rate, momentum, nesterov,
    weight_decay]`` for SGD, ``[learning_rate, 1 - rho, epsilon, weight_decay]`` for RMSprop, ``[1 - beta_1,
    1 - beta_2, weight_decay]`` for Adam, whose ``hyper64`` holds ``[learning_rate, beta_1, beta_2, epsilon]`` for
    the bias corrections of step ``iteration``, computed in float64 as ``Adam.begin_step`` does.
    """
    zero = param.dtype.type(0)
    if code == SGD:
        rate, momentum, nesterov, weight_decay = hyper[0], hyper[1], hyper[2] != zero, hyper[3]
        for i in range(param.size):
            g = param[i] * weight_decay + grad[i] if decay else grad[i]
            step = g * rate
            if momentum != zero:
                first[i] = first[i] * momentum + step
                step = step + momentum * first[i] if nesterov else first[i]
            param[i] -= step
    elif code == RMSPROP:
        rate, one_minus_rho, epsilon, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3]
        for i in range(param.size):
            g = param[i] * weight_decay + grad[i] if decay else grad[i]
            first[i] += (g * g - first[i]) * one_minus_rho
            param[i] -= g / (np.sqrt(first[i]) + epsilon) * rate
    else:
        one_minus_beta_1, one_minus_beta_2, weight_decay = hyper[0], hyper[1], hyper[2]
        t = float(iteration)
        c1, c2 = 1 - hyper64[1] ** t, 1 - hyper64[2] ** t
        scale = param.dtype.type(hyper64[0] * math.sqrt(c2) / c1)
        epsilon = param.dtype.type(hyper64[3] * math.sqrt(c2))
        for i in range(param.size):
            g = param[i] * weight_decay + grad[i] if decay else grad[i]
            first[i] += (g - first[i]) * one_minus_beta_1
            second[i] += (g * g - second[i]) * one_minus_beta_2
            param[i] -= first[i] / (np.sqrt(second[i]) + epsilon) * scale


@njit(**JIT)
def update_parameters(
    weights: np.ndarray,
    weight_grads: np.ndarray,
    weight_first: np.ndarray,
    weight_second: np.ndarray,
    biases: np.ndarray,
    bias_grads: np.ndarray,
    bias_first: np.ndarray,
    bias_second: np.ndarray,
    code: int,
    hyper: np.ndarray,
    hyper64: np.ndarray,
    iteration: int,
) -> None:
    """One optimizer step on the packed weights (decayed) and biases (not decayed)."""
    _update(weights, weight_grads, weight_first, weight_second, True, code, hyper, hyper64, iteration)
    _update(biases, bias_grads, bias_first, bias_second, False, code, hyper, hyper64, iteration)


@njit(**JIT, inline="always")
def _combine(out: np.ndarray, coefficients: np.ndarray, matrix: np.ndarray) -> None:
    """``out = coefficients @ matrix``: eight of ``matrix``'s rows at a time, so that ``out`` is read and written
    once per eight of them rather than once per row (that, not the arithmetic, bounds the simple loop)."""
    zero = out.dtype.type(0)
    n, width = matrix.shape
    for j in range(width):
        out[j] = zero
    top = n - n % 8
    for k in range(0, top, 8):
        c0, c1, c2, c3 = coefficients[k], coefficients[k + 1], coefficients[k + 2], coefficients[k + 3]
        c4, c5, c6, c7 = coefficients[k + 4], coefficients[k + 5], coefficients[k + 6], coefficients[k + 7]
        m0, m1, m2, m3 = matrix[k], matrix[k + 1], matrix[k + 2], matrix[k + 3]
        m4, m5, m6, m7 = matrix[k + 4], matrix[k + 5], matrix[k + 6], matrix[k + 7]
        for j in range(width):  # along rows of matrix: contiguous, so the loop vectorises
            out[j] += ((c0 * m0[j] + c1 * m1[j]) + (c2 * m2[j] + c3 * m3[j])) + (
                (c4 * m4[j] + c5 * m5[j]) + (c6 * m6[j] + c7 * m7[j])
            )
    for k in range(top, n):
        value = coefficients[k]
        row = matrix[k]
        for j in range(width):
            out[j] += value * row[j]


@njit(**JIT, inline="always")
def _transpose(matrix: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``matrix.T`` copied into the start of ``scratch``, contiguous."""
    n, width = matrix.shape
    transposed = scratch[: n * width].reshape((width, n))
    for i in range(n):
        for j in range(width):
            transposed[j, i] = matrix[i, j]
    return transposed


@njit(**JIT, inline="always")
def _dense_forward(source: np.ndarray, w: np.ndarray, out: np.ndarray, blas: bool) -> None:
    """``out = source @ w``: BLAS's product, or loops that beat it on a few rows."""
    if blas:
        np.dot(source, w, out)
        return
    for r in range(source.shape[0]):
        _combine(out[r], source[r], w)


@njit(**JIT, inline="always")
def _dense_backward(
    source: np.ndarray,
    delta: np.ndarray,
    w: np.ndarray,
    gw: np.ndarray,
    delta_in: np.ndarray,
    input_grad: bool,
    blas: bool,
    scratch: np.ndarray,
) -> None:
    """``gw = source.T @ delta`` and, with ``input_grad``, ``delta_in = delta @ w.T``, as ``Dense.backward``;
    ``scratch`` holds at least ``w.size`` numbers."""
    if blas:
        np.dot(source.T, delta, gw)
        if input_grad:
            np.dot(delta, w.T, delta_in)
        return
    rows, n_in = source.shape[0], w.shape[0]
    columns = _transpose(source, scratch)  # each weight's row of the gradient combines a column of source
    for i in range(n_in):
        _combine(gw[i], columns[i], delta)
    if not input_grad:
        return
    if rows < TRANSPOSE_ROWS:
        for r in range(rows):
            for i in range(n_in):
                delta_in[r, i] = _dot(delta[r], w[i])
        return
    transposed = _transpose(w, scratch)
    for r in range(rows):
        _combine(delta_in[r], delta[r], transposed)


@njit(**JIT, inline="always")
def _sample_backward_sgd(
    source: np.ndarray, delta: np.ndarray, w: np.ndarray, delta_in: np.ndarray, input_grad: bool, rate: float
) -> None:
    """For one row: ``delta_in = delta @ w.T``, then plain SGD's ``w -= rate * (source.T @ delta)`` in one pass
    over ``w``, the gradient never stored; the same operations in the same order as :func:`_dense_backward` and
    :func:`_update`, so the same numbers."""
    if input_grad:  # from the weight before its update, as the reference's backward pass precedes its step
        for i in range(w.shape[0]):
            delta_in[0, i] = _dot(delta[0], w[i])
    for i in range(w.shape[0]):
        value_in = source[0, i]
        for j in range(w.shape[1]):
            w[i, j] -= (value_in * delta[0, j]) * rate


@njit(**JIT)
def train_batches(
    x: np.ndarray,
    targets: np.ndarray,
    order: np.ndarray,
    first_batch: int,
    n_batches: int,
    size: int,
    blas_rows: int,
    stages: np.ndarray,
    weights: np.ndarray,
    weight_grads: np.ndarray,
    weight_first: np.ndarray,
    weight_second: np.ndarray,
    biases: np.ndarray,
    bias_grads: np.ndarray,
    bias_first: np.ndarray,
    bias_second: np.ndarray,
    loss_code: int,
    optimizer_code: int,
    hyper: np.ndarray,
    hyper64: np.ndarray,
    iteration: int,
    predicted: np.ndarray,
    loss_sum: float,
) -> tuple[int, float, float]:
    """Train on up to ``n_batches`` batches of ``size`` rows from batch ``first_batch`` on, as ``Trainer._epoch``.

    Row ``k`` of the epoch is ``x[order[k]]`` with target ``targets[k]`` (already in the epoch's order). Each
    batch's output is a forward pass through ``stages`` (one row per Dense or Bias layer and the activation after
    it), its loss adds ``loss * rows`` to ``loss_sum`` and its predicted labels go to ``predicted``, then the
    backward pass fills the gradients and the optimizer takes step ``iteration + 1``, ``+ 2``, ...  Batches of at
    least ``blas_rows`` rows take BLAS's matrix products, smaller ones loops, as do the products of a layer with
    fewer inputs than that (a few rows of weights: BLAS's set-up is most of its time there). Returns ``(batches
    done, loss_sum, loss)``: a loss that is not finite ends the call before its batch's update.
    """
    n_samples = x.shape[0]
    n_stages = stages.shape[0]
    width = x.shape[1]
    for s in range(n_stages):
        width = max(width, stages[s, N_OUT])
    # values[s + 1] is stage s's output after its activation, values[0] the gathered batch, grads[s] the loss's
    # gradient with respect to values[s]: each a contiguous (size, units) array, as BLAS wants it, made once per
    # call, so that a batch takes its first rows at the cost of a slice.
    flat = np.empty((2, n_stages + 1, size * width), x.dtype)
    values = [flat[0, 0, : size * x.shape[1]].reshape((size, x.shape[1]))]
    grads = [flat[1, 0, : size * x.shape[1]].reshape((size, x.shape[1]))]
    for s in range(n_stages):
        values.append(flat[0, s + 1, : size * stages[s, N_OUT]].reshape((size, stages[s, N_OUT])))
        grads.append(flat[1, s + 1, : size * stages[s, N_OUT]].reshape((size, stages[s, N_OUT])))
    # Each Dense stage's weight and gradient as (n_in, n_out) views, also made once per call (a Bias stage's are
    # empty): a reshape costs a call into Numba's runtime.
    kernel_weights, kernel_grads = [weights[:0].reshape((0, 0))], [weight_grads[:0].reshape((0, 0))]
    for s in range(n_stages):
        at, n_in, n_out = stages[s, WEIGHT_AT], stages[s, N_IN], stages[s, N_OUT]
        if stages[s, KIND] == DENSE:
            kernel_weights.append(weights[at : at + n_in * n_out].reshape((n_in, n_out)))
            kernel_grads.append(weight_grads[at : at + n_in * n_out].reshape((n_in, n_out)))
        else:
            kernel_weights.append(kernel_weights[0])
            kernel_grads.append(kernel_grads[0])
    n_classes = stages[n_stages - 1, N_OUT]
    largest = size * width
    for s in range(n_stages):
        largest = max(largest, stages[s, N_IN] * stages[s, N_OUT])
    scratch = np.empty(largest, x.dtype)
    zero = x.dtype.type(0)
    # Per-sample plain SGD (no momentum, no weight decay) updates each weight as its gradient is made: one pass
    # over the weights instead of three (the gradient written, read, the weight updated); their gradient array is
    # left as it was.
    plain_sgd = optimizer_code == SGD and hyper[1] == zero and hyper[3] == zero
    done = 0
    for batch in range(first_batch, first_batch + n_batches):
        start = batch * size
        if start >= n_samples:
            break
        rows = min(size, n_samples - start)
        blas = rows >= blas_rows
        fused = plain_sgd and rows == 1
        gathered = values[0]
        for r in range(rows):
            gathered[r] = x[order[start + r]]
        for s in range(n_stages):
            n_in, n_out = stages[s, N_IN], stages[s, N_OUT]
            source, out = values[s][:rows], values[s + 1][:rows]
            b = stages[s, BIAS_AT]
            if stages[s, KIND] == DENSE:
                _dense_forward(source, kernel_weights[s + 1], out, blas and n_in >= blas_rows)
                if b >= 0:
                    for r in range(rows):
                        for j in range(n_out):
                            out[r, j] += biases[b + j]
            else:
                for r in range(rows):
                    for j in range(n_out):
                        out[r, j] = source[r, j] + biases[b + j]
            _activate(out, rows, n_out, stages[s, ACTIVATION])
        final = values[n_stages][:rows]
        value = _loss(final, targets[start : start + rows], grads[n_stages][:rows], rows, n_classes, loss_code)
        if not math.isfinite(value):
            return done, loss_sum, value
        for r in range(rows):
            best = 0
            for j in range(1, n_classes):
                if final[r, j] > final[r, best]:
                    best = j
            predicted[start + r] = best
        for s in range(n_stages - 1, -1, -1):
            n_in, n_out = stages[s, N_IN], stages[s, N_OUT]
            delta = grads[s + 1][:rows]
            b = stages[s, BIAS_AT]
            _activation_backward(delta, values[s + 1][:rows], rows, n_out, stages[s, ACTIVATION])
            if b >= 0:
                for j in range(n_out):
                    bias_grads[b + j] = delta[0, j]
                for r in range(1, rows):
                    for j in range(n_out):
                        bias_grads[b + j] += delta[r, j]
            if stages[s, KIND] == DENSE and fused:
                _sample_backward_sgd(
                    values[s][:rows],
                    delta,
                    kernel_weights[s + 1],
                    grads[s][:rows],
                    s > 0,
                    hyper[0],
                )
            elif stages[s, KIND] == DENSE:
                _dense_backward(
                    values[s][:rows],
                    delta,
                    kernel_weights[s + 1],
                    kernel_grads[s + 1],
                    grads[s][:rows],
                    s > 0,
                    blas and n_in >= blas_rows,
                    scratch,
                )
            elif s > 0:  # a Bias stage passes its gradient through unchanged
                grads[s][:rows] = delta
        iteration += 1
        if not fused:
            _update(weights, weight_grads, weight_first, weight_second, True, optimizer_code, hyper, hyper64, iteration)
        _update(biases, bias_grads, bias_first, bias_second, False, optimizer_code, hyper, hyper64, iteration)
        loss_sum += value * rows
        done += 1
    return done, loss_sum, 0.0
