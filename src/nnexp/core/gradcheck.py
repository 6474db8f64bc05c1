"""Central finite differences, to test every analytic gradient against the loss it differentiates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nnexp.core import Array
from nnexp.core.layers import Layer
from nnexp.core.losses import Loss
from nnexp.core.network import Sequential


def numerical_gradient(f: Callable[[], float], x: Array, eps: float = 1e-6) -> Array:
    """Gradient of ``f`` with respect to ``x`` by central differences, perturbing ``x`` in place."""
    grad = np.zeros_like(x, dtype=np.float64)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + eps
        upper = f()
        x[index] = saved - eps
        lower = f()
        x[index] = saved
        grad[index] = (upper - lower) / (2 * eps)
    return grad


def relative_error(analytic: Array, numeric: Array) -> float:
    """``max |a - n| / max(|a| + |n|)``: scale-free, and zero only when both agree everywhere."""
    scale = np.max(np.abs(analytic) + np.abs(numeric))
    return float(np.max(np.abs(analytic - numeric)) / scale) if scale > 0 else 0.0


def check_layer(layer: Layer, x: Array, rng: np.random.Generator) -> float:
    """Worst relative error of the input and parameter gradients of ``sum(upstream * layer(x))``."""
    upstream = rng.standard_normal(layer.forward(x).shape)

    def objective() -> float:
        return float(np.sum(upstream * layer.forward(x)))

    layer.forward(x)
    grad_input = layer.backward(upstream)
    errors = [relative_error(grad_input, numerical_gradient(objective, x))]
    analytic = {key: grad.copy() for key, grad in layer.grads.items()}
    errors += [relative_error(analytic[key], numerical_gradient(objective, p)) for key, p in layer.params.items()]
    return max(errors)


def check_loss(loss: Loss, y_true: Array, y_pred: Array) -> float:
    """Relative error of ``loss.gradient`` against finite differences of ``loss.value``."""
    return relative_error(loss.gradient(y_true, y_pred), numerical_gradient(lambda: loss.value(y_true, y_pred), y_pred))


def check_network(network: Sequential, loss: Loss, x: Array, y_true: Array) -> float:
    """Worst relative error over every parameter of ``loss(network(x))``."""

    def objective() -> float:
        return loss.value(y_true, network.forward(x))

    network.backward(loss.gradient(y_true, network.forward(x)))
    analytic = {key: grad.copy() for key, _, grad in network.parameters()}
    return max(
        relative_error(analytic[key], numerical_gradient(objective, param)) for key, param, _ in network.parameters()
    )
