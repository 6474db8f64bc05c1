"""A user plugin: two concentric circles (scikit-learn's ``make_circles``). Use it as ``dataset=circles``."""

from __future__ import annotations

import numpy as np

from nnexp import DATASETS, Dataset, Splits, check_random_state, holdout_splits, require


@DATASETS.register("circles")
class Circles(Dataset):
    """A small circle inside a larger one; ``factor`` is the ratio of their radii."""

    def __init__(
        self,
        n_samples: int = 1000,
        noise: float = 0.1,
        factor: float = 0.5,
        test_size: float = 0.3,
        random_state: int | None = None,
    ) -> None:
        require(n_samples >= 10, "n_samples", "must be >= 10", n_samples)
        require(noise >= 0, "noise", "must be >= 0", noise)
        require(0 < factor < 1, "factor", "must be in (0, 1)", factor)
        require(0 < test_size < 1, "test_size", "must be in (0, 1)", test_size)
        check_random_state("random_state", random_state)
        self.n_samples = n_samples
        self.noise = noise
        self.factor = factor
        self.test_size = test_size
        self.random_state = random_state

    def load(self, rng: np.random.Generator) -> Splits:
        from sklearn.datasets import make_circles  # imported here so that start-up stays fast

        state = self.random_state if self.random_state is not None else int(rng.integers(2**31))
        x, y = make_circles(self.n_samples, noise=self.noise, factor=self.factor, random_state=state)
        return holdout_splits(x, y, self.test_size, 0.0, state, rng, class_names=("outer", "inner"))
