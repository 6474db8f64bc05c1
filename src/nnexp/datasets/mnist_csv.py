"""MNIST as CSV, a `label,p0,...,p783` line per image (the "Make Your Own Neural Network" files): dataset=mnist_csv."""

from __future__ import annotations

from pathlib import Path

from nnexp.datasets.base import DATASETS
from nnexp.datasets.csv_format import read_csv
from nnexp.datasets.idx_format import check_distinct
from nnexp.datasets.mnist import CSV_FILES, MnistDataset, RawMnist, Scaling, Validation, default_mnist_dir
from nnexp.errors import DataError


@DATASETS.register("mnist_csv")
class MnistCsv(MnistDataset):
    """Training and test digits from two CSV files, such as those ``nnexp data mnist --csv`` writes.

    ``null`` paths are the files that command writes into the cache. A header row is skipped when a file has one.
    """

    def __init__(
        self,
        train_path: str | None = None,
        test_path: str | None = None,
        scaling: Scaling = Scaling.unit,
        validation: Validation = Validation.last,
        val_size: int = 10000,
        max_train: int | None = None,
        max_test: int | None = None,
    ) -> None:
        super().__init__(scaling, validation, val_size, max_train, max_test)
        self.train_path = train_path
        self.test_path = test_path

    def read(self) -> RawMnist:
        cache = default_mnist_dir()
        train = Path(self.train_path).expanduser() if self.train_path else cache / CSV_FILES[0]
        test = Path(self.test_path).expanduser() if self.test_path else cache / CSV_FILES[1]
        for key, given, path in (("train_path", self.train_path, train), ("test_path", self.test_path, test)):
            if given is None and not path.is_file():
                raise DataError(
                    f"{path}: no such file; write it with `nnexp data mnist --csv`, or give your files with "
                    f"dataset.train_path=... dataset.test_path=... (dataset.{key} is not set)"
                )
        check_distinct(train, test, "dataset.train_path and dataset.test_path")
        train_images, train_labels = read_csv(train)
        test_images, test_labels = read_csv(test)
        return RawMnist(train_images, train_labels, test_images, test_labels, str(train))
