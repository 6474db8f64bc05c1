"""Whole networks against finite differences (every registered model and loss), and the checker itself."""

import importlib
import pkgutil

import numpy as np
import pytest

import nnexp.models
from nnexp.core.activations import Tanh
from nnexp.core.gradcheck import check_layer, check_loss, check_network, numerical_gradient, relative_error
from nnexp.core.layers import Dense
from nnexp.core.losses import LOSSES, MeanSquaredError
from nnexp.core.network import Sequential
from nnexp.errors import ParameterError
from nnexp.models.base import MODELS

for _module in pkgutil.iter_modules(nnexp.models.__path__):  # register every built-in model
    importlib.import_module(f"nnexp.models.{_module.name}")

# Small configs for models whose defaults would make a finite-difference check slow; others use defaults.
SMALL_CONFIGS = {
    "mlp": [
        {"hidden_sizes": [3, 4], "activation": "tanh"},
        {"hidden_sizes": [3, 4], "activation": "sigmoid"},
        {"hidden_sizes": [3], "activation": "tanh", "output_activation": "softmax"},
        {"hidden_sizes": [], "input_activation": "tanh", "output_activation": "softmax"},
    ],
}


def build_network(name: str, config: dict, loss_name: str, rng: np.random.Generator) -> Sequential:
    model = MODELS.build({"name": name, **config})
    return model.build(3, 3, LOSSES.build({"name": loss_name}), rng, np.float64)


def accepts(name: str, config: dict, loss_name: str) -> bool:
    """Whether this model config builds with this loss (a softmax output does not with cross_entropy)."""
    try:
        build_network(name, config, loss_name, np.random.default_rng(0))
    except ParameterError:
        return False
    return True


MODEL_CASES = [
    pytest.param(name, config, loss_name, id=f"{name}{index}-{loss_name}")
    for name in MODELS.names()
    for index, config in enumerate(SMALL_CONFIGS.get(name, [{}]))
    for loss_name in LOSSES.names()
    if accepts(name, config, loss_name)
]


def test_every_model_and_every_loss_have_a_gradient_case() -> None:
    assert MODELS.names()
    assert {case.values[0] for case in MODEL_CASES} == set(MODELS.names())
    assert {case.values[2] for case in MODEL_CASES} == set(LOSSES.names())


@pytest.mark.parametrize(("name", "config", "loss_name"), MODEL_CASES)
def test_network_gradient_matches_finite_differences(
    name: str, config: dict, loss_name: str, rng: np.random.Generator
) -> None:
    network = build_network(name, config, loss_name, rng)
    for _, param, _ in network.parameters():
        param[...] = rng.normal(0.0, 0.8, size=param.shape)  # non-zero biases, so their gradients are checked
    loss = LOSSES.build({"name": loss_name})
    x = rng.standard_normal((4, 3))
    y_true = loss.encode(rng.integers(3, size=4), 3, np.float64)
    assert check_network(network, loss, x, y_true) < 1e-6


def test_numerical_gradient_of_a_cubic_restores_its_input() -> None:
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    saved = x.copy()
    grad = numerical_gradient(lambda: float(np.sum(x**3)), x)
    np.testing.assert_allclose(grad, 3 * saved**2, rtol=1e-8)
    np.testing.assert_array_equal(x, saved)


def test_relative_error_is_scale_free_and_zero_only_on_agreement() -> None:
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.array([1.0]), np.array([-1.0])) == pytest.approx(1.0)
    assert relative_error(np.array([1e-9, 0.0]), np.array([0.0, 0.0])) == pytest.approx(1.0)
    assert relative_error(np.array([1e6]), np.array([1e6 + 1.0])) == pytest.approx(1.0 / (2e6 + 1.0))


class DoubledTanh(Tanh):
    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return 2.0 * super().backward(grad_out)


class ForgetfulDense(Dense):
    """Never fills its bias gradient."""

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        np.matmul(self._x.T, grad_out, out=self.grads["weight"])
        return grad_out @ self.params["weight"].T


class SummedSquaredError(MeanSquaredError):
    """Gradient of the batch sum, not the batch mean that ``value`` returns."""

    def gradient(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        return y_pred - y_true


def test_check_layer_catches_a_wrong_input_gradient(rng: np.random.Generator) -> None:
    assert check_layer(DoubledTanh(), rng.standard_normal((4, 3)), rng) > 0.1


def test_check_loss_catches_a_sum_instead_of_a_mean(rng: np.random.Generator) -> None:
    y_true = np.eye(3)[[0, 1, 2, 0]]
    assert check_loss(SummedSquaredError(), y_true, rng.standard_normal((4, 3))) > 0.1


def test_check_network_catches_a_missing_parameter_gradient(rng: np.random.Generator) -> None:
    network = Sequential([ForgetfulDense(3, 2, rng, dtype=np.float64), Tanh()])
    loss = LOSSES.build({"name": "mse"})
    assert check_network(network, loss, rng.standard_normal((4, 3)), np.eye(2)[[0, 1, 1, 0]]) > 0.1
