"""Optimizers: every registered one descends a quadratic bowl; SGD's rules checked by hand; validation."""

import numpy as np
import pytest

from nnexp.core.optimizers import OPTIMIZERS, SGD
from nnexp.errors import ParameterError

CURVATURE = np.array([1.0, 10.0, 0.5])


def bowl(w: np.ndarray) -> float:
    return float(0.5 * np.sum(CURVATURE * w**2))


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_descends_a_quadratic_bowl(name: str) -> None:
    optimizer = OPTIMIZERS.build({"name": name, "learning_rate": 0.05})
    w = np.array([1.0, -1.0, 2.0])
    start = bowl(w)
    for _ in range(50):
        optimizer.step([("bowl.weight", w, CURVATURE * w)])
    assert np.all(np.isfinite(w))
    assert bowl(w) < 0.5 * start
    assert optimizer.iterations == 50


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_updates_parameters_in_place(name: str) -> None:
    w = np.array([1.0, 2.0])
    same = w
    OPTIMIZERS.build({"name": name}).step([("dense0.weight", w, np.array([1.0, 1.0]))])
    assert w is same
    assert np.all(w < [1.0, 2.0])


@pytest.mark.parametrize("name", OPTIMIZERS.names())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_keeps_the_parameter_dtype_in_every_buffer(name: str, dtype: type) -> None:
    fields = {"name": name, "weight_decay": 1e-3, **({"momentum": 0.9} if name == "sgd" else {})}
    optimizer = OPTIMIZERS.build(fields)
    param = np.array([1.0, 2.0], dtype=dtype)
    for _ in range(2):  # the second step uses any per-parameter state the first created
        optimizer.step([("dense0.weight", param, np.array([0.5, -1.0], dtype=dtype))])
    buffers = [*optimizer._arrays["dense0.weight"], optimizer._decayed["dense0.weight"]]
    assert len(buffers) == 2 + len(optimizer.state_slots)
    assert {buffer.dtype for buffer in buffers} == {np.dtype(dtype)}
    assert param.dtype == dtype


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_large_parameters_split_over_threads_get_the_same_update(name: str, monkeypatch) -> None:
    from nnexp.core import parallel

    rng = np.random.default_rng(0)
    size = 3 * parallel.MIN_PARALLEL_SIZE + 7
    start, grads = rng.standard_normal(size).astype(np.float32), rng.standard_normal((3, size)).astype(np.float32)
    results = []
    for workers in (1, 3):
        monkeypatch.setattr(parallel, "worker_count", lambda workers=workers: workers)
        optimizer, param = OPTIMIZERS.build({"name": name, "weight_decay": 1e-2}), start.copy()
        for grad in grads:
            optimizer.step([("dense0.weight", param, grad)])
        results.append(param)
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], start)


W0 = np.array([1.0, -2.0])
G1 = np.array([0.5, -1.0])
G2 = np.array([0.25, 0.5])


def two_steps(optimizer: SGD) -> tuple[np.ndarray, np.ndarray]:
    w = W0.copy()
    optimizer.step([("dense0.weight", w, G1)])
    after_one = w.copy()
    optimizer.step([("dense0.weight", w, G2)])
    return after_one, w


@pytest.mark.parametrize(
    ("momentum", "nesterov", "expected_one", "expected_two"),
    [
        # w1 = w0 - 0.1 g1; w2 = w1 - 0.1 g2.
        (0.0, False, [0.95, -1.9], [0.925, -1.95]),
        # v1 = 0.1 g1 = (0.05, -0.1); w1 = w0 - v1. v2 = 0.9 v1 + 0.1 g2 = (0.07, -0.04); w2 = w1 - v2.
        (0.9, False, [0.95, -1.9], [0.88, -1.86]),
        # w1 = w0 - (0.9 v1 + 0.1 g1) = w0 - (0.095, -0.19)
        # w2 = w1 - (0.9 v2 + 0.1 g2) = w1 - (0.088, 0.014)
        (0.9, True, [0.905, -1.81], [0.817, -1.824]),
    ],
    ids=["plain", "momentum", "nesterov"],
)
def test_sgd_two_steps_match_hand_derivation(
    momentum: float, nesterov: bool, expected_one: list[float], expected_two: list[float]
) -> None:
    after_one, after_two = two_steps(SGD(learning_rate=0.1, momentum=momentum, nesterov=nesterov))
    np.testing.assert_allclose(after_one, expected_one, rtol=1e-12)
    np.testing.assert_allclose(after_two, expected_two, rtol=1e-12)


def test_sgd_keeps_separate_velocity_per_key() -> None:
    optimizer = SGD(learning_rate=0.1, momentum=0.9)
    a, b = np.array([0.0]), np.array([0.0])
    optimizer.step([("dense0.weight", a, np.array([1.0])), ("dense1.weight", b, np.array([0.0]))])
    optimizer.step([("dense0.weight", a, np.array([0.0])), ("dense1.weight", b, np.array([0.0]))])
    np.testing.assert_allclose(a, [-0.19])  # -(0.1) then -(0.9 * 0.1)
    np.testing.assert_allclose(b, [0.0])


def test_weight_decay_applies_to_weights_only() -> None:
    optimizer = SGD(learning_rate=0.1, weight_decay=0.5)
    weight, bias = np.array([2.0, -4.0]), np.array([2.0, -4.0])
    weight_grad, bias_grad = np.zeros(2), np.zeros(2)
    optimizer.step([("dense0.weight", weight, weight_grad), ("dense0.bias", bias, bias_grad)])
    # update = 0.1 * (0 + 0.5 * w)
    np.testing.assert_allclose(weight, [1.9, -3.8])
    np.testing.assert_allclose(bias, [2.0, -4.0])
    np.testing.assert_array_equal(weight_grad, [0.0, 0.0])  # the layer's gradient buffer is left alone


