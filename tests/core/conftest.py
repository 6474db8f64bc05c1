"""Fixtures for the pure-NumPy core tests."""

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator per test: randomness is passed explicitly, never global."""
    return np.random.default_rng(0)
