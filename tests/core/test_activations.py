"""Activations: gradients against finite differences (every registered one), and reference values."""

import numpy as np
import pytest

from nnexp.core.activations import ACTIVATIONS, log_softmax, softmax
from nnexp.core.gradcheck import check_layer


def away_from_zero(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """float64 inputs with |x| in [0.1, 2]: clear of relu's kink at 0."""
    return rng.uniform(0.1, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_activation_gradient_matches_finite_differences(name: str, rng: np.random.Generator) -> None:
    act = ACTIVATIONS.build({"name": name})
    x = away_from_zero(rng, (5, 4))
    assert check_layer(act, x, rng) < 1e-6


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_activation_keeps_shape_and_has_no_parameters(name: str, rng: np.random.Generator) -> None:
    act = ACTIVATIONS.build({"name": name})
    x = away_from_zero(rng, (3, 5))
    assert act.forward(x).shape == (3, 5)
    assert act.backward(np.ones((3, 5))).shape == (3, 5)
    assert act.params == {}
    assert act.grads == {}


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("identity", lambda x: x),
        ("sigmoid", lambda x: 1.0 / (1.0 + np.exp(-x))),
        ("tanh", np.tanh),
        ("relu", lambda x: np.where(x > 0, x, 0.0)),
        ("softmax", lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)),
    ],
)
def test_activation_forward_matches_reference(name: str, reference, rng: np.random.Generator) -> None:
    x = rng.uniform(-3.0, 3.0, size=(4, 3))
    np.testing.assert_allclose(ACTIVATIONS.build({"name": name}).forward(x.copy()), reference(x), rtol=1e-12)


def test_relu_backward_masks_negative_inputs() -> None:
    relu = ACTIVATIONS.build({"name": "relu"})
    relu.forward(np.array([[-1.0, 2.0, -3.0, 4.0]]))
    np.testing.assert_array_equal(relu.backward(np.array([[5.0, 6.0, 7.0, 8.0]])), [[0.0, 6.0, 0.0, 8.0]])


def test_sigmoid_is_stable_for_extreme_inputs() -> None:
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = ACTIVATIONS.build({"name": "sigmoid"}).forward(np.array([[-1000.0, 0.0, 1000.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]], atol=1e-300)


def test_softmax_rows_sum_to_one_without_overflow() -> None:
    x = np.array([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = softmax(x)
    np.testing.assert_allclose(out.sum(axis=1), [1.0, 1.0])
    # Softmax is shift invariant: the first row equals softmax([0, 1, 2]).
    np.testing.assert_allclose(out[0], np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum())


def test_softmax_does_not_modify_its_input() -> None:
    x = np.array([[1.0, 2.0, 3.0]])
    softmax(x)
    np.testing.assert_array_equal(x, [[1.0, 2.0, 3.0]])


def test_log_softmax_equals_log_of_softmax_and_is_stable() -> None:
    x = np.array([[0.5, -1.0, 2.0], [800.0, 0.0, -800.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = log_softmax(x)
    np.testing.assert_allclose(out[0], np.log(softmax(x[:1]))[0], rtol=1e-12)
    np.testing.assert_allclose(out[1], [0.0, -800.0, -1600.0])
