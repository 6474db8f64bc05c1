"""Losses: gradients against finite differences (every registered one), batch means, reference values."""

import numpy as np
import pytest

from nnexp.core.gradcheck import check_loss
from nnexp.core.losses import LOSSES

N_SAMPLES, N_CLASSES = 6, 3


def batch(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One-hot targets from the loss's own encoding, and float64 network outputs (logits or any values)."""
    loss = LOSSES.build({"name": name})
    labels = rng.integers(N_CLASSES, size=N_SAMPLES)
    return loss.encode(labels, N_CLASSES, np.float64), rng.standard_normal((N_SAMPLES, N_CLASSES))


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_gradient_matches_finite_differences(name: str, rng: np.random.Generator) -> None:
    y_true, y_pred = batch(name, rng)
    assert check_loss(LOSSES.build({"name": name}), y_true, y_pred) < 1e-6


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_is_a_batch_mean(name: str, rng: np.random.Generator) -> None:
    loss = LOSSES.build({"name": name})
    y_true, y_pred = batch(name, rng)
    doubled_true, doubled_pred = np.concatenate([y_true, y_true]), np.concatenate([y_pred, y_pred])
    assert loss.value(doubled_true, doubled_pred) == pytest.approx(loss.value(y_true, y_pred), rel=1e-12)
    np.testing.assert_allclose(
        loss.gradient(doubled_true, doubled_pred)[:N_SAMPLES], loss.gradient(y_true, y_pred) / 2, rtol=1e-12
    )


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_does_not_modify_its_inputs(name: str, rng: np.random.Generator) -> None:
    loss = LOSSES.build({"name": name})
    y_true, y_pred = batch(name, rng)
    saved_true, saved_pred = y_true.copy(), y_pred.copy()
    loss.value(y_true, y_pred)
    loss.gradient(y_true, y_pred)
    np.testing.assert_array_equal(y_true, saved_true)
    np.testing.assert_array_equal(y_pred, saved_pred)


@pytest.mark.parametrize("name", LOSSES.names())
def test_encode_gives_one_hot_rows_of_the_requested_dtype(name: str) -> None:
    targets = LOSSES.build({"name": name}).encode(np.array([2, 0, 1, 2]), 4, np.float32)
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(targets, [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])


def test_mse_is_half_the_squared_error_summed_over_outputs_and_averaged_over_the_batch() -> None:
    mse = LOSSES.build({"name": "mse"})
    y_true = np.array([[1.0, 0.0], [0.0, 1.0]])
    y_pred = np.array([[0.5, 0.5], [1.0, 3.0]])
    # Sample 1: 0.5 * (0.25 + 0.25) = 0.25; sample 2: 0.5 * (1 + 4) = 2.5; mean 1.375.
    assert mse.value(y_true, y_pred) == pytest.approx(1.375)
    np.testing.assert_allclose(mse.gradient(y_true, y_pred), [[-0.25, 0.25], [0.5, 1.0]])


def test_cross_entropy_from_logits_matches_negative_log_softmax() -> None:
    ce = LOSSES.build({"name": "cross_entropy"})
    logits = np.array([[0.0, np.log(3.0)], [np.log(2.0), np.log(2.0)]])
    y_true = np.array([[0.0, 1.0], [1.0, 0.0]])
    # Probabilities of the true class: 3/4 and 1/2.
    assert ce.value(y_true, logits) == pytest.approx(-(np.log(0.75) + np.log(0.5)) / 2)
    np.testing.assert_allclose(ce.gradient(y_true, logits), [[0.125, -0.125], [-0.25, 0.25]])
    np.testing.assert_allclose(ce.probabilities(logits), [[0.25, 0.75], [0.5, 0.5]])


def test_cross_entropy_is_stable_for_large_logits() -> None:
    ce = LOSSES.build({"name": "cross_entropy"})
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value = ce.value(np.array([[1.0, 0.0]]), np.array([[1000.0, 0.0]]))
        wrong = ce.value(np.array([[0.0, 1.0]]), np.array([[1000.0, 0.0]]))
    assert value == pytest.approx(0.0, abs=1e-12)
    assert wrong == pytest.approx(1000.0)


def test_output_activation_contracts() -> None:
    assert LOSSES.build({"name": "cross_entropy"}).allowed_output_activations == ("identity",)
    assert LOSSES.build({"name": "cross_entropy"}).default_output_activation == "identity"
    assert LOSSES.build({"name": "mse"}).default_output_activation == "sigmoid"
    assert LOSSES.build({"name": "mse"}).allowed_output_activations is None


@pytest.mark.parametrize("name", LOSSES.names())
def test_value_and_gradient_agrees_with_value_and_gradient(name: str, rng: np.random.Generator) -> None:
    loss = LOSSES.build({"name": name})
    y_true = loss.encode(np.array([0, 2, 1, 2]), 3, np.float64)
    y_pred = rng.standard_normal((4, 3))
    value, grad = loss.value_and_gradient(y_true, y_pred.copy())
    assert value == pytest.approx(loss.value(y_true, y_pred), rel=1e-12)
    np.testing.assert_allclose(grad, loss.gradient(y_true, y_pred), rtol=1e-12)


def test_mse_targets_can_be_moved_off_zero_and_one() -> None:
    loss = LOSSES.build({"name": "mse", "target_low": 0.01, "target_high": 0.99})
    np.testing.assert_array_equal(
        loss.encode(np.array([2, 0]), 3, np.float64), [[0.01, 0.01, 0.99], [0.99, 0.01, 0.01]]
    )


def test_mse_targets_must_be_ordered() -> None:
    from nnexp.errors import ParameterError

    with pytest.raises(ParameterError, match=r"^loss\.target_high must be > target_low \(0\.5\), got 0\.5"):
        LOSSES.build({"name": "mse", "target_low": 0.5, "target_high": 0.5})


def test_a_loss_with_only_value_and_gradient_works_fused() -> None:
    from nnexp.core.losses import Loss

    class Absolute(Loss):
        def value(self, y_true, y_pred):
            return float(np.abs(y_pred - y_true).sum())

        def gradient(self, y_true, y_pred):
            return np.sign(y_pred - y_true)

    value, grad = Absolute().value_and_gradient(np.zeros((1, 2)), np.array([[1.0, -2.0]]))
    assert value == 3.0
    np.testing.assert_array_equal(grad, [[1.0, -1.0]])


def test_a_loss_with_neither_form_says_what_is_missing() -> None:
    from nnexp.core.losses import Loss

    class Empty(Loss):
        pass

    with pytest.raises(NotImplementedError, match="Empty must implement value_and_gradient, or value and gradient"):
        Empty().value(np.zeros((1, 2)), np.zeros((1, 2)))
