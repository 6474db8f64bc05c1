"""The first row of a CSV file of numbers: a header of column names, or data.

A row is a header only when none of its cells is a number and each is a plausible column name. A first row that
holds a number (``1,0x10``) is data, whose bad cells the reader reports, never a header that silently drops it.
"""

from __future__ import annotations

import re
from pathlib import Path

from nnexp.errors import DataError, abbreviated

#: A column name: a word that starts with a letter or ``_`` ("label", "pixel_1", "x 2"), or a pixel's place such
#: as "1x1" (the header of the Kaggle MNIST files).
NAME = re.compile(r"[^\W\d][^,]*|\d+x\d+")


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def is_header(path: Path, line: int, cells: list[str]) -> bool:
    """Whether ``cells``, the first row of ``path`` (at ``line``), is a header of column names; raises
    :class:`DataError` naming a cell that makes a row of no numbers no header either."""
    if any(is_number(cell) for cell in cells) or not "".join(cells).strip():  # data, good or bad, for the reader
        return False
    for column, cell in enumerate(cells, 1):
        shown = cell.strip()
        if not NAME.fullmatch(shown.removeprefix('"').removesuffix('"')):
            raise DataError(
                f"{path}: line {line}, column {column}: {abbreviated(shown)!r} is neither a number nor a column name"
            )
    return True
