"""What every dataset's splits must be before a run builds anything: checked once, named by dataset."""

from __future__ import annotations

import numpy as np
import pytest

from nnexp.datasets.base import Dataset, Splits, check_finite, checked_splits, finite_at_a_glance
from nnexp.datasets.quadrants import Quadrants
from nnexp.errors import DataError


class Unregistered(Dataset):
    pass


def splits(**changes) -> Splits:
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    fields = {"x_train": x, "y_train": y, "x_test": x.copy(), "y_test": y.copy(), "n_classes": 2} | changes
    return Splits(**fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"x_train": np.array([[0.0, np.nan]] * 4)}, "train split: feature 1 of sample 0 is nan, not a finite number"),
        ({"x_test": np.array([[0.0, 1.0]] * 3 + [[np.inf, 0]])}, "test split: feature 0 of sample 3 is inf, not a"),
        ({"y_train": np.array([0, 1, 7, 1]), "class_names": ("a", "b")}, "labels must lie in [0, 2), got 0..7"),
        ({"n_classes": 8, "class_names": ("a", "b")}, "2 class names for n_classes=8"),
        ({"class_names": ("a\nb", "c")}, "class name 'a\\nb' must be a string without control characters"),
        ({"class_names": ("a", "b\u2028")}, "class name 'b\\u2028' must be a string without control characters"),
        ({"class_names": ("a", 3)}, "class name 3 must be a string without control characters"),
        # the run FINISHED with a model whose network.json nnexp predict refuses
        ({"class_names": ("a", "b" * 251)}, f"class name '{'b' * 40}…' must be at most 250 characters, found 251"),
        ({"class_names": ("a", "\n" * 900)}, "class name '" + "\\n" * 40 + "…' must be a string without control"),
        ({"y_test": np.array([0.0, 1.0, 0.0, 1.0])}, "test split: labels must be integers, got float64"),
        ({"y_train": np.array([0, 1, 0])}, "train split: expected x (n, features) and y (n,), got (4, 2) and (3,)"),
        ({"x_train": np.zeros(4)}, "train split: expected x (n, features) and y (n,), got (4,) and (4,)"),
        ({"x_train": np.array([["a", "b"]] * 4)}, "train split: features must be real numbers, got <U1"),
        ({"y_train": [0, 1, 0, 1]}, "train split: x and y must be NumPy arrays, got ndarray and list"),
        ({"x_test": np.zeros((0, 2)), "y_test": np.zeros(0, int)}, "test split is empty; every split needs at least"),
        # a traceback from the test split's forward pass, after training, and a FAILED run with a checkpoint
        ({"x_test": np.zeros((4, 3))}, "test split: 3 features per sample, but the train split has 2"),
        ({"x_val": np.zeros((2, 1)), "y_val": np.array([0, 1])}, "val split: 1 features per sample, but the train"),
        # the run FINISHED with a model that nnexp predict always refuses
        ({"class_names": ("a", "a")}, "class names must be different, one per class; 'a' is given more than once"),
        # finite in float64, inf in the float32 run: RuntimeWarnings, then "loss became NaN" blaming the rate
        (
            {"x_train": np.array([[0.0, 1.0]] * 3 + [[0.0, -1e300]])},
            "train split: feature 1 of sample 3 is -inf in trainer.dtype=float32 (-1e+300 before the cast), not a",
        ),
        ({"x_test": np.full((4, 2), 3.5e38)}, "test split: feature 0 of sample 0 is inf in trainer.dtype=float32"),
        # FINISHED with a loss of 0 and an accuracy of 1: one class is all a network could ever answer
        ({"n_classes": 1, "y_train": np.zeros(4, int), "y_test": np.zeros(4, int)}, "n_classes must be an integer >="),
        # tracebacks from the loss's one-hot targets and from the check of finite features
        ({"n_classes": 2.5}, "n_classes must be an integer >= 2, one per class to tell apart, got 2.5"),
        ({"n_classes": True}, "n_classes must be an integer >= 2, one per class to tell apart, got True"),
        ({"x_train": np.zeros((4, 0)), "x_test": np.zeros((4, 0))}, "train split: samples of no features"),
    ],
)
def test_splits_unfit_to_train_on_are_one_line_naming_the_dataset(changes, message):
    with pytest.raises(DataError) as caught:
        checked_splits(Quadrants(), splits(**changes), np.float32)
    assert str(caught.value).startswith("dataset quadrants: ") and message in str(caught.value), caught.value


def test_a_load_that_returns_no_splits_and_an_unregistered_class_are_named():
    with pytest.raises(DataError, match=r"^dataset Unregistered: load\(\) returned tuple, not Splits$"):
        checked_splits(Unregistered(), (np.zeros((2, 2)), np.zeros(2)))


def test_good_splits_pass_unchanged():
    good = splits(x_train=np.zeros((4, 2), np.uint8), class_names=("a", "b"))
    assert checked_splits(Quadrants(), good) is good


def test_features_float32_cannot_hold_are_fine_in_a_float64_run():
    huge = splits(x_train=np.full((4, 2), 1e300), x_test=np.full((4, 2), np.finfo(np.float32).max))
    assert checked_splits(Quadrants(), huge, np.float64) is huge
    checked_splits(Quadrants(), splits(x_test=np.full((4, 2), np.finfo(np.float32).max)), np.float32)


@pytest.mark.parametrize(
    ("x", "dtype", "finite"),
    [
        (np.array([[0.5, 1.0]], np.float32), np.float32, True),
        (np.array([[0.5, np.nan]], np.float32), np.float32, False),
        (np.array([[np.inf, -np.inf]]), np.float64, False),
        (np.array([[3e38, 3e38]], np.float32), np.float32, False),  # the sum overflows: the glance cannot tell
        (np.array([[1e300, 1.0]]), np.float32, False),  # finite, but not once cast to float32
        (np.array([[1e30, -1.0]]), np.float32, True),
    ],
)
def test_a_glance_at_the_data_vouches_only_for_values_finite_in_the_runs_dtype(x, dtype, finite):
    assert finite_at_a_glance(x, dtype) is finite


def test_finite_values_whose_sum_overflows_are_still_accepted():
    check_finite("train", np.full((4, 2), 3e38, np.float32), np.float32)
