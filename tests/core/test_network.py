"""Sequential: parameter keys, save/load, dtype discipline, and one hand-worked SGD step."""

import numpy as np
import pytest

from nnexp.core.activations import ACTIVATIONS, Sigmoid, Tanh
from nnexp.core.layers import Bias, Dense
from nnexp.core.losses import LOSSES
from nnexp.core.network import Sequential
from nnexp.core.optimizers import OPTIMIZERS, SGD


def small_network(rng: np.random.Generator, dtype: type = np.float64) -> Sequential:
    return Sequential(
        [
            Dense(3, 4, rng, dtype=dtype),
            Tanh(),
            Bias(4, dtype=dtype),
            Dense(4, 2, rng, use_bias=False, dtype=dtype),
        ]
    )


def test_parameter_keys_name_layer_kind_index_and_parameter(rng: np.random.Generator) -> None:
    network = small_network(rng)
    assert [key for key, _, _ in network.parameters()] == [
        "dense0.weight",
        "dense0.bias",
        "bias0.bias",
        "dense1.weight",
    ]
    assert network.layer_names == ["dense0", "tanh0", "bias0", "dense1"]


def test_parameters_yield_the_layers_own_arrays(rng: np.random.Generator) -> None:
    network = small_network(rng)
    triples = list(network.parameters())
    assert triples[0][1] is network.layers[0].params["weight"]
    assert triples[0][2] is network.layers[0].grads["weight"]
    assert triples[3][1] is network.layers[3].params["weight"]


def test_n_parameters_and_dtype(rng: np.random.Generator) -> None:
    network = small_network(rng, np.float32)
    assert network.n_parameters == 3 * 4 + 4 + 4 + 4 * 2
    assert network.dtype == np.float32


def test_forward_and_backward_shapes(rng: np.random.Generator) -> None:
    network = small_network(rng)
    out = network.forward(rng.standard_normal((5, 3)))
    assert out.shape == (5, 2)
    network.backward(np.ones_like(out))
    assert all(grad.shape == param.shape for _, param, grad in network.parameters())


def test_save_and_load_round_trip_through_npz(tmp_path, rng: np.random.Generator) -> None:
    source = small_network(rng)
    for _, param, _ in source.parameters():
        param[...] = rng.standard_normal(param.shape)
    path = tmp_path / "model.npz"
    source.save(path)

    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(source.state_dict())
        for key, param in source.state_dict().items():
            np.testing.assert_array_equal(data[key], param)

    fresh = small_network(np.random.default_rng(99))
    assert not np.array_equal(fresh.state_dict()["dense0.weight"], source.state_dict()["dense0.weight"])
    fresh.load(path)
    for key, param in source.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key], param)
    x = rng.standard_normal((4, 3))
    np.testing.assert_array_equal(fresh.forward(x), source.forward(x))


def test_load_keeps_the_networks_own_arrays(tmp_path, rng: np.random.Generator) -> None:
    source, target = small_network(rng), small_network(np.random.default_rng(1))
    weight = target.layers[0].params["weight"]
    source.save(tmp_path / "model.npz")
    target.load(tmp_path / "model.npz")
    assert target.layers[0].params["weight"] is weight  # loaded in place, so optimizer state keys stay valid


def test_save_leaves_only_the_target_and_replaces_an_existing_file(tmp_path, rng: np.random.Generator) -> None:
    path = tmp_path / "model.npz"
    small_network(np.random.default_rng(1)).save(path)
    network = small_network(rng)
    network.save(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["dense0.weight"], network.state_dict()["dense0.weight"])


def test_failed_save_keeps_the_previous_file(tmp_path, rng: np.random.Generator, monkeypatch) -> None:
    path = tmp_path / "model.npz"
    old = small_network(np.random.default_rng(1))
    old.save(path)

    def broken_savez(*args, **kwargs) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        small_network(rng).save(path)
    monkeypatch.undo()
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["dense0.weight"], old.state_dict()["dense0.weight"])


def test_failed_save_leaves_no_temporary_file(tmp_path, rng: np.random.Generator, monkeypatch) -> None:
    def broken_savez(*args, **kwargs) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        small_network(rng).save(tmp_path / "model.npz")
    assert list(tmp_path.iterdir()) == []


def test_load_state_dict_rejects_a_different_key_set(rng: np.random.Generator) -> None:
    network = small_network(rng)
    state = {key: param.copy() for key, param in network.state_dict().items()}
    missing = dict(state)
    del missing["bias0.bias"]
    with pytest.raises(ValueError, match=r"bias0\.bias"):
        network.load_state_dict(missing)
    with pytest.raises(ValueError, match="extra"):
        network.load_state_dict({**state, "extra.weight": np.zeros(1)})


def test_load_state_dict_rejects_a_different_shape(rng: np.random.Generator) -> None:
    network = small_network(rng)
    state = {key: param.copy() for key, param in network.state_dict().items()}
    state["dense1.weight"] = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"dense1\.weight.*\(4, 3\).*\(4, 2\)"):
        network.load_state_dict(state)


