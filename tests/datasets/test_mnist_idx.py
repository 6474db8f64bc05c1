"""The mnist_idx plugin: both spellings, gzipped or raw, scaling, validation splits, limits, and every bad file."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from nnexp.config import schema_for
from nnexp.datasets.base import DATASETS
from nnexp.datasets.idx_format import IMAGE_MAGIC, LABEL_MAGIC, read_idx_images, read_idx_labels
from nnexp.datasets.mnist import CLASS_NAMES, Scaling, Validation, stratified_indices
from nnexp.datasets.mnist_idx import MnistIdx
from nnexp.errors import DataError, ParameterError

REAL_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
#: Digits 0..9 in the 60,000 training and 10,000 test labels of MNIST.
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def load(path: Path | None, **options):
    return MnistIdx(None if path is None else str(path), **options).load(np.random.default_rng(0))


def flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def load_error(path: Path, **options) -> str:
    with pytest.raises(DataError) as caught:
        load(path, **options)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("dotted", [False, True], ids=["train-images-idx3-ubyte", "train-images.idx3-ubyte"])
def test_files_round_trip_in_either_spelling_gzipped_or_raw(mnist_files, tiny, gz, dotted):
    splits = load(mnist_files.write_idx(gz=gz, dotted=dotted), scaling=Scaling.none, val_size=0)
    np.testing.assert_array_equal(splits.x_train, flat(tiny.train_images))
    np.testing.assert_array_equal(splits.y_train, tiny.train_labels)
    np.testing.assert_array_equal(splits.x_test, flat(tiny.test_images))
    np.testing.assert_array_equal(splits.y_test, tiny.test_labels)
    assert splits.x_train.dtype == splits.x_test.dtype == np.float32
    assert splits.y_train.dtype == splits.y_test.dtype == np.int64
    assert splits.x_train.shape == (40, 784)
    assert (splits.n_classes, splits.n_features, splits.names()) == (10, 784, CLASS_NAMES)
    assert splits.x_val is None and splits.y_val is None


def test_scaling_modes_give_the_documented_values(idx_dir, tiny):
    raw = flat(tiny.train_images)[:30].astype(np.float64)
    unit = load(idx_dir, scaling=Scaling.unit, val_size=10).x_train
    np.testing.assert_array_equal(unit, raw.astype(np.float32) / np.float32(255))
    assert unit.min() == 0.0 and unit.max() == 1.0
    offset = load(idx_dir, scaling=Scaling.offset, val_size=10).x_train
    np.testing.assert_allclose(offset, raw / 255 * 0.99 + 0.01, rtol=1e-6)
    assert offset.min() == np.float32(0.01) and offset.max() == np.float32(1.0)
    np.testing.assert_array_equal(load(idx_dir, scaling="none", val_size=10).x_train, raw)


def test_last_validation_holds_out_the_last_images_as_the_tutorial_does(idx_dir, tiny):
    splits = load(idx_dir, scaling=Scaling.none, val_size=10)
    np.testing.assert_array_equal(splits.x_train, flat(tiny.train_images[:30]))
    np.testing.assert_array_equal(splits.y_train, tiny.train_labels[:30])
    np.testing.assert_array_equal(splits.x_val, flat(tiny.train_images[30:]))
    np.testing.assert_array_equal(splits.y_val, tiny.train_labels[30:])
    assert splits.x_val.dtype == np.float32 and splits.y_val.dtype == np.int64


def rows_of(x: np.ndarray, images: np.ndarray) -> list[int]:
    """Indices into ``images`` of each row of ``x``; the tiny images are all distinct."""
    index = {row.tobytes(): i for i, row in enumerate(flat(images).astype(np.float32))}
    return [index[row.tobytes()] for row in x]


def test_stratified_validation_keeps_class_proportions_and_is_seeded(idx_dir, tiny):
    def split(seed: int):
        return MnistIdx(str(idx_dir), scaling=Scaling.none, validation=Validation.stratified, val_size=20).load(
            np.random.default_rng(seed)
        )

    first, again, other = split(1), split(1), split(2)
    # Half of 40 images with class counts 8, 6, 6, 4, 4, 4, 2, 2, 2, 2: exactly half of each class.
    assert np.bincount(first.y_val, minlength=10).tolist() == [4, 3, 3, 2, 2, 2, 1, 1, 1, 1]
    assert np.bincount(first.y_train, minlength=10).tolist() == [4, 3, 3, 2, 2, 2, 1, 1, 1, 1]
    train_rows, val_rows = rows_of(first.x_train, tiny.train_images), rows_of(first.x_val, tiny.train_images)
    assert sorted(train_rows + val_rows) == list(range(40))
    np.testing.assert_array_equal(first.y_val, tiny.train_labels[val_rows])
    np.testing.assert_array_equal(again.x_val, first.x_val)
    np.testing.assert_array_equal(again.x_train, first.x_train)
    assert rows_of(other.x_val, tiny.train_images) != val_rows


def test_stratified_quotas_follow_the_largest_remainders():
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    held_out = stratified_indices(labels, 10, np.random.default_rng(0))
    assert np.bincount(labels[held_out]).tolist() == [6, 3, 1]
    assert np.all(np.diff(held_out) > 0)
    labels = np.repeat([0, 1, 2], [5, 3, 2])
    held_out = stratified_indices(labels, 3, np.random.default_rng(0))
    assert np.bincount(labels[held_out]).tolist() == [1, 1, 1]  # 1.5, 0.9, 0.6: the largest remainders round up


@pytest.mark.parametrize("validation", list(Validation))
def test_max_train_and_max_test_keep_the_first_images_after_the_split(idx_dir, tiny, validation):
    full = MnistIdx(str(idx_dir), scaling=Scaling.none, validation=validation, val_size=10)
    limited = MnistIdx(str(idx_dir), scaling=Scaling.none, validation=validation, val_size=10, max_train=5, max_test=3)
    full_splits, splits = full.load(np.random.default_rng(0)), limited.load(np.random.default_rng(0))
    np.testing.assert_array_equal(splits.x_train, full_splits.x_train[:5])
    np.testing.assert_array_equal(splits.y_train, full_splits.y_train[:5])
    np.testing.assert_array_equal(splits.x_val, full_splits.x_val)
    np.testing.assert_array_equal(splits.x_test, flat(tiny.test_images[:3]))
    np.testing.assert_array_equal(splits.y_test, tiny.test_labels[:3])


def test_limits_larger_than_the_data_keep_everything(idx_dir):
    splits = load(idx_dir, val_size=0, max_train=1000, max_test=1000)
    assert (len(splits.x_train), len(splits.x_test)) == (40, 10)


def test_any_image_size_is_accepted_when_train_and_test_agree(mnist_files, tiny):
    small = {
        "train_images": mnist_files.idx_bytes(tiny.train_images[:, :20, :14], IMAGE_MAGIC),
        "test_images": mnist_files.idx_bytes(tiny.test_images[:, :20, :14], IMAGE_MAGIC),
    }
    splits = load(mnist_files.write_idx(**small), scaling=Scaling.none, val_size=0)
    assert splits.n_features == 280
    np.testing.assert_array_equal(splits.x_test, flat(tiny.test_images[:, :20, :14]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"val_size": -1}, "dataset.val_size must be >= 0, got -1"),
        ({"max_train": 0}, "dataset.max_train must be >= 1 or null, got 0"),
        ({"max_test": -5}, "dataset.max_test must be >= 1 or null, got -5"),
    ],
)
def test_out_of_range_options_are_rejected_when_built(fields, message):
    with pytest.raises(ParameterError) as caught:
        DATASETS.build({"name": "mnist_idx", **fields})
    assert str(caught.value) == message


def test_construction_reads_nothing(tmp_path):
    MnistIdx(str(tmp_path / "nowhere"))


def test_config_schema_defaults_to_the_cache_and_takes_enum_names():
    cfg = OmegaConf.merge(
        OmegaConf.structured(schema_for(MnistIdx, "mnist_idx")),
        OmegaConf.from_dotlist(["scaling=offset", "validation=stratified"]),
    )
    assert cfg.path is None and cfg.val_size == 10000 and cfg.max_train is None
    dataset = DATASETS.build(cfg)
    assert (dataset.scaling, dataset.validation) == (Scaling.offset, Validation.stratified)


def test_plugins_import_nothing_heavy():
    modules = ("sklearn", "mlflow", "matplotlib", "hydra", "urllib.request")
    code = "import sys, nnexp.datasets.mnist_idx, nnexp.datasets.mnist_csv; "
    code += f"print([m for m in {modules} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_too_few_training_images_for_the_validation_split(idx_dir):
    message = load_error(idx_dir)
    assert message == (
        f"{idx_dir / 'train-images-idx3-ubyte.gz'}: 40 training images leave none to train on with val_size=10000; "
        "lower dataset.val_size"
    )


def swapped(mnist_files, tiny) -> dict[str, bytes]:
    return {
        "train_images": mnist_files.idx_bytes(tiny.train_labels, LABEL_MAGIC),
        "train_labels": mnist_files.idx_bytes(tiny.train_images, IMAGE_MAGIC),
    }


def test_a_label_file_where_images_belong_is_named(mnist_files, tiny):
    directory = mnist_files.write_idx(**swapped(mnist_files, tiny))
    assert load_error(directory, val_size=0) == (
        f"{directory / 'train-images-idx3-ubyte.gz'}: IDX magic 0x00000801 is a label file, "
        "expected image magic 0x00000803"
    )


def test_an_image_file_where_labels_belong_is_named(mnist_files, tiny):
    directory = mnist_files.write_idx(train_labels=swapped(mnist_files, tiny)["train_labels"])
    assert load_error(directory, val_size=0) == (
        f"{directory / 'train-labels-idx1-ubyte.gz'}: IDX magic 0x00000803 is an image file, "
        "expected label magic 0x00000801"
    )


def test_gzip_data_under_a_raw_name_gets_a_hint(mnist_files, tiny):
    directory = mnist_files.write_idx(gz=False)
    (directory / "t10k-images-idx3-ubyte").write_bytes(gzip.compress(tiny.idx_files()["test_images"], mtime=0))
    assert load_error(directory, val_size=0) == (
        f"{directory / 't10k-images-idx3-ubyte'}: IDX magic 0x1f8b0800 is not an MNIST IDX magic, "
        "expected image magic 0x00000803; the data is gzipped, so name the file *.gz"
    )


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_truncated_and_overlong_files_are_named(mnist_files, tiny, gz):
    images = tiny.idx_files()["train_images"]
    directory = mnist_files.write_idx(gz=gz, train_images=images[:-5])
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    assert load_error(directory, val_size=0) == (
        f"{directory / name}: truncated: the header promises 40 images of 28x28 (31376 bytes), found 31371 bytes"
    )
    mnist_files.write_idx(gz=gz, train_images=images + b"abc")
    assert load_error(directory, val_size=0) == f"{directory / name}: 3 trailing bytes after 40 images of 28x28"


def test_truncated_headers_are_named(mnist_files, tiny):
    directory = mnist_files.write_idx(test_images=tiny.idx_files()["test_images"][:10])
    assert load_error(directory, val_size=0) == (
        f"{directory / 't10k-images-idx3-ubyte.gz'}: truncated: 10 bytes, shorter than the 16-byte IDX image header"
    )
    mnist_files.write_idx(test_labels=b"\0\0")
    assert load_error(directory, val_size=0) == (
        f"{directory / 't10k-labels-idx1-ubyte.gz'}: truncated: 2 bytes, too short for an IDX header"
    )


def test_label_and_image_counts_must_agree(mnist_files, tiny):
    directory = mnist_files.write_idx(train_labels=mnist_files.idx_bytes(tiny.train_labels[:39], LABEL_MAGIC))
    assert load_error(directory, val_size=0) == (
        f"{directory / 'train-labels-idx1-ubyte.gz'}: 39 labels, "
        f"but {directory / 'train-images-idx3-ubyte.gz'} has 40 images"
    )


def test_a_label_outside_0_to_9_is_named_with_its_index(mnist_files, tiny):
    labels = tiny.test_labels.copy()
    labels[5] = 11
    directory = mnist_files.write_idx(test_labels=mnist_files.idx_bytes(labels, LABEL_MAGIC))
    assert load_error(directory, val_size=0) == (
        f"{directory / 't10k-labels-idx1-ubyte.gz'}: label 11 at index 5 is outside 0..9"
    )


def test_test_images_must_have_the_training_images_size(mnist_files, tiny):
    directory = mnist_files.write_idx(test_images=mnist_files.idx_bytes(tiny.test_images[:, :20, :20], IMAGE_MAGIC))
    assert load_error(directory, val_size=0) == (
        f"{directory / 't10k-images-idx3-ubyte.gz'}: images of 20x20, "
        f"but {directory / 'train-images-idx3-ubyte.gz'} has 28x28"
    )


def test_an_empty_image_file_is_rejected(mnist_files, tiny):
    empty = np.zeros((0, 28, 28), np.uint8)
    directory = mnist_files.write_idx(
        test_images=mnist_files.idx_bytes(empty, IMAGE_MAGIC),
        test_labels=mnist_files.idx_bytes(np.zeros(0, np.uint8), LABEL_MAGIC),
    )
    assert load_error(directory, val_size=0) == f"{directory / 't10k-images-idx3-ubyte.gz'}: holds no images"


@pytest.mark.parametrize("damage", ["flipped", "cut"])
def test_corrupt_gzip_is_named(idx_dir, damage):
    path = idx_dir / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    if damage == "flipped":
        data[len(data) // 2 : len(data) // 2 + 8] = bytes(8)
    else:
        del data[len(data) // 2 :]
    path.write_bytes(bytes(data))
    assert load_error(idx_dir, val_size=0) == f"{path}: corrupt or truncated gzip data; fetch the file again"


def test_raw_data_under_a_gz_name_is_named(mnist_files, tiny):
    directory = mnist_files.write_idx()
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(tiny.idx_files()["train_labels"])
    assert load_error(directory, val_size=0) == (
        f"{directory / 'train-labels-idx1-ubyte.gz'}: not gzip data, although the name ends in .gz"
    )


def test_missing_files_are_listed_with_how_to_get_them(idx_dir):
    (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    (idx_dir / "train-images-idx3-ubyte.gz").unlink()
    assert load_error(idx_dir) == (
        f"{idx_dir}: MNIST files missing: train-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] "
        "(the spelling train-images.idx3-ubyte is accepted too); "
        f"download them with `nnexp data mnist {idx_dir}`, or set dataset.path=DIR"
    )


def test_a_missing_directory_is_named(tmp_path):
    assert load_error(tmp_path / "nowhere") == (
        f"{tmp_path / 'nowhere'} does not exist, so it holds no MNIST files; "
        f"download them with `nnexp data mnist {tmp_path / 'nowhere'}`, or set dataset.path=DIR"
    )


def test_the_default_path_is_the_download_cache(monkeypatch, tmp_path, mnist_files):
    monkeypatch.setenv("NNEXP_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "mnist"
    assert load_error(None) == (
        f"{cache} does not exist, so it holds no MNIST files; "
        "download them with `nnexp data mnist`, or set dataset.path=DIR"
    )
    cache.mkdir(parents=True)
    mnist_files.root = cache
    mnist_files.write_idx()
    assert load(None, val_size=0).x_train.shape == (40, 784)


def test_mnist_idx_is_registered():
    assert DATASETS.get("mnist_idx") is MnistIdx


real = pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"the real MNIST files are not in {REAL_MNIST}")


@real
def test_real_mnist_loads_with_its_known_class_counts():
    splits = MnistIdx(str(REAL_MNIST), max_train=1000).load(np.random.default_rng(0))
    assert splits.x_train.shape == (1000, 784) and splits.y_train.shape == (1000,)
    assert splits.x_val.shape == (10000, 784) and splits.x_test.shape == (10000, 784)
    assert splits.x_train.min() == 0.0 and splits.x_train.max() == 1.0
    train_labels = read_idx_labels(REAL_MNIST / "train-labels-idx1-ubyte.gz")
    assert np.bincount(train_labels).tolist() == TRAIN_CLASS_COUNTS
    assert np.bincount(splits.y_test).tolist() == TEST_CLASS_COUNTS


@real
def test_real_mnist_splits_into_the_tutorials_50000_10000_10000():
    splits = MnistIdx(str(REAL_MNIST)).load(np.random.default_rng(0))
    assert [len(y) for _, _, y in splits.parts()] == [50000, 10000, 10000]
    assert all(x.dtype == np.float32 and x.shape[1] == 784 for _, x, _ in splits.parts())


def gzip_of_zeros(header: bytes, zeros: int) -> bytes:
    """``header`` and ``zeros`` zero bytes, gzipped a megabyte at a time (a few kilobytes a megabyte)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as file:
        file.write(header)
        block = bytes(2**20)
        for start in range(0, zeros, len(block)):
            file.write(block[: zeros - start])
    return buffer.getvalue()


