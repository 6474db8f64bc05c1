"""MNIST's IDX files, gzipped or raw: found under either spelling, headers and lengths checked, and decompression
bounded by what the header implies."""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nnexp.errors import DataError

N_CLASSES = 10
N_PIXELS = 28 * 28
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


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if not len(images):
        raise DataError(f"{images_path}: holds no images")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels, but {images_path} has {len(images)} images")
    return images, labels


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


def check_distinct(train: Path, test: Path, what: str) -> None:
    """Refuse test data read from the training file (a link or the same path twice): its metrics would measure
    what the network memorised, not how it generalises. ``what`` names the two in the message."""
    if train.is_file() and test.is_file() and os.path.samefile(train, test):
        raise DataError(f"{what} are the same file ({train.resolve()}); test on data the network is not trained on")


