"""The argument parser of every ``nnexp`` sub-command: a bad command line is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors read ``error: <prog>: <message> (see <prog> --help)``
    instead of a usage block; the sub-command parsers it adds are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")
