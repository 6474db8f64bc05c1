"""Classification metrics on small literal examples."""

import math

import numpy as np

from nnexp.core.metrics import accuracy, confusion_matrix


def test_accuracy_is_the_fraction_of_matches() -> None:
    assert accuracy(np.array([0, 1, 2, 1]), np.array([0, 2, 2, 1])) == 0.75
    assert accuracy(np.array([1, 1]), np.array([1, 1])) == 1.0
    assert accuracy(np.array([0, 1]), np.array([1, 0])) == 0.0


def test_accuracy_of_nothing_is_nan() -> None:
    assert math.isnan(accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_confusion_matrix_has_true_rows_and_predicted_columns() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    expected = [
        [1, 1, 0],
        [0, 1, 0],
        [1, 0, 2],
    ]
    np.testing.assert_array_equal(confusion_matrix(labels, predicted, 3), expected)


def test_confusion_matrix_counts_unseen_classes_as_zero_rows_and_columns() -> None:
    matrix = confusion_matrix(np.array([0, 0]), np.array([0, 1]), 4)
    assert matrix.shape == (4, 4)
    assert matrix.sum() == 2
    assert matrix[0, 0] == 1
    assert matrix[0, 1] == 1


def test_confusion_matrix_is_right_for_narrow_label_dtypes() -> None:
    labels = np.array([20, 1], dtype=np.uint8)  # e.g. uint8 labels read from an IDX file with 26 classes
    matrix = confusion_matrix(labels, np.array([20, 1]), 26)
    assert matrix[20, 20] == 1
    assert matrix[1, 1] == 1
    assert matrix.sum() == 2
