"""Two interleaving half circles (scikit-learn's ``make_moons``)."""

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
        from sklearn.datasets import make_moons

        state = self.random_state if self.random_state is not None else int(rng.integers(2**31))
        x, y = make_moons(n_samples=self.n_samples, noise=self.noise, random_state=state)
        return holdout_splits(x, y, self.test_size, self.val_size, self.split_random_state, rng)
