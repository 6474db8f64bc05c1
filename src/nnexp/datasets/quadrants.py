"""The four-point 'which quadrant' toy: learn the quadrant of a point from its coordinates."""

from __future__ import annotations

import numpy as np

from nnexp.datasets.base import DATASETS, Dataset, Splits

QUADRANT_NAMES = ("I", "II", "III", "IV")


@DATASETS.register("quadrants")
class Quadrants(Dataset):
    """Four training points, one per quadrant, and four test points twice as far out.

    The training points are those of the tutorial's code, (2, 1), (-1, 1), (-1, -1), (1, -1); its text says (1, 1)
    for the first.
    """

    def load(self, rng: np.random.Generator) -> Splits:
        x_train = np.array([[2.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
        x_test = np.array([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
        labels = np.arange(4)
        return Splits(x_train, labels, x_test, labels.copy(), n_classes=4, class_names=QUADRANT_NAMES)
