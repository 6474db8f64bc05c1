"""What the two MNIST plugins share: IDX and CSV reading, pixel scaling, the validation split, and their base class.

Readers return raw ``uint8`` arrays; splitting happens on those, and only the parts a run keeps are turned into
``float32``, so the full training set is converted once and never copied as floats.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nnexp.datasets.base import Dataset, Splits
from nnexp.datasets.csv_header import is_header
from nnexp.errors import DataError, require

N_CLASSES = 10
CLASS_NAMES = tuple(str(digit) for digit in range(N_CLASSES))
N_PIXELS = 28 * 28
CSV_COLUMNS = 1 + N_PIXELS
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
IMAGE_HEADER = 16
LABEL_HEADER = 8
#: The four IDX files by role, in the hyphenated spelling of the public mirrors; see :func:`idx_candidates`.
IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
GZIP_MAGIC = b"\x1f\x8b"
#: Deflate expands data at most about 1032 times, so a gzip file cannot hold more than this many bytes per byte.
MAX_DEFLATE_RATIO = 1032
#: Bytes read past what an IDX header promises, to count a short tail exactly without reading a long one.
TRAILING_MARGIN = 2**16
UTF8_BOM = b"\xef\xbb\xbf"
COMMA, NEWLINE, ZERO = ord(","), ord("\n"), ord("0")


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


@dataclass(frozen=True)
class IdxFiles:
    """Paths of the four MNIST IDX files."""

    train_images: Path
    train_labels: Path
    test_images: Path
    test_labels: Path


def idx_candidates(stem: str) -> list[str]:
    """File names ``stem`` may have: gzipped or raw, ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``."""
    dotted = stem.replace("-idx", ".idx")
    return [f"{stem}.gz", stem, f"{dotted}.gz", dotted]


def locate_idx_files(directory: Path, hint: str) -> IdxFiles:
    """Find the four IDX files in ``directory``; ``hint`` ends the error message and says how to get them."""
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise DataError(f"{directory} {problem}, so it holds no MNIST files; {hint}")
    found: dict[str, Path] = {}
    missing = []
    for role, stem in IDX_STEMS.items():
        present = [directory / name for name in idx_candidates(stem) if (directory / name).is_file()]
        if not present:
            missing.append(f"{stem}[.gz]")
            continue
        for other in present[1:]:
            if not _same_idx_data(present[0], other):
                raise DataError(
                    f"{directory}: {present[0].name} and {other.name} hold different data; remove the one not to use"
                )
        found[role] = present[0]
    if missing:
        raise DataError(
            f"{directory}: MNIST files missing: {', '.join(missing)} "
            f"(the spelling train-images.idx3-ubyte is accepted too); {hint}"
        )
    for kind in ("images", "labels"):
        check_distinct(found[f"train_{kind}"], found[f"test_{kind}"], f"{directory}: the training and test {kind}")
    return IdxFiles(**found)


def check_distinct(train: Path, test: Path, what: str) -> None:
    """Refuse test data read from the training file (a link or the same path twice): its metrics would measure
    what the network memorised, not how it generalises. ``what`` names the two in the message."""
    if train.is_file() and test.is_file() and os.path.samefile(train, test):
        raise DataError(f"{what} are the same file ({train.resolve()}); test on data the network is not trained on")


def _same_idx_data(first: Path, second: Path, block: int = 2**20) -> bool:
    """Whether two IDX files, each gzipped or not, hold the same bytes; compared a block at a time."""
    with _open_idx(first) as one, _open_idx(second) as two:
        while True:
            left, right = one.read(block), two.read(block)
            if left != right:
                return False
            if not left:
                return True


def read_idx_images(path: Path) -> np.ndarray:
    """The images of an IDX3 file, ``(n, rows, cols)`` ``uint8``, a read-only view of the file's bytes."""
    with _open_idx(path) as file:
        header = _read_header(path, file, IMAGE_MAGIC, IMAGE_HEADER, "image")
        n, rows, cols = (int(value) for value in np.frombuffer(header, ">u4", count=3, offset=4))
        if rows == 0 or cols == 0:
            raise DataError(f"{path}: IDX header gives images of {rows}x{cols} pixels")
        data = _read_payload(path, file, IMAGE_HEADER, n * rows * cols, f"{n} images of {rows}x{cols}")
    return np.frombuffer(data, np.uint8).reshape(n, rows, cols)


