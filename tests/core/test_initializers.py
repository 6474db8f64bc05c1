"""Initializers: every one has the right shape and is reproducible; named schemes have their spread."""

import numpy as np
import pytest

from nnexp.core.initializers import INITIALIZERS

FAN_IN, FAN_OUT = 400, 100  # unequal, so a scheme using the wrong fan is caught

STD = {
    "glorot_uniform": np.sqrt(6 / (FAN_IN + FAN_OUT)) / np.sqrt(3),
    "glorot_normal": np.sqrt(2 / (FAN_IN + FAN_OUT)),
    "he_normal": np.sqrt(2 / FAN_IN),
    "he_uniform": np.sqrt(6 / FAN_IN) / np.sqrt(3),
    "lecun_normal": np.sqrt(1 / FAN_IN),
    "normal_fan_out": 1 / np.sqrt(FAN_OUT),
    "standard_normal": 1.0,
}
UNIFORM_LIMIT = {
    "glorot_uniform": np.sqrt(6 / (FAN_IN + FAN_OUT)),
    "he_uniform": np.sqrt(6 / FAN_IN),
}


@pytest.mark.parametrize("name", INITIALIZERS.names())
def test_initializer_returns_the_requested_shape(name: str, rng: np.random.Generator) -> None:
    weights = INITIALIZERS.build({"name": name})((3, 5), rng)
    assert weights.shape == (3, 5)
    assert np.all(np.isfinite(weights))


@pytest.mark.parametrize("name", INITIALIZERS.names())
def test_initializer_is_deterministic_given_the_seed(name: str) -> None:
    make = INITIALIZERS.build({"name": name})
    np.testing.assert_array_equal(make((4, 6), np.random.default_rng(11)), make((4, 6), np.random.default_rng(11)))


@pytest.mark.parametrize("name", sorted(STD))
def test_initializer_depends_on_the_seed(name: str) -> None:
    make = INITIALIZERS.build({"name": name})
    assert not np.array_equal(make((4, 6), np.random.default_rng(11)), make((4, 6), np.random.default_rng(12)))


@pytest.mark.parametrize("name", sorted(STD))
def test_initializer_has_the_documented_spread(name: str, rng: np.random.Generator) -> None:
    weights = INITIALIZERS.build({"name": name})((FAN_IN, FAN_OUT), rng)
    assert weights.std() == pytest.approx(STD[name], rel=0.05)
    assert abs(weights.mean()) < 0.05 * STD[name]


@pytest.mark.parametrize("name", sorted(UNIFORM_LIMIT))
def test_uniform_initializer_stays_within_its_limit(name: str, rng: np.random.Generator) -> None:
    weights = INITIALIZERS.build({"name": name})((FAN_IN, FAN_OUT), rng)
    limit = UNIFORM_LIMIT[name]
    assert np.abs(weights).max() <= limit
    assert np.abs(weights).max() > 0.99 * limit  # and fills it


def test_zeros_is_all_zeros(rng: np.random.Generator) -> None:
    np.testing.assert_array_equal(INITIALIZERS.build({"name": "zeros"})((3, 4), rng), np.zeros((3, 4)))
