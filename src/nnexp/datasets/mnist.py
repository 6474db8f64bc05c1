"""What the two MNIST plugins share: IDX and CSV reading, pixel scaling, the validation split, and their base class.

Readers return raw ``uint8`` arrays; splitting happens on those, and only the parts a run keeps are turned into
``float32``, so the full training set is converted once and never copied as floats.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnexp.datasets.base import Dataset, Splits
from nnexp.datasets.idx_format import N_CLASSES, IdxFiles, _read_idx_pair
from nnexp.errors import DataError, require

CLASS_NAMES = tuple(str(digit) for digit in range(N_CLASSES))


class Scaling(enum.Enum):
    """How raw pixel values 0..255 become network inputs."""

    unit = "unit"
    offset = "offset"
    none = "none"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """``unit``: x/255; ``offset``: x/255*0.99+0.01 (the tutorial's, which keeps inputs off zero); ``none``: x."""
        scaled = pixels.astype(np.float32)
        if self is not Scaling.none:
            scaled /= 255  # in place: the training images are 188 MB as float32
        if self is Scaling.offset:
            scaled *= 0.99
            scaled += 0.01
        return scaled


#: Which rows of an array a split takes: a slice keeps views, index arrays copy.
Selection = slice | np.ndarray


class Validation(enum.Enum):
    """Which training images are held out for validation."""

    last = "last"
    stratified = "stratified"

    def split(self, labels: np.ndarray, val_size: int, rng: np.random.Generator) -> tuple[Selection, Selection]:
        """Training and validation selections of ``labels``' indices: slices for ``last``, sorted indices otherwise."""
        n_train = len(labels) - val_size
        if self is Validation.last:
            return slice(0, n_train), slice(n_train, None)
        held_out = stratified_indices(labels, val_size, rng)
        kept = np.ones(len(labels), dtype=bool)
        kept[held_out] = False
        return np.flatnonzero(kept), held_out


def stratified_indices(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``size`` samples drawn from ``rng``, each class in proportion to its share of ``labels``.

    Quotas follow the largest-remainder rule in integers, so they add up to ``size`` and never exceed a class's
    count; ties go to the lower label.
    """
    counts = np.bincount(labels, minlength=N_CLASSES)
    quotas, remainders = np.divmod(counts * size, len(labels))
    short = size - int(quotas.sum())
    quotas[np.argsort(-remainders, kind="stable")[:short]] += 1
    # Sorting by (label, random key) shuffles within each class; the first `quota` of each class are held out.
    order = np.lexsort((rng.random(len(labels)), labels))
    sorted_labels = labels[order]
    class_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(labels)) - class_starts[sorted_labels]
    return np.sort(order[rank < quotas[sorted_labels]])


@dataclass(frozen=True)
class RawMnist:
    """Unscaled images ``(n, n_pixels)`` as ``uint8`` and labels ``(n,)``, with the files they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_source: str


class MnistDataset(Dataset):
    """Options and splitting shared by the MNIST plugins; a subclass only says how to :meth:`read` the files.

    ``val_size`` training images become the validation split (``0``: none), the last ones or a stratified sample.
    ``max_train`` and ``max_test`` then keep only the first so many training and test images (``null``: all), for
    quick runs; the validation split keeps its ``val_size``.
    """

    def __init__(
        self,
        scaling: Scaling,
        validation: Validation,
        val_size: int,
        max_train: int | None,
        max_test: int | None,
    ) -> None:
        require(val_size >= 0, "val_size", "must be >= 0", val_size)
        require(max_train is None or max_train >= 1, "max_train", "must be >= 1 or null", max_train)
        require(max_test is None or max_test >= 1, "max_test", "must be >= 1 or null", max_test)
        self.scaling = Scaling(scaling)
        self.validation = Validation(validation)
        self.val_size = val_size
        self.max_train = max_train
        self.max_test = max_test

    def read(self) -> RawMnist:
        """The raw arrays of the training and test files; raises :class:`DataError` naming a bad file."""
        raise NotImplementedError

    def load(self, rng: np.random.Generator) -> Splits:
        raw = self.read()
        n_images = len(raw.train_labels)
        if self.val_size >= n_images:
            raise DataError(
                f"{raw.train_source}: {n_images} training images leave none to train on "
                f"with val_size={self.val_size}; lower dataset.val_size"
            )
        x_val = y_val = None
        train: Selection = slice(None)
        if self.val_size:
            train, held_out = self.validation.split(raw.train_labels, self.val_size, rng)
            x_val, y_val = self.scaling.apply(raw.train_images[held_out]), raw.train_labels[held_out].astype(np.int64)
        train_images = raw.train_images[train][: self.max_train]
        train_labels = raw.train_labels[train][: self.max_train]
        return Splits(
            x_train=self.scaling.apply(train_images),
            y_train=train_labels.astype(np.int64),
            x_test=self.scaling.apply(raw.test_images[: self.max_test]),
            y_test=raw.test_labels[: self.max_test].astype(np.int64),
            n_classes=N_CLASSES,
            x_val=x_val,
            y_val=y_val,
            class_names=CLASS_NAMES,
        )




def read_idx_set(files: IdxFiles) -> RawMnist:
    """Read and cross-check the four files: counts of images and labels agree, test images match training ones."""
    train, train_labels = _read_idx_pair(files.train_images, files.train_labels)
    test, test_labels = _read_idx_pair(files.test_images, files.test_labels)
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{files.test_images}: images of {test.shape[1]}x{test.shape[2]}, "
            f"but {files.train_images} has {train.shape[1]}x{train.shape[2]}"
        )
    return RawMnist(
        train.reshape(len(train), -1),
        train_labels,
        test.reshape(len(test), -1),
        test_labels,
        str(files.train_images),
    )


#: The tutorial's CSV files, as ``nnexp data mnist --csv`` writes them into the cache.
CSV_FILES = ("mnist_train.csv", "mnist_test.csv")


def default_mnist_dir() -> Path:
    """``$NNEXP_CACHE/mnist``, else ``$XDG_CACHE_HOME/nnexp/mnist``, else ``~/.cache/nnexp/mnist``."""
    if os.environ.get("NNEXP_CACHE"):
        return Path(os.environ["NNEXP_CACHE"]).expanduser() / "mnist"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nnexp" / "mnist"
    return Path.home() / ".cache" / "nnexp" / "mnist"