def peak_bytes_of(read: Callable[[], object]) -> tuple[BaseException | None, int]:
    """The error ``read`` raises, if any, and the most memory Python and NumPy held while it ran."""
    tracemalloc.start()
    try:
        read()
        error = None
    except Exception as exc:
        error = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize(
    ("reader", "header", "what"),
    [
        (read_idx_images, struct.pack(">4I", IMAGE_MAGIC, 1, 28, 28), "1 images of 28x28"),
        (read_idx_labels, struct.pack(">2I", LABEL_MAGIC, 1), "1 labels"),
    ],
    ids=["images", "labels"],
)
def test_a_gzip_bomb_is_refused_without_being_decompressed(tmp_path, reader, header, what):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip_of_zeros(header, 64 * 2**20))  # 64 MB of zeros in about 64 KB
    error, peak = peak_bytes_of(lambda: reader(path))
    assert str(error) == f"{path}: more than 65536 trailing bytes after {what}; stopped reading"
    assert peak < 4 * 2**20


def test_a_gzip_file_shorter_than_its_header_says_is_truncated(tmp_path):
    path = tmp_path / "short-idx3-ubyte.gz"
    path.write_bytes(gzip_of_zeros(struct.pack(">4I", IMAGE_MAGIC, 20, 28, 28), 784))
    with pytest.raises(DataError) as error:
        read_idx_images(path)
    assert str(error.value) == (
        f"{path}: truncated: the header promises 20 images of 28x28 (15696 bytes), found 800 bytes"
    )


