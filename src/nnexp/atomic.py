"""Atomic file writes: readers see the old file or the whole new one, never half of it."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

#: The folders of a run folder, besides the folder itself, that nnexp writes files into with :func:`replacing`.
RUN_SUBFOLDERS = ("checkpoints", "plots")
#: The name of :func:`replacing`'s temporary file: ``.<stem>.<8 hex digits>.partial<suffix>``.
PARTIAL = re.compile(r"\..+\.[0-9a-f]{8}\.partial(\.[^.]*)?")


@contextmanager
def replacing(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """A temporary sibling of ``path`` (same suffix) that replaces ``path`` only once fully written.

    On any error, Ctrl-C included, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    # os.open with 0o666 honours the umask, unlike mkstemp's 0o600, so the files stay readable by others.
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, mode, newline=None if "b" in mode else "") as file:
            yield file
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def remove_partials(folder: Path) -> list[Path]:
    """Remove the temporary files that writes into ``folder`` left when their process was killed; returns them.

    Only the one process that writes into ``folder`` may call this, when it is not writing: a partial file is then
    stale, never another writer's work in progress.
    """
    stale = [path for path in folder.iterdir() if PARTIAL.fullmatch(path.name) and path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def remove_run_partials(folder: Path, subfolders: tuple[str, ...] = RUN_SUBFOLDERS) -> list[Path]:
    """:func:`remove_partials` for run folder ``folder`` and its ``subfolders``; returns the files removed.

    Call it once the process that wrote into the run folder is gone, or from the process that now holds it.
    """
    removed = []
    for directory in (folder, *(folder / name for name in subfolders)):
        with contextlib.suppress(OSError):  # a folder that is gone or cannot be listed holds nothing to remove
            removed += remove_partials(directory)
    return removed
