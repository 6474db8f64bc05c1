"""MNIST's CSV form, a label then 784 pixels per line: read in blocks without a per-cell Python loop, and written
the same way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nnexp.datasets.csv_header import is_header
from nnexp.datasets.csv_lines import read_lines
from nnexp.datasets.idx_format import N_CLASSES, N_PIXELS
from nnexp.errors import DataError, abbreviated

CSV_COLUMNS = 1 + N_PIXELS
UTF8_BOM = b"\xef\xbb\xbf"
COMMA, NEWLINE, ZERO = ord(","), ord("\n"), ord("0")


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 784)`` and labels ``(n,)``, both ``uint8``, of a CSV file of ``label,p0,...,p783`` lines.

    This is the format of the "Make Your Own Neural Network" tutorial: no quoting, whole numbers only.
    A first row of column names is a header and is skipped (see :mod:`nnexp.datasets.csv_header`). ``\\r\\n``
    line endings, a missing final newline and blank lines at the end are accepted. The parse is vectorised, a block
    of lines at a time; a bad file is reported with the line number of its first bad row.
    """
    # A line longer than a block is refused as it is read: a first line of a hundred million cells would take
    # gigabytes to split, and a header of megabytes would be skipped unread.
    raw = read_lines(path, BLOCK_BYTES, lambda line: _long_line(path, line))
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
    first_end = first_newline if first_newline >= 0 else end
    first_row = raw[:first_end].decode("utf-8", "replace").split(",")
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


def _long_line(path: Path, line: int) -> DataError:
    return DataError(
        f"{path}: line {line}: longer than {BLOCK_BYTES:,} bytes, where a row of a label and {N_PIXELS} pixels takes "
        f"at most {4 * CSV_COLUMNS - 1:,}"
    )


#: Bytes parsed at a time: small enough for the temporaries to stay in the CPU's cache.
BLOCK_BYTES = 1 << 18


def _line_blocks(raw: bytearray, start: int, end: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, bytes)`` of consecutive blocks of whole lines of ``raw[start:end]``, each ending in a newline; no
    line is longer than a block (:func:`read_lines` refused it)."""
    position = start
    while position < end:
        cut = raw.rfind(b"\n", position, min(position + BLOCK_BYTES, end))
        if cut < 0:  # a line of exactly a block, or the last line
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
            shown = abbreviated(cell.decode("utf-8", "replace"))
            return f"column {column} is empty" if not cell else f"column {column} is {shown!r}, not a whole number"
    if len(cells) != CSV_COLUMNS:
        return f"{len(cells)} columns, expected {CSV_COLUMNS} (a label and {N_PIXELS} pixels)"
    if _above(cells[0], N_CLASSES - 1):
        return f"label {_number(cells[0])} is outside 0..{N_CLASSES - 1}"
    if len(cells[0]) > 1:
        return f"label {abbreviated(cells[0].decode())!r} has leading zeros"
    for column, cell in enumerate(cells[1:], 2):
        if _above(cell, 255):
            return f"pixel {_number(cell)} in column {column} is outside 0..255"
        if len(cell) > 3:
            return f"pixel {abbreviated(cell.decode())!r} in column {column} has more than three digits"
    return "malformed row"


def _above(cell: bytes, largest: int) -> bool:
    """Whether the digits ``cell`` make a number above ``largest``, told by their count first: Python refuses to
    convert more than 4,300 digits."""
    digits = cell.lstrip(b"0")
    return len(digits) > len(str(largest)) or int(digits or b"0") > largest


def _number(cell: bytes) -> str:
    """The number the digits ``cell`` make, for a message: without leading zeros, and cut short when long."""
    return abbreviated(cell.lstrip(b"0").decode() or "0")


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
