"""Hydra's own flags on nnexp's command line: the help nnexp answers itself, quickly, and what it leaves to Hydra."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

#: The flags that ask for the app's help, as Hydra spells them.
HELP_FLAGS = ("-h", "--help")

#: An override of Hydra's own config (``hydra.job.name=x``, ``~hydra/launcher``), as against the app's.
_HYDRA_OVERRIDE = re.compile(r"[+~]*hydra([./@=]|$)")


def quick_help(arguments: list[str], config_dir: Path | None) -> bool:
    """Print ``--help`` for a command line of overrides, ``--help`` and ``--resolve``; False leaves Hydra to
    answer any other (``-cn``, ``--hydra-help``, ...), slowly but in full."""
    from nnexp.config import help_text

    if not any(item in HELP_FLAGS for item in arguments):
        return False
    if any(item.startswith("-") and item not in (*HELP_FLAGS, "--resolve") for item in arguments):
        return False
    overrides = [item for item in arguments if not item.startswith("-")]
    text = help_text(config_dir, overrides, resolve="--resolve" in arguments)
    if text is None:
        return False
    print(text)
    return True


def hydra_help_arguments(arguments: list[str]) -> list[str]:
    """``arguments`` without the app's overrides when they ask for Hydra's help: Hydra composes its own config
    alone for ``--hydra-help``, where ``dataset=x`` is no key. Hydra's overrides stay (``hydra.hydra_help.template``
    changes the help), and so does the rest with ``--help``, which Hydra answers first."""
    flags = hydra_flags(arguments)
    if not flags.hydra_help or flags.help:
        return arguments
    apps = [item for item in flags.overrides if not _HYDRA_OVERRIDE.match(item)]
    return [item for item in arguments if item not in apps]


def hydra_flags(arguments: list[str]) -> argparse.Namespace:
    """The command line ``arguments`` as Hydra's own parser reads them."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_known_args(arguments)[0]


def shown_resolved(flags: argparse.Namespace) -> tuple[list[str], str] | None:
    """For a command line that shows nnexp's config resolved (``--cfg job --resolve``), by Hydra's reading of its
    ``flags``: its overrides and which config it shows (job, hydra or all); else ``None``."""
    # With -p PACKAGE Hydra resolves that part only; with another primary config nnexp's would not be the one shown.
    whole = not (flags.package or flags.config_name or flags.config_path or flags.config_dir)
    if not (flags.cfg and flags.resolve and whole and not flags.multirun):
        return None
    return flags.overrides, flags.cfg
