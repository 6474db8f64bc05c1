"""Two interleaving half circles: scikit-learn's ``make_moons``, point for point, without importing scikit-learn
(most of a small run's start-up)."""

from __future__ import annotations

import numpy as np

from nnexp.datasets.base import (
    DATASETS,
    Dataset,
    Splits,
    check_fraction,
    check_holdout,
    check_random_state,
    holdout_splits,
)
from nnexp.errors import require


@DATASETS.register("moons")
class Moons(Dataset):
    """Two moons; the defaults reproduce the moons tutorial's 1400/600 split.

    ``random_state`` seeds the points and ``split_random_state`` the split; either ``null`` draws from the run's seed.
    """

    def __init__(
        self,
        n_samples: int = 2000,
        noise: float = 0.2,
        test_size: float = 0.3,
        val_size: float = 0.0,
        random_state: int | None = 100,
        split_random_state: int | None = 42,
    ) -> None:
        require(n_samples >= 10, "n_samples", "must be >= 10", n_samples)
        require(noise >= 0, "noise", "must be >= 0", noise)
        check_fraction("test_size", test_size, allow_zero=False)
        check_fraction("val_size", val_size, allow_zero=True)
        check_holdout(n_samples, test_size, val_size)
        check_random_state("random_state", random_state)
        check_random_state("split_random_state", split_random_state)
        self.n_samples = n_samples
        self.noise = noise
        self.test_size = test_size
        self.val_size = val_size
        self.random_state = random_state
        self.split_random_state = split_random_state

    def load(self, rng: np.random.Generator) -> Splits:
        state = self.random_state if self.random_state is not None else int(rng.integers(2**31))
        x, y = make_moons(self.n_samples, self.noise, state)
        return holdout_splits(x, y, self.test_size, self.val_size, self.split_random_state, rng)


def make_moons(n_samples: int, noise: float, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.datasets.make_moons(n_samples, noise=noise, random_state=random_state)``: the same draws from the
    same ``RandomState``, in the same order, so the same points."""
    n_out = n_samples // 2
    n_in = n_samples - n_out
    generator = np.random.RandomState(random_state)
    outer, inner = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    x = np.vstack([np.append(np.cos(outer), 1 - np.cos(inner)), np.append(np.sin(outer), 1 - np.sin(inner) - 0.5)]).T
    y = np.hstack([np.zeros(n_out, dtype=np.intp), np.ones(n_in, dtype=np.intp)])
    order = np.arange(n_samples)
    generator.shuffle(order)
    x, y = x[order], y[order]
    x += generator.normal(scale=noise, size=x.shape)
    return x, y