@pytest.mark.parametrize("count", [60_000_000, 2**32 - 1])
def test_a_header_promising_more_than_gzip_can_hold_is_refused_before_reading(tmp_path, count):
    path = tmp_path / "liar-idx3-ubyte.gz"
    path.write_bytes(gzip_of_zeros(struct.pack(">4I", IMAGE_MAGIC, count, 2**16, 2**16), 784))
    compressed = path.stat().st_size
    error, peak = peak_bytes_of(lambda: read_idx_images(path))
    assert str(error) == (
        f"{path}: truncated: the header promises {count} images of 65536x65536 ({16 + count * 2**32} bytes), "
        f"more than {compressed} bytes of gzip data can hold"
    )
    assert peak < 2**20


def test_a_raw_file_longer_than_its_header_says_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "long-idx1-ubyte"
    path.write_bytes(struct.pack(">2I", LABEL_MAGIC, 3) + bytes(3 + 32 * 2**20))
    error, peak = peak_bytes_of(lambda: read_idx_labels(path))
    assert str(error) == f"{path}: {32 * 2**20} trailing bytes after 3 labels"
    assert peak < 2**20


def test_a_raw_file_shorter_than_a_huge_header_says_is_refused_without_allocating(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(struct.pack(">4I", IMAGE_MAGIC, 2**32 - 1, 2**32 - 1, 2**32 - 1))
    error, peak = peak_bytes_of(lambda: read_idx_images(path))
    promised = 16 + (2**32 - 1) ** 3
    assert str(error) == (
        f"{path}: truncated: the header promises {2**32 - 1} images of {2**32 - 1}x{2**32 - 1} "
        f"({promised} bytes), found 16 bytes"
    )
    assert peak < 2**20


def test_an_unreadable_path_is_one_line(tmp_path):
    (tmp_path / "dir-idx3-ubyte.gz").mkdir()
    with pytest.raises(DataError, match=r"dir-idx3-ubyte.gz: cannot be read: Is a directory$"):
        read_idx_images(tmp_path / "dir-idx3-ubyte.gz")


def test_raw_and_gzipped_files_side_by_side_must_hold_the_same_data(mnist_files, tiny):
    directory = mnist_files.write_idx(gz=True)
    mnist_files.write_idx(gz=False)  # the same data unpacked beside it, as `gunzip -k` leaves it: fine
    assert load(directory, val_size=0).x_train.shape == (40, 784)
    labels = tiny.train_labels.copy()
    labels[0] = (labels[0] + 1) % 10
    mnist_files.write_idx(gz=False, train_labels=mnist_files.idx_bytes(labels, LABEL_MAGIC))
    message = load_error(directory, val_size=0)
    assert message == (
        f"{directory}: train-labels-idx1-ubyte.gz and train-labels-idx1-ubyte hold different data; "
        "remove the one not to use"
    )


def test_a_gzip_file_shorter_than_its_header_promises_is_refused_before_decompressing(tmp_path, monkeypatch):
    """The gzip trailer records the uncompressed size: a bomb-like promise stops without inflating the data."""
    path = tmp_path / "promise-idx3-ubyte.gz"
    noise = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()  # too much for the ratio bound
    path.write_bytes(gzip.compress(struct.pack(">4I", IMAGE_MAGIC, 100, 28, 28) + noise, mtime=0))
    sizes = []
    read = gzip.GzipFile.read

    def recording(self, size=-1):
        sizes.append(size)
        return read(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", recording)
    promise = r"truncated: the header promises 100 images of 28x28 \(78416 bytes\), found 1016 bytes$"
    with pytest.raises(DataError, match=promise):
        read_idx_images(path)
    assert max(sizes) <= 16, sizes


def test_test_files_that_are_links_to_the_training_files_are_refused(mnist_files):
    folder = mnist_files.write_idx()
    test_images = mnist_files.idx_path("test_images")
    test_images.unlink()
    test_images.symlink_to(mnist_files.idx_path("train_images"))
    with pytest.raises(DataError) as caught:
        MnistIdx(str(folder), val_size=10).load(np.random.default_rng(0))
    assert str(caught.value) == (
        f"{folder}: the training and test images are the same file ({mnist_files.idx_path('train_images')}); "
        "test on data the network is not trained on"
    )
