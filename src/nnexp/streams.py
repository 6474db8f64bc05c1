"""The process's standard streams: one closed at start (``2>&-``) is opened on the null device, so that every writer
works unchanged, and a command whose output is what it gives says when that output was lost."""

from __future__ import annotations

import io
import os
import sys
from typing import TextIO

#: The standard streams, by their file descriptors, and the mode each is opened in.
STANDARD_STREAMS = (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w"))

#: Whether this command runs jobs, whose lines on stdout tell of the work rather than being it.
running = False


def open_closed_streams() -> None:
    """Point a standard stream closed at start (``2>&-``), which Python leaves as ``None``, at the null device: every
    writer (progress, logging, error lines) then works unchanged, and a file nnexp opens later cannot take the
    descriptor, where a child process (the plotting process, a launcher's worker) would take it for its own stream.
    What nnexp prints there is lost; its exit status still tells."""
    for name, descriptor, mode in STANDARD_STREAMS:
        if getattr(sys, name) is not None:
            continue
        null = os.open(os.devnull, os.O_RDWR)
        if null != descriptor and not descriptor_open(descriptor):
            os.dup2(null, descriptor)
            os.close(null)
            null = descriptor
        os.set_inheritable(null, True)  # a child process's stream too, as the descriptor it replaces would have been
        if name == "stdout":
            stream: TextIO = NullOutput(io.FileIO(null, mode))
        else:
            stream = open(null, mode, errors="backslashreplace" if name == "stderr" else None)  # noqa: SIM115 - for good
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


class NullOutput(io.TextIOWrapper):
    """Standard output that was closed at start, on the null device: it remembers whether anything was written."""

    written = False

    def write(self, text: str) -> int:
        self.written = self.written or bool(text)
        return super().write(text)


def lost_output() -> bool:
    """Whether a command whose output is what it gives (``runs``, ``--help``, not a run) wrote to a closed stdout."""
    return isinstance(sys.stdout, NullOutput) and sys.stdout.written and not running


def descriptor_open(descriptor: int) -> bool:
    """Whether ``descriptor`` names an open file of this process."""
    try:
        os.fstat(descriptor)
    except OSError:
        return False
    return True