def test_weight_decay_matches_only_the_last_key_component() -> None:
    optimizer = SGD(learning_rate=0.1, weight_decay=0.5)
    lookalike = np.array([2.0])
    optimizer.step([("weight0.bias", lookalike, np.zeros(1))])
    np.testing.assert_allclose(lookalike, [2.0])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"nesterov": True}, "nesterov"),
        ({"weight_decay": -1e-4}, "weight_decay"),
    ],
)
def test_sgd_rejects_invalid_values_naming_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ParameterError, match=rf"^optimizer\.{field} "):
        OPTIMIZERS.build({"name": "sgd", **fields})
    with pytest.raises(ParameterError, match=rf"^{field} "):
        SGD(**fields)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
@pytest.mark.parametrize("field", ["learning_rate", "weight_decay"])
def test_every_optimizer_rejects_negative_rate_and_decay(name: str, field: str) -> None:
    with pytest.raises(ParameterError, match=rf"optimizer\.{field}"):
        OPTIMIZERS.build({"name": name, field: -1.0})


def test_sgd_accepts_boundary_values() -> None:
    optimizer = SGD(learning_rate=1e-9, momentum=0.0, weight_decay=0.0)
    assert optimizer.momentum == 0.0
    assert SGD(momentum=0.99, nesterov=True).nesterov is True


def test_rmsprop_first_step_matches_hand_derivation() -> None:
    w, grad = np.array([1.0, 1.0]), np.array([2.0, -0.5])
    OPTIMIZERS.build({"name": "rmsprop", "learning_rate": 0.01, "rho": 0.9, "epsilon": 1e-7}).step(
        [("dense0.weight", w, grad)]
    )
    # mean square = 0.1 g^2, so the step is 0.01 * g / (sqrt(0.1) |g| + 1e-7) ~= 0.01 * sign(g) / sqrt(0.1).
    np.testing.assert_allclose(w, [1.0 - 0.0316227716, 1.0 + 0.0316227566], rtol=1e-8)


def test_adam_first_step_is_learning_rate_times_the_gradient_sign() -> None:
    w, grad = np.array([1.0, 1.0]), np.array([2.0, -0.5])
    OPTIMIZERS.build({"name": "adam", "learning_rate": 0.01, "epsilon": 1e-7}).step([("dense0.weight", w, grad)])
    # Bias correction makes m_hat = g and v_hat = g^2 after one step, so the step is 0.01 * g / (|g| + 1e-7).
    np.testing.assert_allclose(w, [1.0 - 0.0099999995, 1.0 + 0.0099999980], rtol=1e-9)


def rmsprop_reference(grads: list[np.ndarray], lr: float, rho: float, eps: float) -> np.ndarray:
    """The total change RMSprop's textbook rule makes over ``grads``."""
    mean_square, change = np.zeros_like(grads[0]), np.zeros_like(grads[0])
    for g in grads:
        mean_square = rho * mean_square + (1 - rho) * g**2
        change -= lr * g / (np.sqrt(mean_square) + eps)
    return change


def adam_reference(grads: list[np.ndarray], lr: float, beta_1: float, beta_2: float, eps: float) -> np.ndarray:
    """The total change Adam's textbook rule (Kingma and Ba, algorithm 1) makes over ``grads``."""
    m, v, change = np.zeros_like(grads[0]), np.zeros_like(grads[0]), np.zeros_like(grads[0])
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        change -= lr * (m / (1 - beta_1**t)) / (np.sqrt(v / (1 - beta_2**t)) + eps)
    return change


@pytest.mark.parametrize(
    ("config", "reference"),
    [
        ({"name": "rmsprop", "learning_rate": 0.01, "rho": 0.8, "epsilon": 1e-3}, rmsprop_reference),
        ({"name": "adam", "learning_rate": 0.01, "beta_1": 0.7, "beta_2": 0.9, "epsilon": 1e-3}, adam_reference),
    ],
)
def test_adaptive_optimizers_follow_the_textbook_rule_over_several_steps(config: dict, reference) -> None:
    grads = list(np.random.default_rng(4).standard_normal((6, 5)))
    w = np.zeros(5)
    optimizer = OPTIMIZERS.build(config)
    for grad in grads:
        optimizer.step([("dense0.weight", w, grad.copy())])
    hyper = {key: value for key, value in config.items() if key not in ("name", "learning_rate", "epsilon")}
    expected = reference(grads, config["learning_rate"], *hyper.values(), config["epsilon"])
    np.testing.assert_allclose(w, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("name", "fields", "field"),
    [
        ("rmsprop", {"rho": 1.0}, "rho"),
        ("rmsprop", {"epsilon": 0.0}, "epsilon"),
        ("adam", {"beta_1": 1.0}, "beta_1"),
        ("adam", {"beta_2": -0.1}, "beta_2"),
        ("adam", {"epsilon": -1e-8}, "epsilon"),
    ],
)
def test_adaptive_optimizers_reject_invalid_values_naming_the_field(name: str, fields: dict, field: str) -> None:
    with pytest.raises(ParameterError, match=rf"^optimizer\.{field} must"):
        OPTIMIZERS.build({"name": name, **fields})
