"""The four-point quadrant toy: exact points, labels and names."""

import numpy as np

from nnexp.datasets.base import DATASETS
from nnexp.datasets.quadrants import Quadrants


def test_quadrants_has_the_tutorials_points_and_labels() -> None:
    splits = Quadrants().load(np.random.default_rng(0))
    np.testing.assert_array_equal(splits.x_train, [[2, 1], [-1, 1], [-1, -1], [1, -1]])
    np.testing.assert_array_equal(splits.y_train, [0, 1, 2, 3])
    np.testing.assert_array_equal(splits.x_test, [[2, 2], [-2, 2], [-2, -2], [2, -2]])
    np.testing.assert_array_equal(splits.y_test, [0, 1, 2, 3])
    assert splits.n_classes == 4
    assert splits.n_features == 2
    assert splits.x_val is None
    assert splits.names() == ("I", "II", "III", "IV")


def test_each_label_is_the_quadrant_of_its_point() -> None:
    splits = Quadrants().load(np.random.default_rng(0))
    for x, y in ((splits.x_train, splits.y_train), (splits.x_test, splits.y_test)):
        quadrant = np.select(
            [(x[:, 0] > 0) & (x[:, 1] > 0), (x[:, 0] < 0) & (x[:, 1] > 0), (x[:, 0] < 0) & (x[:, 1] < 0)],
            [0, 1, 2],
            default=3,
        )
        np.testing.assert_array_equal(y, quadrant)


def test_quadrants_does_not_depend_on_the_generator() -> None:
    first = Quadrants().load(np.random.default_rng(0))
    second = DATASETS.build({"name": "quadrants"}).load(np.random.default_rng(99))
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.x_test, second.x_test)


def test_splits_do_not_share_label_arrays() -> None:
    splits = Quadrants().load(np.random.default_rng(0))
    assert not np.shares_memory(splits.y_train, splits.y_test)
