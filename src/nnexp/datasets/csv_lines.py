"""A CSV file's bytes, read a line at a time with every line bounded: a file of one endless line (a sparse file of
gigabytes) is refused at its first bytes, not after it has been read whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nnexp.errors import DataError

#: The read buffer: a line at a time through the default 8 KiB one took twice as long as reading the file whole.
BUFFER_BYTES = 1 << 18


def read_lines(path: Path, limit: int, too_long: Callable[[int], DataError]) -> bytearray:
    """The bytes of ``path``, of which at most ``limit + 1`` bytes of each line are read: raises ``too_long(n)`` at
    line ``n`` if it is longer than ``limit`` bytes without its newline."""
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/zero would be read until memory ran out
        raise DataError(f"{path}: is not a regular file; give a file of comma-separated rows")
    data = bytearray()
    try:
        with path.open("rb", buffering=BUFFER_BYTES) as file:
            for number, line in enumerate(iter(lambda: file.readline(limit + 1), b""), 1):
                if len(line) > limit and not line.endswith(b"\n"):
                    raise too_long(number)
                data += line
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror}") from None
    return data