def read_idx_labels(path: Path) -> np.ndarray:
    """The labels of an IDX1 file, ``(n,)`` ``uint8`` in 0..9, a read-only view of the file's bytes."""
    with _open_idx(path) as file:
        header = _read_header(path, file, LABEL_MAGIC, LABEL_HEADER, "label")
        n = int(np.frombuffer(header, ">u4", count=1, offset=4)[0])
        labels = np.frombuffer(_read_payload(path, file, LABEL_HEADER, n, f"{n} labels"), np.uint8)
    if n and labels.max() >= N_CLASSES:
        index = int(np.argmax(labels >= N_CLASSES))
        raise DataError(f"{path}: label {labels[index]} at index {index} is outside 0..{N_CLASSES - 1}")
    return labels


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


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if not len(images):
        raise DataError(f"{images_path}: holds no images")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels, but {images_path} has {len(images)} images")
    return images, labels


def _read_bytes(path: Path) -> bytes:
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/zero would be read until memory ran out
        raise DataError(f"{path}: is not a regular file; give a file of comma-separated rows")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror}") from None


@contextlib.contextmanager
def _open_idx(path: Path) -> Iterator[BinaryIO]:
    """The file as a stream, decompressed when its name ends in ``.gz``; read errors become :class:`DataError`."""
    gzipped = path.suffix == ".gz"
    try:
        with path.open("rb") as raw:
            if not gzipped:
                yield raw
                return
            if raw.read(len(GZIP_MAGIC)) != GZIP_MAGIC:
                raise DataError(f"{path}: not gzip data, although the name ends in .gz")
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) as file:
                yield file
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        if gzipped and isinstance(exc, (gzip.BadGzipFile, EOFError, zlib.error)):
            raise DataError(f"{path}: corrupt or truncated gzip data; fetch the file again") from None
        raise DataError(f"{path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None


def _read_header(path: Path, file: BinaryIO, magic: int, size: int, kind: str) -> bytes:
    """The ``size``-byte IDX header of ``file``, after checking its magic number."""
    header = file.read(size)
    _check_magic(path, header, magic)
    if len(header) < size:
        raise DataError(f"{path}: truncated: {len(header)} bytes, shorter than the {size}-byte IDX {kind} header")
    return header


def _read_payload(path: Path, file: BinaryIO, header: int, payload: int, what: str) -> bytes:
    """The ``payload`` bytes after the header, reading at most :data:`TRAILING_MARGIN` more to tell a file longer
    than its header says: a small gzip file can expand to gigabytes, so it is never decompressed in full."""
    if isinstance(file, gzip.GzipFile):
        compressed = os.fstat(file.fileno()).st_size
        if payload > MAX_DEFLATE_RATIO * compressed:
            raise DataError(
                f"{path}: truncated: the header promises {what} ({header + payload} bytes), more than "
                f"{compressed} bytes of gzip data can hold"
            )
        recorded = _gzip_size(file)
        if recorded is not None and recorded < header + payload < 2**32:
            # Deflate can still expand to a gigabyte or more: refuse on the gzip trailer, before decompressing.
            _check_length(path, recorded, header, payload, what)
    else:
        size = os.fstat(file.fileno()).st_size  # a raw file's length is known before reading it
        _check_length(path, size, header, payload, what)
    data = file.read(payload + TRAILING_MARGIN + 1)
    if len(data) > payload + TRAILING_MARGIN:
        raise DataError(f"{path}: more than {TRAILING_MARGIN} trailing bytes after {what}; stopped reading")
    _check_length(path, header + len(data), header, payload, what)
    return data


def _gzip_size(file: gzip.GzipFile) -> int | None:
    """The uncompressed size a gzip file's trailer records (modulo 2**32, of its last member), or ``None`` when the
    file is too short to hold one; read without moving ``file``'s position."""
    raw = file.fileobj
    if raw is None:
        return None
    position = raw.tell()
    raw.seek(0, os.SEEK_END)
    if raw.tell() < 18:  # a gzip header (10 bytes) and trailer (8)
        raw.seek(position)
        return None
    raw.seek(-4, os.SEEK_END)
    size = int.from_bytes(raw.read(4), "little")
    raw.seek(position)
    return size


def _check_magic(path: Path, data: bytes, expected: int) -> None:
    if len(data) < 4:
        raise DataError(f"{path}: truncated: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic == expected:
        return
    wanted = f"expected {'image' if expected == IMAGE_MAGIC else 'label'} magic 0x{expected:08x}"
    if magic in (IMAGE_MAGIC, LABEL_MAGIC):
        what = "an image file" if magic == IMAGE_MAGIC else "a label file"
        raise DataError(f"{path}: IDX magic 0x{magic:08x} is {what}, {wanted}")
    hint = "; the data is gzipped, so name the file *.gz" if data.startswith(GZIP_MAGIC) else ""
    raise DataError(f"{path}: IDX magic 0x{magic:08x} is not an MNIST IDX magic, {wanted}{hint}")


def _check_length(path: Path, length: int, header: int, payload: int, what: str) -> None:
    """Check that a file of ``length`` bytes holds exactly the ``header`` and ``payload`` it promises."""
    actual = length - header
    if actual < payload:
        raise DataError(
            f"{path}: truncated: the header promises {what} ({header + payload} bytes), found {length} bytes"
        )
    if actual > payload:
        raise DataError(f"{path}: {actual - payload} trailing bytes after {what}")


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 784)`` and labels ``(n,)``, both ``uint8``, of a CSV file of ``label,p0,...,p783`` lines.

    This is the format of the "Make Your Own Neural Network" tutorial: no quoting, whole numbers only.
    A first row of column names is a header and is skipped (see :mod:`nnexp.datasets.csv_header`). ``\\r\\n``
    line endings, a missing final newline and blank lines at the end are accepted. The parse is vectorised, a block
    of lines at a time; a bad file is reported with the line number of its first bad row.
    """
    raw = _read_bytes(path)
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n")
    end = len(raw)
    while end and raw[end - 1] == NEWLINE:
        end -= 1
    if not end:
        raise DataError(f"{path}: empty file, expected lines of label,pixel_1,...,pixel_{N_PIXELS}")
    first_newline = raw.find(b"\n", 0, end)
    first_row = raw[: first_newline if first_newline >= 0 else end].decode("utf-8", "replace").split(",")
    header_lines = 1 if is_header(path, 1, first_row) else 0
    if header_lines and first_newline < 0:
        raise DataError(f"{path}: a header line and no data rows")
    start = first_newline + 1 if header_lines else 0
    # A valid row takes at least two bytes a cell ("0,"): a file of short lines, which fails at its first row,
    # must not reserve a 785-byte table row for each of its lines first.
    rows = min(raw.count(b"\n", start, end) + 1, (end - start + 1) // (2 * CSV_COLUMNS))
    table = np.empty((rows, CSV_COLUMNS), np.uint8)
    row = 0
    for offset, block in _line_blocks(raw, start, end):
        try:
            cells = _parse_rows(block)
        except _BadRowError as bad:
            line = raw[offset + bad.start : offset + bad.stop]
            raise DataError(f"{path}: line {header_lines + row + bad.index + 1}: {_describe_row(line)}") from None
        table[row : row + len(cells)] = cells
        row += len(cells)
    return table[:, 1:], table[:, 0]


#: Bytes parsed at a time: small enough for the temporaries to stay in the CPU's cache.
BLOCK_BYTES = 1 << 18


def _line_blocks(raw: bytes, start: int, end: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, bytes)`` of consecutive blocks of whole lines of ``raw[start:end]``, each ending in a newline."""
    position = start
    while position < end:
        cut = raw.rfind(b"\n", position, min(position + BLOCK_BYTES, end))
        if cut < 0:  # a line longer than a block, or the last line
            cut = raw.find(b"\n", position, end)
        if cut < 0:  # the last line: the only bytes copied, to give it a newline
            yield position, np.frombuffer(raw[position:end] + b"\n", np.uint8)
            return
        yield position, np.frombuffer(raw, np.uint8, count=cut + 1 - position, offset=position)
        position = cut + 1


class _BadRowError(Exception):
    """Row ``index`` (0-based) of a block, its bytes ``start:stop``, is not a valid row."""

    def __init__(self, index: int, start: int, stop: int) -> None:
        super().__init__(index)
        self.index, self.start, self.stop = index, start, stop


def _parse_rows(data: np.ndarray) -> np.ndarray:
    """The cells of ``data``, lines of comma-separated whole numbers each ending in a newline, as ``(n, 785)``.

    Each check finds its first offending byte, cell or row on its own, so that the earliest bad row is the one
    reported even when rows above it are misaligned; raises :class:`_BadRowError` for it.
    """
    digits = data - ZERO  # uint8 arithmetic: every other byte wraps round to 10 or more
    is_digit = digits < 10
    is_newline = data == NEWLINE
    is_separator = is_newline | (data == COMMA)
    units = (digits * is_digit).astype(np.uint16)
    # Each cell's value accumulates at its last digit; cells of more than three digits are rejected below.
    values = units.copy()
    values[1:] += 10 * units[:-1]  # a separator contributes 0, so the tens need no mask
    values[2:] += 100 * (units[:-2] * is_digit[1:-1])  # but hundreds count only behind a tens digit
    separators = np.flatnonzero(is_separator)
    widths = np.diff(separators, prepend=-1) - 1
    cells = values[separators - 1]
    row_ends = np.flatnonzero(is_newline[separators])  # index of each row's last cell
    newlines = separators[row_ends]
    bad_rows = []
    stray = ~(is_digit | is_separator)
    if stray.any():
        bad_rows.append(int(np.searchsorted(newlines, np.argmax(stray))))
    bad_cells = (widths == 0) | (widths > 3) | (cells > 255)
    if bad_cells.any():
        bad_rows.append(int(np.searchsorted(row_ends, np.argmax(bad_cells))))
    columns = np.diff(row_ends, prepend=-1)
    label_widths = widths[np.concatenate(([0], row_ends[:-1] + 1))]
    bad_shape = (columns != CSV_COLUMNS) | (label_widths != 1)  # a label is one digit
    if bad_shape.any():
        bad_rows.append(int(np.argmax(bad_shape)))
    if bad_rows:
        first = min(bad_rows)
        raise _BadRowError(first, int(newlines[first - 1]) + 1 if first else 0, int(newlines[first]))
    return cells.reshape(-1, CSV_COLUMNS)


def _describe_row(line: bytes) -> str:
    """What is wrong with one CSV row, in words, checked in the order a reader would."""
    if not line:
        return "empty line"
    cells = line.split(b",")
    for column, cell in enumerate(cells, 1):
        if not cell.isdigit():
            shown = cell.decode("utf-8", "replace")
            return f"column {column} is empty" if not cell else f"column {column} is {shown!r}, not a whole number"
    if len(cells) != CSV_COLUMNS:
        return f"{len(cells)} columns, expected {CSV_COLUMNS} (a label and {N_PIXELS} pixels)"
    if int(cells[0]) >= N_CLASSES:
        return f"label {int(cells[0])} is outside 0..{N_CLASSES - 1}"
    if len(cells[0]) > 1:
        return f"label {cells[0].decode()!r} has leading zeros"
    for column, cell in enumerate(cells[1:], 2):
        if int(cell) > 255:
            return f"pixel {int(cell)} in column {column} is outside 0..255"
        if len(cell) > 3:
            return f"pixel {cell.decode()!r} in column {column} has more than three digits"
    return "malformed row"


def _cell_text(terminator: bytes) -> np.ndarray:
    """``(256, 4)``: the digits of each byte value and ``terminator``, padded with NUL bytes."""
    cells = b"".join((str(value).encode() + terminator).ljust(4, b"\0") for value in range(256))
    return np.frombuffer(cells, np.uint8).reshape(256, 4)


CELL_TEXT = _cell_text(b",")
LAST_CELL_TEXT = _cell_text(b"\n")


def write_csv(file: BinaryIO, images: np.ndarray, labels: np.ndarray, block_rows: int = 256) -> None:
    """Write ``labels`` ``(n,)`` and ``images`` ``(n, n_pixels)``, both ``uint8``, as ``label,p0,...`` lines."""
    for first in range(0, len(labels), block_rows):
        rows = np.column_stack((labels[first : first + block_rows], images[first : first + block_rows]))
        text = CELL_TEXT[rows]
        text[:, -1] = LAST_CELL_TEXT[rows[:, -1]]
        flat = text.ravel()
        file.write(flat[flat != 0].tobytes())


#: The tutorial's CSV files, as ``nnexp data mnist --csv`` writes them into the cache.
CSV_FILES = ("mnist_train.csv", "mnist_test.csv")


def default_mnist_dir() -> Path:
    """``$NNEXP_CACHE/mnist``, else ``$XDG_CACHE_HOME/nnexp/mnist``, else ``~/.cache/nnexp/mnist``."""
    if os.environ.get("NNEXP_CACHE"):
        return Path(os.environ["NNEXP_CACHE"]).expanduser() / "mnist"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nnexp" / "mnist"
    return Path.home() / ".cache" / "nnexp" / "mnist"
