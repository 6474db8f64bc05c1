"""The dataset plugin interface and the split helpers every dataset shares."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from nnexp.errors import DataError, abbreviated, require
from nnexp.registry import Registry
from nnexp.schema import MAX_CLASS_NAME, printable


@dataclass(frozen=True)
class Splits:
    """Train, optional validation, and test arrays: ``x_*`` is (n_samples, n_features), ``y_*`` integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    def check(self, dtype: type[np.floating] | None = None) -> None:
        """Raise :class:`DataError` unless training can use every split: 2-D real features, finite (also once cast
        to ``dtype``, the run's, when given), as many in each split as in training, as many integer labels in
        ``0..n_classes-1`` as rows, and one distinct class name per class."""
        if not isinstance(self.n_classes, int | np.integer) or isinstance(self.n_classes, bool) or self.n_classes < 2:
            # one class would train to a loss of 0 and an accuracy of 1, and FINISH as if it had learnt something
            raise DataError(f"n_classes must be an integer >= 2, one per class to tell apart, got {self.n_classes!r}")
        if self.class_names is not None and len(self.class_names) != self.n_classes:
            raise DataError(f"{len(self.class_names)} class names for n_classes={self.n_classes}")
        for name in self.class_names or ():
            if not printable(name):
                shown = abbreviated(name) if isinstance(name, str) else name
                raise DataError(f"class name {shown!r} must be a string without control characters (such as a newline)")
            if len(name) > MAX_CLASS_NAME:  # the model's network.json would be refused when read back
                raise DataError(
                    f"class name {abbreviated(name)!r} must be at most {MAX_CLASS_NAME} characters, found {len(name)}"
                )
        twice = sorted({name for name in self.class_names or () if self.class_names.count(name) > 1})
        if twice:  # a prediction could not tell the classes apart, and nnexp predict refuses the model
            shown = ", ".join(map(repr, twice))
            raise DataError(f"class names must be different, one per class; {shown} is given more than once")
        for part, x, y in self.parts():
            if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
                kinds = f"{type(x).__name__} and {type(y).__name__}"
                raise DataError(f"{part} split: x and y must be NumPy arrays, got {kinds}")
            if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise DataError(f"{part} split: expected x (n, features) and y (n,), got {x.shape} and {y.shape}")
            if not x.shape[1]:
                raise DataError(f"{part} split: samples of no features, got x {x.shape}; each sample needs one or more")
            if x.shape[1] != self.x_train.shape[1]:
                raise DataError(
                    f"{part} split: {x.shape[1]} features per sample, but the train split has {self.x_train.shape[1]}"
                )
            if not len(y):  # an empty test split would give a run without test metrics, and NaN accuracies
                raise DataError(f"{part} split is empty; every split needs at least one sample")
            if not np.issubdtype(y.dtype, np.integer):
                raise DataError(f"{part} split: labels must be integers, got {y.dtype}")
            if y.size and (y.min() < 0 or y.max() >= self.n_classes):
                raise DataError(f"{part} split: labels must lie in [0, {self.n_classes}), got {y.min()}..{y.max()}")
            if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
                raise DataError(f"{part} split: features must be real numbers, got {x.dtype}")
            check_finite(part, x, dtype)

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def parts(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``(name, x, y)`` for each split present, in the order train, val, test."""
        found = [("train", self.x_train, self.y_train)]
        if self.x_val is not None and self.y_val is not None:
            found.append(("val", self.x_val, self.y_val))
        return [*found, ("test", self.x_test, self.y_test)]

    def names(self) -> tuple[str, ...]:
        return self.class_names or tuple(str(label) for label in range(self.n_classes))

    def digest(self) -> str:
        """SHA-256 over every split's shape, dtype and bytes: equal digests mean the same data, split the same way."""
        sha = hashlib.sha256()
        for part, x, y in self.parts():
            for array in (x, y):
                contiguous = np.ascontiguousarray(array)
                sha.update(f"{part}:{contiguous.dtype.str}:{contiguous.shape};".encode())
                sha.update(contiguous.data)
        return sha.hexdigest()


def check_finite(part: str, x: np.ndarray, dtype: type[np.floating] | None) -> None:
    """Raise :class:`DataError` naming the first feature of ``x`` that is not a finite number, as it is or once cast
    to ``dtype``: training on it would end in "loss became NaN", which blames the learning rate."""
    if np.issubdtype(x.dtype, np.integer) or finite_at_a_glance(x, dtype):
        return
    bad = np.argwhere(~np.isfinite(x))
    if not len(bad) and dtype is not None:
        largest = np.finfo(dtype).max
        if x.max() > largest or x.min() < -largest:  # two passes, no copy: the cast overflows only beyond them
            with np.errstate(over="ignore"):
                bad = np.argwhere(~np.isfinite(x.astype(dtype)))
    if len(bad):
        row, column = bad[0]
        value = x[row, column]
        if np.isfinite(value):
            kind = np.dtype(dtype)
            with np.errstate(over="ignore"):
                value = f"{kind.type(value)} in trainer.dtype={kind.name} ({value} before the cast)"
        raise DataError(f"{part} split: feature {column} of sample {row} is {value}, not a finite number")


def finite_at_a_glance(x: np.ndarray, dtype: type[np.floating] | None) -> bool:
    """Whether passes without temporaries show every value of the float array ``x`` finite, in ``dtype`` too: a NaN
    or an infinity makes the sum non-finite (a sum that overflows says nothing), and a narrower ``dtype`` holds
    every value between its extremes."""
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(x.sum()):
            return False
    if dtype is None or np.finfo(dtype).max >= np.finfo(x.dtype).max:
        return True
    largest = np.finfo(dtype).max
    return bool(x.max() <= largest and x.min() >= -largest)


class Dataset:
    """A dataset plugin: its constructor holds config, :meth:`load` produces the arrays."""

    def load(self, rng: np.random.Generator) -> Splits:
        raise NotImplementedError


DATASETS: Registry[Dataset] = Registry("dataset", Dataset)


def checked_splits(dataset: Dataset, splits: object, dtype: type[np.floating] | None = None) -> Splits:
    """What ``dataset.load`` returned, once :meth:`Splits.check` finds it fit to train on in ``dtype``; errors name
    the dataset."""
    name = next((name for name, cls in DATASETS.items() if type(dataset) is cls), type(dataset).__name__)
    if not isinstance(splits, Splits):
        raise DataError(f"dataset {name}: load() returned {type(splits).__name__}, not Splits")
    try:
        splits.check(dtype)
    except DataError as exc:
        raise DataError(f"dataset {name}: {exc}") from None
    return splits


def check_fraction(field: str, value: float, allow_zero: bool) -> None:
    """Require ``0 < value < 1``, or ``0 <= value < 1`` when ``allow_zero``."""
    ok = (value >= 0 if allow_zero else value > 0) and value < 1
    require(ok, field, f"must be in {'[' if allow_zero else '('}0, 1)", value)


def check_holdout(n_samples: int, test_size: float, val_size: float) -> None:
    """Require :func:`holdout_splits` of ``n_samples`` samples to leave training samples, counting held-out samples
    as scikit-learn's ``train_test_split`` does (rounded up); raises :class:`ParameterError` naming the fraction."""
    rest = n_samples - math.ceil(test_size * n_samples)
    require(rest > 0, "test_size", f"leaves no training sample: it holds out all n_samples={n_samples}", test_size)
    held_out = math.ceil(val_size * rest)
    require(
        rest > held_out,
        "val_size",
        f"leaves no training sample: it holds out all {rest} samples that test_size={test_size} leaves of "
        f"n_samples={n_samples}",
        val_size,
    )


#: The seeds scikit-learn accepts as a ``random_state``.
MAX_RANDOM_STATE = 2**32 - 1


def check_random_state(field: str, value: int | None) -> None:
    """Require a seed scikit-learn accepts, ``0 <= value < 2**32``, or ``None`` (drawn from the run's seed)."""
    ok = value is None or 0 <= value <= MAX_RANDOM_STATE
    require(ok, field, f"must be in [0, {MAX_RANDOM_STATE}] or null", value)


def holdout_splits(
    x: np.ndarray,
    y: np.ndarray,
    test_size: float,
    val_size: float,
    random_state: int | None,
    rng: np.random.Generator,
    class_names: tuple[str, ...] | None = None,
    stratify: bool = False,
) -> Splits:
    """Split ``x, y`` into test (``test_size`` of all) and validation (``val_size`` of the rest) by
    scikit-learn's ``train_test_split``; ``random_state=None`` draws the split from ``rng``. Fractions that leave no
    training sample raise :class:`ParameterError` naming ``test_size`` or ``val_size``.

    Not stratified by default, as the tutorials call ``train_test_split``: a stratified split holds out
    different points, and the published accuracies are measured on theirs.
    """
    check_random_state("random_state", random_state)
    check_holdout(len(y), test_size, val_size)

    def split(features: np.ndarray, labels: np.ndarray, size: float) -> list[np.ndarray]:
        state = random_state if random_state is not None else int(rng.integers(2**31))
        n_test = math.ceil(size * len(labels)) if isinstance(size, float) and 0 < size < 1 else 0
        if not stratify and 0 < n_test < len(labels):
            # train_test_split's ShuffleSplit, index for index, without importing scikit-learn (most of a small
            # run's start-up); scikit-learn itself for what it refuses, in its words.
            order = np.random.RandomState(state).permutation(len(labels))
            test, train = order[:n_test], order[n_test:]
            return [features[train], features[test], labels[train], labels[test]]
        from sklearn.model_selection import train_test_split

        try:
            return train_test_split(
                features, labels, test_size=size, random_state=state, stratify=labels if stratify else None
            )
        except ValueError as exc:  # e.g. fewer held-out samples than classes
            raise DataError(f"cannot split {len(labels)} samples with a fraction of {size}: {exc}") from None

    x_train, x_test, y_train, y_test = split(x, y, test_size)
    x_val = y_val = None
    if val_size > 0:
        x_train, x_val, y_train, y_val = split(x_train, y_train, val_size)
    return Splits(x_train, y_train, x_test, y_test, int(y.max()) + 1, x_val=x_val, y_val=y_val, class_names=class_names)
