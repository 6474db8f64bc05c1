"""Run folders: Hydra's readable ``outputs/DATE/TIME`` layout, made unique by claiming each folder atomically.

Hydra names a run's folder after the second it started in and creates it with ``exist_ok=True``, so runs started
in the same second would share one folder and overwrite each other's files. The resolver below creates the folder
itself, with ``mkdir`` (which exactly one process wins), and moves on to ``TIME_2``, ``TIME_3``, ... when the name is
taken. Hydra caches the result in the config and copies that cache into every job of a sweep, so a folder is claimed
once per run, and once per sweep.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import IO

from omegaconf import OmegaConf

from nnexp.errors import ConfigError, StartRefused

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a run folder there is not guarded against a second process
    fcntl = None

RESOLVER = "nnexp.claim"

#: The run folders of this process, so that a run that fails before writing anything of its own leaves none.
job_folders: list[Path] = []
#: Folders above a run folder that this process created, so that a failed run removes them again, and no others.
created_folders: set[Path] = set()
#: The file in a run folder that the process using the folder holds locked while it lives.
FOLDER_LOCK = ".nnexp.lock"
#: What a run that failed at setup leaves in its folder: Hydra's config copy and log, and the lock.
WRITTEN_AT_SETUP = {".hydra", "nnexp.log", FOLDER_LOCK}
#: What only a run that got going writes (with hydra.output_subdir=null, no .hydra): a folder holding one of these,
#: and more than setup leaves, holds a run.
RUN_MARKERS = {".hydra", "config.yaml", "model.npz"}
#: The locks this process holds, open until it exits.
_held: list[IO[str]] = []
#: Hydra's flags that show the config instead of running it: a folder is then named but not created.
SHOW_ONLY_FLAGS = ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")

#: What a failed write's errno means for the user, and what to do about it.
_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is exceeded; free some space",
    errno.EROFS: "the file system is read-only; run from a writable folder or set hydra.run.dir",
    errno.EACCES: "permission denied; run from a folder you may write or set hydra.run.dir",
    errno.EPERM: "permission denied; run from a folder you may write or set hydra.run.dir",
    errno.ENOTDIR: "a part of the path is a file, where a folder is expected",
    errno.EEXIST: "a file stands where a folder is expected",
    errno.EISDIR: "a folder stands where a file is expected",
}


def describe_os_error(exc: OSError, doing: str | None = None, where: Path | None = None) -> str:
    """One line for a failed file operation: what was being done, the path (else ``where``), the system's reason
    and a hint."""
    path = exc.filename if exc.filename is not None else (f"in {where}" if where else "")
    reason = exc.strerror or type(exc).__name__
    hint = dangling_link(exc.filename) or _OS_HINTS.get(exc.errno or 0)
    if doing is None:
        doing = "write" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"
    return f"cannot {doing} {path}".rstrip() + f": {reason}" + (f" ({hint})" if hint else "")


def dangling_link(path: object) -> str | None:
    """What stands at ``path`` when it is a symbolic link to nothing, which ``mkdir`` finds taken but no folder;
    ``None`` otherwise."""
    if not isinstance(path, (str, Path)) or not os.path.islink(path) or os.path.exists(path):
        return None
    return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; create that or remove the link"


def claim(path: str) -> str:
    """Create the folder ``path``, or ``path_2``, ``path_3``, ... if another run has it; returns the one created.
    A command line that only shows the config (``--cfg``) gets the name it would claim, and nothing is created."""
    wanted = Path(path)
    if any(flag in sys.argv for flag in SHOW_ONLY_FLAGS):
        return str(wanted)
    try:
        wanted.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(describe_os_error(exc, "create the run folder")) from None
    candidate, number = wanted, 1
    while True:
        try:
            candidate.mkdir()
        except FileExistsError:
            number += 1
            candidate = wanted.with_name(f"{wanted.name}_{number}")
            continue
        except OSError as exc:
            raise ConfigError(describe_os_error(exc, "create the run folder")) from None
        job_folders.append(candidate)
        return str(candidate)


def register_resolver() -> None:
    """Make ``${nnexp.claim:PATH}`` available to configs; cached, so a config claims its folder once."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, claim, use_cache=True)


class FolderRefused(StartRefused):
    """A run folder that is in use or already holds a run."""


def check_hydra_paths(output_subdir: str | None, job_name: str | None) -> None:
    """Refuse Hydra settings that would write a run's files outside its folder: ``hydra.output_subdir`` (its
    ``.hydra`` copies of the config) and ``hydra.job.name`` (its ``<name>.log``)."""
    if output_subdir is not None and (Path(output_subdir).is_absolute() or ".." in Path(output_subdir).parts):
        raise FolderRefused(
            f"hydra.output_subdir={output_subdir}: must be a folder inside the run's folder, such as .hydra"
        )
    if job_name is not None and ("/" in job_name or job_name in ("", ".", "..")):
        raise FolderRefused(f"hydra.job.name={job_name!r}: names the run's log file, <name>.log; write a plain name")


def use_run_folder(folder: Path, resuming: bool) -> None:
    """Create ``folder`` and lock it for this process; refuse, in one line, a folder another process is using or,
    unless ``resuming``, one that already holds a run. A folder that cannot be created is left for Hydra to report."""
    if folder.resolve() == Path.cwd().resolve():  # hydra.run.dir='' or .: the project's own files beside the run's
        raise FolderRefused(
            f"hydra.run.dir={str(folder)!r} is the folder nnexp runs from; a run needs a folder of its own, "
            "such as outputs/NAME"
        )
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    created_folders.update(path.resolve() for path in missing[1:])
    entries = {entry.name for entry in folder.iterdir()}
    holds_run = bool(entries & RUN_MARKERS) or (folder / "checkpoints").is_dir()
    if not resuming and holds_run and entries - WRITTEN_AT_SETUP:
        raise FolderRefused(
            f"hydra.run.dir={folder} already holds a run ({', '.join(sorted(entries - {FOLDER_LOCK}))}); "
            "choose another folder, or resume it with resume=<id>"
        )
    if fcntl is None:
        return
    # Held open, and so locked, until the process exits.
    lock = open(folder / FOLDER_LOCK, "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise FolderRefused(f"run folder {folder} is in use by another nnexp process; wait until it ends") from None
    _held.append(lock)


def discard_job_dir(output_dir: Path) -> None:
    """Remove a job directory that holds only what Hydra wrote before the job failed, so no stray output remains."""
    discard_dir(output_dir, WRITTEN_AT_SETUP)


def discard_dir(directory: Path, written_before_work: set[str]) -> None:
    """Remove ``directory`` if it holds nothing but ``written_before_work``, and then each parent that is left empty
    and is either inside the folder nnexp runs in (a date folder, ``outputs``) or was created by this process."""
    if directory.is_dir() and {entry.name for entry in directory.iterdir()} <= written_before_work:
        shutil.rmtree(directory)
        top = Path.cwd().resolve()
        for parent in directory.resolve().parents:
            ours = parent in created_folders or top in parent.parents
            if parent == top or not ours or any(parent.iterdir()):
                break
            parent.rmdir()


def discard_unused_folders() -> None:
    """Remove every run folder of this process that holds only what Hydra writes before a job starts."""
    for folder in job_folders:
        discard_job_dir(folder)
