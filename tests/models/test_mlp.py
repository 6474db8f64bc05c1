"""The MLP plugin: layer structure, output activation derived from the loss, validation."""

import inspect

import numpy as np
import pytest

from nnexp.core.activations import ACTIVATIONS
from nnexp.core.layers import Dense
from nnexp.core.losses import LOSSES
from nnexp.errors import ParameterError
from nnexp.models.base import MODELS
from nnexp.models.mlp import MLP


def build(loss_name: str, dtype: type = np.float64, n_inputs: int = 3, n_outputs: int = 2, **fields):
    model = MODELS.build({"name": "mlp", **fields})
    return model.build(n_inputs, n_outputs, LOSSES.build({"name": loss_name}), np.random.default_rng(0), dtype)


def layer_kinds(network) -> list[str]:
    return [type(layer).__name__ for layer in network.layers]


def test_cross_entropy_gets_logits_from_a_last_dense_layer() -> None:
    network = build("cross_entropy", hidden_sizes=[5], activation="tanh")
    assert layer_kinds(network) == ["Dense", "Tanh", "Dense"]
    assert isinstance(network.layers[-1], Dense)


def test_mse_gets_a_sigmoid_output() -> None:
    network = build("mse", hidden_sizes=[5], activation="relu")
    assert layer_kinds(network) == ["Dense", "ReLU", "Dense", "Sigmoid"]
    out = network.forward(np.random.default_rng(1).standard_normal((4, 3)))
    assert np.all((out > 0) & (out < 1))


def test_explicit_output_activation_is_used_with_mse() -> None:
    network = build("mse", hidden_sizes=[5], output_activation="softmax")
    assert layer_kinds(network)[-1] == "Softmax"


def test_layer_sizes_follow_hidden_sizes_and_the_data() -> None:
    network = build("cross_entropy", n_inputs=7, n_outputs=4, hidden_sizes=[5, 6])
    assert [key for key, _, _ in network.parameters()] == [
        "dense0.weight",
        "dense0.bias",
        "dense1.weight",
        "dense1.bias",
        "dense2.weight",
        "dense2.bias",
    ]
    shapes = [param.shape for _, param, _ in network.parameters()]
    assert shapes == [(7, 5), (5,), (5, 6), (6,), (6, 4), (4,)]
    assert layer_kinds(network) == ["Dense", "ReLU", "Dense", "ReLU", "Dense"]


def test_empty_hidden_sizes_builds_a_single_dense_layer() -> None:
    network = build("cross_entropy", n_inputs=3, n_outputs=4, hidden_sizes=[])
    assert layer_kinds(network) == ["Dense"]
    assert network.layers[0].params["weight"].shape == (3, 4)


def test_input_activation_puts_a_per_feature_bias_and_the_activation_first() -> None:
    network = build("mse", hidden_sizes=[], input_activation="tanh", output_activation="softmax", n_inputs=4)
    assert layer_kinds(network) == ["Bias", "Tanh", "Dense", "Softmax"]
    assert network.layers[0].params["bias"].shape == (4,)


def test_unknown_input_activation_is_rejected() -> None:
    with pytest.raises(ParameterError, match=r"^model\.input_activation must be a registered activation"):
        MODELS.build({"name": "mlp", "input_activation": "tan"})


def test_use_bias_false_drops_every_bias() -> None:
    network = build("cross_entropy", hidden_sizes=[5], use_bias=False)
    assert [key for key, _, _ in network.parameters()] == ["dense0.weight", "dense1.weight"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_have_the_requested_dtype(dtype: type) -> None:
    network = build("mse", dtype=dtype, hidden_sizes=[5])
    assert all(param.dtype == dtype for _, param, _ in network.parameters())


def test_initializer_is_passed_to_every_dense_layer() -> None:
    network = build("cross_entropy", hidden_sizes=[5], initializer="zeros")
    assert all(not param.any() for _, param, _ in network.parameters())


def test_same_generator_seed_builds_the_same_network() -> None:
    first, second = build("mse", hidden_sizes=[5]), build("mse", hidden_sizes=[5])
    for (key, a, _), (_, b, _) in zip(first.parameters(), second.parameters(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_softmax_output_with_cross_entropy_is_rejected() -> None:
    model = MODELS.build({"name": "mlp", "output_activation": "softmax"})
    loss = LOSSES.build({"name": "cross_entropy"})
    expected = r"^model\.output_activation must be null or identity with CrossEntropy.*got 'softmax'"
    with pytest.raises(ParameterError, match=expected):
        model.check(loss)
    with pytest.raises(ParameterError, match=expected):
        model.build(3, 2, loss, np.random.default_rng(0), np.float64)


def test_identity_output_with_cross_entropy_is_accepted() -> None:
    network = build("cross_entropy", hidden_sizes=[5], output_activation="identity")
    assert layer_kinds(network) == ["Dense", "ReLU", "Dense"]


@pytest.mark.parametrize("hidden_sizes", [[5, 0], [0], [-3]])
def test_non_positive_hidden_sizes_are_rejected(hidden_sizes: list[int]) -> None:
    with pytest.raises(ParameterError, match=r"^model\.hidden_sizes must hold sizes >= 1"):
        MODELS.build({"name": "mlp", "hidden_sizes": hidden_sizes})


@pytest.mark.parametrize("field", ["activation", "output_activation"])
def test_unknown_activation_lists_the_available_ones(field: str) -> None:
    with pytest.raises(ParameterError, match=rf"^model\.{field} must be a registered activation") as info:
        MODELS.build({"name": "mlp", field: "swish"})
    message = str(info.value)
    assert "'swish'" in message
    assert all(name in message for name in ACTIVATIONS.names())


def test_unknown_initializer_is_rejected() -> None:
    with pytest.raises(ParameterError, match=r"^model\.initializer must be a registered initializer"):
        MODELS.build({"name": "mlp", "initializer": "ones"})


def test_mlp_is_registered_and_does_not_share_its_default_list() -> None:
    assert MODELS.get("mlp") is MLP
    default = list(inspect.signature(MLP).parameters["hidden_sizes"].default)
    first = MLP()
    first.hidden_sizes.append(9)
    assert MLP().hidden_sizes == default
