"""Checks of the files nnexp reads back (checkpoint manifests, outboxes, model folders): they are data, never commands.

Every failed check raises :class:`DataError` in one line naming the file and the field, what was expected and what
was found, before anything in the file is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np

from nnexp.errors import DataError, format_bytes

#: An MLflow run id.
RUN_ID = re.compile(r"[0-9a-f]{32}")
#: How many values YAML read back (a preset, a manifest's config) may copy through its aliases: each copy becomes a
#: node, and a few lines of nested aliases copy billions (the "billion laughs"), which loading builds one by one.
MAX_ALIASED_VALUES = 10_000
#: How much of a bad value a message shows.
SHOWN_CHARACTERS = 200
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def shown(value: object) -> str:
    """``value`` for a message: its repr, shortened so the message stays one readable line."""
    if isinstance(value, Mapping):
        return "an object" if len(repr(value)) > SHOWN_CHARACTERS else repr(value)
    if isinstance(value, list) and len(repr(value)) > SHOWN_CHARACTERS:
        return f"a list of {len(value)} items"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


class Fields:
    """Checks of the fields of one file; a failure names the file (``source``) and the field."""

    def __init__(self, source: str | Path) -> None:
        self.source = source

    def fail(self, field: str, expected: str, found: object) -> NoReturn:
        raise DataError(f"{self.source}: {field} must be {expected}, found {shown(found)}")

    def check(self, condition: bool, field: str, expected: str, found: object) -> None:
        if not condition:
            self.fail(field, expected, found)

    def mapping(self, value: object, field: str) -> dict[str, Any]:
        """``value``, which must be a JSON object with string keys."""
        self.check(isinstance(value, dict) and all(isinstance(key, str) for key in value), field, "an object", value)
        return value  # type: ignore[return-value]

    def get(self, record: Mapping[str, Any], field: str) -> Any:
        """The value of dotted ``field`` (``progress.epoch``) in ``record``, the object holding its last part."""
        key = field.rsplit(".", 1)[-1]
        if key not in record:
            raise DataError(f"{self.source}: {field} is missing")
        return record[key]

    def string(self, value: object, field: str, pattern: re.Pattern[str] | None = None, expected: str = "") -> str:
        """``value``, a string (matching ``pattern`` whole, described by ``expected``, when given)."""
        valid = isinstance(value, str) and (pattern is None or pattern.fullmatch(value) is not None)
        self.check(valid, field, expected or "a string", value)
        return value  # type: ignore[return-value]

    def strings(self, value: object, field: str) -> list[str]:
        self.check(isinstance(value, list) and all(isinstance(item, str) for item in value), field, "strings", value)
        return value  # type: ignore[return-value]

    def integer(self, value: object, field: str, low: int = 0, high: int | None = None) -> int:
        """``value``, an integer (not a bool) within ``low..high``."""
        expected = f"an integer {low}..{high}" if high is not None else f"an integer >= {low}"
        valid = isinstance(value, int) and not isinstance(value, bool) and low <= value
        self.check(valid and (high is None or value <= high), field, expected, value)  # type: ignore[operator]
        return value  # type: ignore[return-value]

    def number(
        self, value: object, field: str, low: float | None = None, nan: bool = False, high: float | None = None
    ) -> float:
        """``value``, a finite number (not a bool) of at least ``low`` and at most ``high``; NaN too when ``nan``."""
        expected = "a finite number" + (f" >= {low:g}" if low is not None else "")
        expected += (f" and <= {high:g}" if high is not None else "") + (" or NaN" if nan else "")
        valid = isinstance(value, int | float) and not isinstance(value, bool)
        if valid and not (nan and math.isnan(value)):  # type: ignore[arg-type]
            valid = math.isfinite(value) and (low is None or value >= low)  # type: ignore[arg-type]
            valid = valid and (high is None or value <= high)  # type: ignore[operator]
        self.check(valid, field, expected, value)
        return float(value)  # type: ignore[arg-type]


#: The training time of an epoch a file may claim: a year.
EPOCH_SECONDS_AT_MOST = 365 * 24 * 3600.0
#: The range of each metric training logs, by its name in a run's history: (at least, at most). Both losses nnexp
#: has are >= 0, as a checkpoint's sum of batch losses must be.
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "train_loss": (0.0, None),
    "val_loss": (0.0, None),
    "test_loss": (0.0, None),
    "train_accuracy": (0.0, 1.0),
    "val_accuracy": (0.0, 1.0),
    "test_accuracy": (0.0, 1.0),
    "epoch_seconds": (0.0, EPOCH_SECONDS_AT_MOST),
    "learning_rate": (0.0, None),
}


def check_metric(fields: Fields, metric: str, value: object, field: str, nan: bool = False) -> None:
    """``value`` of ``metric`` (a history's name) must be a finite number within its range (or NaN, when ``nan``):
    checkpoints and outboxes become the run's record in MLflow, and early stopping reads a checkpoint's."""
    low, high = METRIC_RANGES.get(metric, (None, None))
    number = fields.number(value, field, low, nan, high)
    # A schedule's rate is checked to be > 0 every epoch, so none of nnexp's runs trained at 0.
    fields.check(metric != "learning_rate" or number != 0, field, "a rate > 0", value)


#: The longest class name a model keeps: one is printed in each line of ``nnexp predict`` and names a column of its
#: table; a longer one is no class's name (the longest of ImageNet's thousand is 121 characters).
MAX_CLASS_NAME = 250


def printable(name: object) -> bool:
    """Whether ``name`` is a string without control characters or line separators: a class name is printed inside
    one line of output (``nnexp predict``), which a newline in it would split."""
    return isinstance(name, str) and name.isprintable()


def check_weights(path: Path, arrays: Mapping[str, np.ndarray], dtype: np.dtype, whose: str, kind: str) -> None:
    """Each of ``arrays`` (read from ``path``) must be finite numbers of ``dtype``, which ``whose`` names; raises
    :class:`DataError` naming the file and the array. Loading would cast int64 or float16 weights silently, and NaN
    weights predict nothing (training stops at the first non-finite loss, before any ``kind`` is saved)."""
    for key, array in arrays.items():
        if array.dtype != dtype:
            raise DataError(f"{path}: {key} is {array.dtype}, but {whose} is {dtype}")
        if not np.isfinite(array).all():
            raise DataError(f"{path}: {key} holds NaN or infinity, which no {kind} of nnexp's does")


def parse_json(text: str) -> object:
    """``json.loads``, with JSON nested too deep for Python's recursive parser (a crafted file) raised as the
    ValueError any other malformed JSON raises, so that a reader's one ``except ValueError`` covers both."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError(str(exc)) from None


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, symbolic links followed, is ``folder`` or lies within it."""
    return path.resolve().is_relative_to(folder.resolve())


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened to read its bytes if it is a regular file, symbolic links followed; otherwise a
    :class:`DataError` ``PATH: not a regular file``: a FIFO would block its reader for ever, a device never end.

    The file is opened without blocking (a FIFO opens at once, without a writer) and the opened descriptor is
    checked, so that no other file can take its place between the check and the reads.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise DataError(f"{path}: not a regular file")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


#: The largest JSON or YAML file nnexp reads back (a checkpoint manifest, ``network.json``, ``MLmodel``): those it
#: writes hold a config, layer sizes and class names, a few kilobytes (a format 1 manifest, with its metric history,
#: about 150 bytes an epoch); more is no file of nnexp's, and parsing it would take several times its size.
MAX_TEXT_BYTES = 16 * 2**20


def size_text(size: int) -> str:
    """A size in bytes for a message: ``314572800 bytes (300.0 MiB)``."""
    return f"{size} bytes ({format_bytes(size)})"


def read_text(path: Path, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the regular file ``path`` (see :func:`open_regular`), which must hold at most ``limit``
    bytes; a larger one raises :class:`DataError` naming its size before any of it is read."""
    with open_regular(path) as file:
        size = os.fstat(file.fileno()).st_size
        data = file.read(limit + 1) if size <= limit else b""  # a file growing after the check is cut off there
        if len(data) > limit or size > limit:
            found = size_text(max(size, len(data)))
            raise DataError(f"{path}: {found}, more than the {size_text(limit)} nnexp reads from such a file")
        return data.decode()


def check_regular(path: Path) -> None:
    """Raise :class:`DataError` ``PATH: not a regular file`` unless ``path`` (links followed) is one: for a file
    another library opens, such as an artifact MLflow uploads."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:  # a link to nothing, say
        raise DataError(f"{path}: cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file")


def sha256_of(path: Path) -> str:
    """The hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open_regular(path) as file:
        while chunk := file.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def npz_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of each array of the ``.npz`` file ``path``, from its headers alone: nothing is allocated.

    Raises :class:`DataError` for a file that is no regular file or no ``.npz``, an array of Python objects, or one
    whose header promises more data than the file holds (a truncated or crafted file).
    """
    found = {}
    try:
        with open_regular(path) as file, zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in HEADER_READERS:
                        raise DataError(f"{path}: array {name}: .npy format {version} is not one nnexp writes")
                    shape, _, dtype = HEADER_READERS[version](member)
                    header = member.tell()
                if dtype.hasobject:
                    raise DataError(f"{path}: array {name} holds Python objects; nnexp saves numbers only")
                size = math.prod(shape) * dtype.itemsize
                if header + size > info.file_size:
                    raise DataError(
                        f"{path}: array {name} declares {shape} {dtype} ({size} bytes), but the file holds "
                        f"{info.file_size - header}"
                    )
                found[name] = (tuple(shape), dtype)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise unreadable_npz(path, exc) from None
    return found


def unreadable_npz(path: Path, exc: Exception) -> DataError:
    """The error for the ``.npz`` file ``path`` that ``exc`` kept from being read; a system error by its reason alone,
    without the path it names again."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return DataError(f"{path}: not a readable .npz file: {reason}")


def check_npz_data(path: Path) -> None:
    """Raise :class:`DataError` if the data of an array of the ``.npz`` file ``path`` fails its CRC (a flipped bit),
    read in chunks: none is held whole in memory."""
    try:
        with open_regular(path) as file, zipfile.ZipFile(file) as archive:
            damaged = archive.testzip()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise unreadable_npz(path, exc) from None
    if damaged is not None:
        raise DataError(f"{path}: not a readable .npz file: Bad CRC-32 for file {damaged!r}")


def load_npz(path: Path, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays ``names`` (all by default) of the ``.npz`` file ``path``, which the caller checked by their headers
    (:func:`npz_arrays`) first; a corrupt file (a flipped bit fails its CRC) raises :class:`DataError`.

    Only the arrays asked for are decompressed: another member, however large, costs nothing.
    """
    try:
        with open_regular(path) as file, np.load(file, allow_pickle=False) as data:
            return {key: data[key] for key in data.files if names is None or key in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise unreadable_npz(path, exc) from None


def yaml_events(source: Path | str) -> Iterator[Any]:
    """The YAML parser's events for the file ``source`` (or, given a str, for that text), read without building
    anything; they end early, without an error, where the file cannot be read or stops being YAML (loading it names
    that)."""
    import yaml

    try:
        if isinstance(source, str):
            yield from yaml.parse(source)
            return
        with source.open(encoding="utf-8") as file:
            yield from yaml.parse(file)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return


def aliased_too_much(source: Path | str, limit: int = MAX_ALIASED_VALUES) -> str | None:
    """What is wrong when the YAML in ``source`` (a file, or a str of YAML text) copies more than ``limit`` values
    through its aliases, counted from its parser's events so that nothing is expanded; ``None`` otherwise, and for
    text that is not YAML, whose error loading it names (its events end where it stops being YAML)."""
    import yaml

    sizes: dict[str, int] = {}  # the values of each anchored node, its own aliases' copies counted
    open_nodes: list[tuple[str | None, int]] = [(None, 0)]  # the anchor and values so far of each open collection
    copied = 0
    for event in yaml_events(source):
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append((anchor, 0))
            continue
        if isinstance(event, yaml.AliasEvent):
            size, anchor = sizes.get(event.anchor, 1), None
            copied += size
            if copied > limit:
                line = event.start_mark.line + 1
                return f"line {line}: its YAML aliases (here *{event.anchor}) copy more than {limit} values"
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, inner = open_nodes.pop()
            size = inner + 1
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        outer, values = open_nodes[-1]
        open_nodes[-1] = (outer, values + size)
    return None