def test_rejected_state_leaves_the_network_unchanged(rng: np.random.Generator) -> None:
    network = small_network(rng)
    before = {key: param.copy() for key, param in network.state_dict().items()}
    state = {key: np.full_like(param, 7.0) for key, param in before.items()}
    state["dense1.weight"] = np.zeros((4, 3))
    with pytest.raises(ValueError):
        network.load_state_dict(state)
    for key, param in network.state_dict().items():
        np.testing.assert_array_equal(param, before[key])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name", LOSSES.names())
@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_training_step_keeps_the_dtype_everywhere(
    dtype: type, loss_name: str, activation: str, rng: np.random.Generator
) -> None:
    layers = [
        Dense(3, 4, rng, dtype=dtype),
        ACTIVATIONS.build({"name": activation}),
        Dense(4, 2, rng, dtype=dtype),
    ]
    network = Sequential(layers)
    loss = LOSSES.build({"name": loss_name})
    x = rng.standard_normal((5, 3)).astype(dtype)
    targets = loss.encode(rng.integers(2, size=5), 2, dtype)

    out = x
    for layer in layers:
        out = layer.forward(out)
        assert out.dtype == dtype, type(layer).__name__
    assert network.forward(x).dtype == dtype
    grad = loss.gradient(targets, out)
    assert grad.dtype == dtype
    for layer in reversed(layers):
        grad = layer.backward(grad)
        assert grad.dtype == dtype, type(layer).__name__
    for optimizer in [
        SGD(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        *(OPTIMIZERS.build({"name": name, "weight_decay": 1e-3}) for name in OPTIMIZERS.names()),
    ]:
        optimizer.step(network.packed_parameters())
        state = optimizer.state_dict()
        assert {value.dtype for key, value in state.items() if key != "iterations"} <= {np.dtype(dtype)}
    for key, param, param_grad in network.parameters():
        assert param.dtype == dtype, key
        assert param_grad.dtype == dtype, key


# The 2-2-1 sigmoid network, one sample, MSE, SGD with learning rate 0.5, worked by hand:
#   h = sigmoid(x @ W1 + b1) = (0.59326999, 0.59688438); o = sigmoid(h @ W2 + b2) = 0.75136507
#   loss = 0.5 (o - y)^2 = 0.27481108
#   delta_o = (o - y) o (1 - o) = 0.13849856; dW2 = h * delta_o; db2 = delta_o
#   delta_h = delta_o * W2 * h (1 - h) = (0.01336792, 0.01499608); dW1 = outer(x, delta_h); db1 = delta_h
#   each parameter then moves by -0.5 times its gradient.
X = np.array([[0.05, 0.10]])
Y = np.array([[0.01]])
W1 = np.array([[0.15, 0.25], [0.20, 0.30]])
B1 = np.array([0.35, 0.35])
W2 = np.array([[0.40], [0.45]])
B2 = np.array([0.60])
EXPECTED_LOSS = 0.2748110832
EXPECTED = {
    "dense0.weight": [[0.1496658020, 0.2496250981], [0.1993316040, 0.2992501962]],
    "dense0.bias": [0.3433160398, 0.3425019623],
    "dense1.weight": [[0.3589164797], [0.4086661861]],
    "dense1.bias": [0.5307507192],
}


def test_one_sgd_step_on_a_2_2_1_sigmoid_network_matches_hand_computation(rng: np.random.Generator) -> None:
    network = Sequential([Dense(2, 2, rng, dtype=np.float64), Sigmoid(), Dense(2, 1, rng, dtype=np.float64), Sigmoid()])
    network.layers[0].params["weight"][...] = W1
    network.layers[0].params["bias"][...] = B1
    network.layers[2].params["weight"][...] = W2
    network.layers[2].params["bias"][...] = B2
    mse = LOSSES.build({"name": "mse"})

    out = network.forward(X)
    assert mse.value(Y, out) == pytest.approx(EXPECTED_LOSS, rel=1e-9)
    network.backward(mse.gradient(Y, out))
    SGD(learning_rate=0.5).step(network.parameters())

    state = network.state_dict()
    assert sorted(state) == sorted(EXPECTED)
    for key, expected in EXPECTED.items():
        np.testing.assert_allclose(state[key], expected, rtol=1e-9, atol=0, err_msg=key)


def test_packed_parameters_alias_every_layer(rng: np.random.Generator) -> None:
    network = small_network(rng)
    packed = {kind: (params, grads) for kind, params, grads in network.packed_parameters()}
    assert set(packed) == {"weight", "bias"}
    assert packed["weight"][0].size + packed["bias"][0].size == network.n_parameters
    packed["weight"][0][...] = 7.0
    assert all((param == 7.0).all() for key, param, _ in network.parameters() if key.endswith(".weight"))
    network.backward(np.ones_like(network.forward(rng.standard_normal((5, 3)))))
    layer_grads = np.concatenate([grad.ravel() for key, _, grad in network.parameters() if key.endswith(".weight")])
    np.testing.assert_array_equal(packed["weight"][1], layer_grads)
