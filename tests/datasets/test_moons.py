"""The moons dataset: the tutorial's split sizes, determinism, the tutorial's split, validation, range checks."""

import numpy as np
import pytest

from nnexp.datasets.base import DATASETS, holdout_splits
from nnexp.datasets.moons import Moons
from nnexp.errors import ParameterError


def rows(x: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(row) for row in x}


@pytest.fixture(scope="module")
def default_splits():
    return Moons().load(np.random.default_rng(0))


def test_defaults_give_the_tutorials_1400_600_split(default_splits) -> None:
    splits = default_splits
    assert splits.x_train.shape == (1400, 2)
    assert splits.y_train.shape == (1400,)
    assert splits.x_test.shape == (600, 2)
    assert splits.y_test.shape == (600,)
    assert splits.n_features == 2
    assert splits.n_classes == 2
    assert splits.x_val is None
    assert splits.y_val is None
    assert set(np.unique(splits.y_train)) == {0, 1}


def test_train_and_test_are_disjoint(default_splits) -> None:
    assert not rows(default_splits.x_train) & rows(default_splits.x_test)


def test_defaults_are_identical_whatever_the_run_generator(default_splits) -> None:
    other = Moons().load(np.random.default_rng(12345))
    np.testing.assert_array_equal(other.x_train, default_splits.x_train)
    np.testing.assert_array_equal(other.y_train, default_splits.y_train)
    np.testing.assert_array_equal(other.x_test, default_splits.x_test)
    np.testing.assert_array_equal(other.y_test, default_splits.y_test)


def test_split_is_the_tutorials_unstratified_split(default_splits) -> None:
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split

    x, y = make_moons(n_samples=2000, noise=0.2, random_state=100)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=42)
    for ours, theirs in zip(
        (default_splits.x_train, default_splits.x_test, default_splits.y_train, default_splits.y_test),
        (x_train, x_test, y_train, y_test),
        strict=True,
    ):
        np.testing.assert_array_equal(ours, theirs)
    assert np.bincount(default_splits.y_test).tolist() != [300, 300]


def test_validation_split_is_taken_from_the_train_part(default_splits) -> None:
    splits = Moons(val_size=0.2).load(np.random.default_rng(0))
    assert splits.x_train.shape == (1120, 2)
    assert splits.x_val.shape == (280, 2)
    assert splits.y_val.shape == (280,)
    np.testing.assert_array_equal(splits.x_test, default_splits.x_test)
    assert rows(splits.x_train) | rows(splits.x_val) == rows(default_splits.x_train)
    assert not rows(splits.x_train) & rows(splits.x_val)
    assert np.bincount(splits.y_val).tolist() == [140, 140]


def test_null_random_states_draw_from_the_run_generator() -> None:
    def load(seed: int):
        return Moons(n_samples=50, random_state=None, split_random_state=None).load(np.random.default_rng(seed))

    first, again, other = load(1), load(1), load(2)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    np.testing.assert_array_equal(first.x_test, again.x_test)
    assert not np.array_equal(first.x_train, other.x_train)


@pytest.mark.parametrize("test_size", [-0.1, 0.0, 1.0, 1.5])
def test_out_of_range_test_size_is_rejected(test_size: float) -> None:
    with pytest.raises(ParameterError, match=r"^test_size must be in \(0, 1\)"):
        Moons(test_size=test_size)
    with pytest.raises(ParameterError, match=r"^dataset\.test_size must be in \(0, 1\)"):
        DATASETS.build({"name": "moons", "test_size": test_size})


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"val_size": 1.0}, "val_size"), ({"n_samples": 5}, "n_samples"), ({"noise": -0.1}, "noise")],
)
def test_other_out_of_range_fields_are_rejected(fields: dict, field: str) -> None:
    with pytest.raises(ParameterError, match=rf"^dataset\.{field} must"):
        DATASETS.build({"name": "moons", **fields})


@pytest.mark.parametrize("field", ["random_state", "split_random_state"])
@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999])
def test_a_random_state_scikit_learn_refuses_is_named(field: str, seed: int) -> None:
    with pytest.raises(ParameterError) as caught:
        DATASETS.build({"name": "moons", field: seed})
    assert str(caught.value) == f"dataset.{field} must be in [0, 4294967295] or null, got {seed}"


def test_holdout_splits_refuses_a_random_state_scikit_learn_refuses() -> None:
    x, y = np.zeros((10, 2)), np.arange(10) % 2
    with pytest.raises(ParameterError, match=r"^random_state must be in \[0, 4294967295\] or null, got -1$"):
        holdout_splits(x, y, 0.3, 0.0, -1, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (  # was scikit-learn's "With n_samples=140, test_size=0.9999999 and train_size=None, the resulting ..."
            {"n_samples": 200, "val_size": 0.9999999},
            "dataset.val_size leaves no training sample: it holds out all 140 samples that test_size=0.3 leaves of "
            "n_samples=200, got 0.9999999",
        ),
        (
            {"n_samples": 200, "test_size": 0.9999999},
            "dataset.test_size leaves no training sample: it holds out all n_samples=200, got 0.9999999",
        ),
    ],
)
def test_fractions_that_leave_no_training_sample_are_refused_when_built(fields: dict, expected: str) -> None:
    with pytest.raises(ParameterError) as caught:
        DATASETS.build({"name": "moons", **fields})
    assert str(caught.value) == expected


def test_holdout_splits_counts_as_scikit_learn_does() -> None:
    x, y = np.zeros((200, 2)), np.arange(200) % 2
    splits = holdout_splits(x, y, 0.3, 0.99, 0, np.random.default_rng(0))  # 138.6, so 139 held out of 140
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (1, 139, 60)
    with pytest.raises(ParameterError, match=r"^val_size leaves no training sample: it holds out all 140 samples"):
        holdout_splits(x, y, 0.3, 0.9999999, 0, np.random.default_rng(0))


def test_moons_is_registered() -> None:
    assert DATASETS.get("moons") is Moons


@pytest.mark.parametrize(
    ("n_samples", "noise", "test_size", "val_size", "random_state", "split_random_state"),
    [(2000, 0.2, 0.3, 0.0, 100, 42), (11, 0.0, 0.5, 0.25, 0, 0), (1001, 1.5, 0.01, 0.3, 2**32 - 1, 7)],
)
def test_points_and_splits_are_scikit_learns_without_importing_it(
    n_samples, noise, test_size, val_size, random_state, split_random_state
) -> None:
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=random_state)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=split_random_state)
    theirs = [x_train, x_test, y_train, y_test]
    if val_size:
        x_train, x_val, y_train, y_val = train_test_split(
            x_train, y_train, test_size=val_size, random_state=split_random_state
        )
        theirs = [x_train, x_test, y_train, y_test, x_val, y_val]
    moons = Moons(n_samples, noise, test_size, val_size, random_state, split_random_state)
    splits = moons.load(np.random.default_rng(0))
    ours = [splits.x_train, splits.x_test, splits.y_train, splits.y_test]
    ours += [splits.x_val, splits.y_val] if val_size else []
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.dtype == reference.dtype
        np.testing.assert_array_equal(mine, reference)


def test_a_moons_run_does_not_import_scikit_learn() -> None:
    import subprocess
    import sys

    code = "import sys, numpy; from nnexp.datasets.moons import Moons; Moons().load(numpy.random.default_rng(0)); "
    code += "print([name for name in sys.modules if name.startswith('sklearn')])"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
