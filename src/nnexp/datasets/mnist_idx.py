"""MNIST from its four IDX files, as the public mirrors distribute it: ``dataset=mnist_idx``."""

from __future__ import annotations

from pathlib import Path

from nnexp.datasets.base import DATASETS
from nnexp.datasets.idx_format import locate_idx_files
from nnexp.datasets.mnist import MnistDataset, RawMnist, Scaling, Validation, default_mnist_dir, read_idx_set


@DATASETS.register("mnist_idx")
class MnistIdx(MnistDataset):
    """The 60,000 training and 10,000 test digits from ``train-images-idx3-ubyte.gz`` and its three siblings.

    ``path`` is the directory holding them, gzipped or not, spelt ``train-images-idx3-ubyte`` or
    ``train-images.idx3-ubyte``; ``null`` is the cache that ``nnexp data mnist`` fills.
    """

    def __init__(
        self,
        path: str | None = None,
        scaling: Scaling = Scaling.unit,
        validation: Validation = Validation.last,
        val_size: int = 10000,
        max_train: int | None = None,
        max_test: int | None = None,
    ) -> None:
        super().__init__(scaling, validation, val_size, max_train, max_test)
        self.path = path

    def read(self) -> RawMnist:
        if self.path is None:
            directory, hint = default_mnist_dir(), "download them with `nnexp data mnist`, or set dataset.path=DIR"
        else:
            directory = Path(self.path).expanduser()
            hint = f"download them with `nnexp data mnist {directory}`, or set dataset.path=DIR"
        return read_idx_set(locate_idx_files(directory, hint))
