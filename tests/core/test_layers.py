"""Dense and Bias layers: gradients against finite differences, shapes, parameter dicts."""

import numpy as np
import pytest

from nnexp.core.gradcheck import check_layer
from nnexp.core.layers import Bias, Dense


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
def test_dense_gradient_matches_finite_differences(use_bias: bool, rng: np.random.Generator) -> None:
    layer = Dense(3, 4, rng, use_bias=use_bias, dtype=np.float64)
    if use_bias:
        layer.params["bias"][...] = rng.standard_normal(4)  # a non-zero bias, so it matters in the check
    x = rng.standard_normal((5, 3))
    assert check_layer(layer, x, rng) < 1e-6


def test_bias_gradient_matches_finite_differences(rng: np.random.Generator) -> None:
    layer = Bias(4, dtype=np.float64)
    layer.params["bias"][...] = rng.standard_normal(4)
    assert check_layer(layer, rng.standard_normal((5, 4)), rng) < 1e-6


def test_dense_params_and_grads_have_equal_keys_and_shapes(rng: np.random.Generator) -> None:
    layer = Dense(3, 4, rng)
    assert list(layer.params) == ["weight", "bias"]
    assert layer.params.keys() == layer.grads.keys()
    assert layer.params["weight"].shape == (3, 4)
    assert layer.params["bias"].shape == (4,)
    for key in layer.params:
        assert layer.grads[key].shape == layer.params[key].shape


def test_dense_without_bias_has_only_a_weight(rng: np.random.Generator) -> None:
    layer = Dense(3, 4, rng, use_bias=False)
    assert list(layer.params) == ["weight"]
    assert list(layer.grads) == ["weight"]


def test_dense_forward_is_the_affine_map(rng: np.random.Generator) -> None:
    layer = Dense(2, 3, rng, dtype=np.float64)
    layer.params["weight"][...] = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    layer.params["bias"][...] = [0.5, -0.5, 1.0]
    out = layer.forward(np.array([[1.0, 1.0], [2.0, -1.0]]))
    np.testing.assert_allclose(out, [[5.5, 6.5, 10.0], [-1.5, -1.5, 1.0]])


def test_dense_backward_fills_grads_in_place(rng: np.random.Generator) -> None:
    layer = Dense(2, 3, rng, dtype=np.float64)
    weight_grad, bias_grad = layer.grads["weight"], layer.grads["bias"]
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    upstream = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 1.0]])
    layer.forward(x)
    grad_input = layer.backward(upstream)
    assert layer.grads["weight"] is weight_grad  # optimizers may hold references to these arrays
    assert layer.grads["bias"] is bias_grad
    np.testing.assert_allclose(weight_grad, x.T @ upstream)
    np.testing.assert_allclose(bias_grad, [1.5, 2.0, 0.0])
    np.testing.assert_allclose(grad_input, upstream @ layer.params["weight"].T)


def test_dense_uses_the_named_initializer(rng: np.random.Generator) -> None:
    layer = Dense(3, 4, rng, initializer="zeros")
    np.testing.assert_array_equal(layer.params["weight"], np.zeros((3, 4)))


def test_dense_weights_are_deterministic_given_the_generator() -> None:
    first = Dense(3, 4, np.random.default_rng(5)).params["weight"]
    second = Dense(3, 4, np.random.default_rng(5)).params["weight"]
    other = Dense(3, 4, np.random.default_rng(6)).params["weight"]
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_parameters_have_the_requested_dtype(dtype: type, rng: np.random.Generator) -> None:
    dense, bias = Dense(3, 4, rng, dtype=dtype), Bias(4, dtype=dtype)
    for layer in (dense, bias):
        for key in layer.params:
            assert layer.params[key].dtype == dtype
            assert layer.grads[key].dtype == dtype


def test_bias_forward_and_backward() -> None:
    layer = Bias(2, dtype=np.float64)
    layer.params["bias"][...] = [1.0, -1.0]
    np.testing.assert_allclose(layer.forward(np.array([[0.0, 0.0], [2.0, 3.0]])), [[1.0, -1.0], [3.0, 2.0]])
    upstream = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(layer.backward(upstream), upstream)
    np.testing.assert_allclose(layer.grads["bias"], [4.0, 6.0])


@pytest.mark.parametrize("n_samples", [1, 2])
def test_dense_gradient_for_one_sample_and_more(n_samples: int, rng: np.random.Generator) -> None:
    layer = Dense(4, 3, rng, dtype=np.float64)
    assert check_layer(layer, rng.standard_normal((n_samples, 4)), rng) < 1e-6
