"""Run folders: Hydra's readable ``outputs/DATE/TIME`` layout, made unique by claiming each folder atomically.

Hydra names a run's folder after the second it started in and creates it with ``exist_ok=True``, so runs started
in the same second would share one folder and overwrite each other's files. The resolver below creates the folder
itself, with ``mkdir`` (which exactly one process wins), and moves on to ``TIME_2``, ``TIME_3``, ... when the name is
taken. Hydra caches the result in the config and copies that cache into every job of a sweep, so a folder is claimed
once per run, and once per sweep.

Over 350 lines because what a run or sweep creates in the project and what may later be removed as its leftovers
are one rule: the names written at setup, the locks and the removal that trusts them stay side by side.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from nnexp.atomic import remove_run_partials
from nnexp.errors import ConfigError, StartRefused
from nnexp.tracking import liveness

if TYPE_CHECKING:
    import argparse

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a run folder there is not guarded against a second process
    fcntl = None

RESOLVER = "nnexp.claim"
#: The settings that say where a run and a sweep write, which a folder that cannot be written asks to change.
RUN_DIR = "hydra.run.dir"
SWEEP_DIR = "hydra.sweep.dir"

#: The run folders of this process, so that a run that fails before writing anything of its own leaves none.
job_folders: list[Path] = []
#: Folders above a run folder that this process created, so that a failed run removes them again, and no others.
created_folders: set[Path] = set()
#: The file in a run folder that the process using the folder holds locked while it lives.
FOLDER_LOCK = ".nnexp.lock"
#: What a run that failed at setup leaves in its folder, as paths inside it: Hydra's copies of the config, the job's
#: log and the lock. A folder is removed as a leftover only when it holds nothing else, at any depth.
WRITTEN_AT_SETUP = frozenset(
    {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "nnexp.log", FOLDER_LOCK}
)
#: The names in a run folder itself that setup leaves.
SETUP_ENTRIES = frozenset(path.partition("/")[0] for path in WRITTEN_AT_SETUP)
#: How Hydra's job logging starts each line of a job's log: ``[2026-11-26 10:34:43,123][nnexp][INFO] - ``; a log
#: holding any other line holds something a user wrote.
LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[[^\]\n]*\]\[[A-Z]+\] - ")
#: What only a run that got going writes (with hydra.output_subdir=null, no .hydra): a folder holding one of these,
#: and more than setup leaves, holds a run.
RUN_MARKERS = {".hydra", "config.yaml", "model.npz", "model", "plots"}
#: What a run writes and a user's own folder seldom holds: a refused folder holding one of these is named as holding
#: a run, which ``resume=`` may continue.
RESUMABLE = {".hydra", "config.yaml", "model.npz", "checkpoints"}
#: The key of a folder's lock record saying that the folder's MLflow run was opened.
OPENED = "run_opened"
#: The key of a folder's lock record naming the tracking store its run is opened in.
STORE = "store"
#: The key of a folder's lock record saying that nnexp saved the MLflow model folder in it: a later attempt of the
#: same run may replace that folder, and no other.
MODEL_SAVED = "model_saved"
#: The locks this process holds, open until it exits.
_held: list[IO[str]] = []
#: What setup's files held in each resumed run's folder before this process wrote them (None: there was none), put
#: back by :func:`restore_setup_files` when the resume is refused.
_before_resume: dict[Path, dict[str, bytes | None]] = {}
#: Whether this process only shows the config (``--cfg``, ``--info``, shell completion): a folder is then named but
#: not created. Set from Hydra's own reading of the command line (:func:`note_showing_only`).
showing_only = False

#: What a failed write's errno means for the user, and what to do about it.
_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is exceeded; free some space",
    errno.EROFS: "the file system is read-only; run from a writable folder or set {setting}",
    errno.EACCES: "permission denied; run from a folder you may write or set {setting}",
    errno.EPERM: "permission denied; run from a folder you may write or set {setting}",
    errno.ENOTDIR: "a part of the path is a file, where a folder is expected",
    errno.EEXIST: "a file stands where a folder is expected",
    errno.EISDIR: "a folder stands where a file is expected",
}


def describe_os_error(
    exc: OSError, doing: str | None = None, where: Path | None = None, setting: str = RUN_DIR
) -> str:
    """One line for a failed file operation: what was being done, the path (else ``where``), the system's reason
    and a hint, which names ``setting`` (:data:`RUN_DIR` or :data:`SWEEP_DIR`) as where to write instead."""
    path = exc.filename if exc.filename is not None else (f"in {where}" if where else "")
    reason = exc.strerror or type(exc).__name__
    hint = dangling_link(exc.filename) or _OS_HINTS.get(exc.errno or 0, "").format(setting=setting)
    if doing is None:
        doing = "write" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"
    return f"cannot {doing} {path}".rstrip() + f": {reason}" + (f" ({hint})" if hint else "")


def dangling_link(path: object) -> str | None:
    """What stands at ``path`` when it is a symbolic link to nothing, which ``mkdir`` finds taken but no folder;
    ``None`` otherwise."""
    if not isinstance(path, (str, Path)) or not os.path.islink(path) or os.path.exists(path):
        return None
    return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; create that or remove the link"


#: What a path holds, by the file type its mode names, for a message; a regular file and a folder are not listed.
SPECIAL_FILES = {
    stat.S_ISFIFO: "a named pipe (FIFO)",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
}


def special_file(path: Path) -> str | None:
    """What ``path`` (symbolic links followed) is if it exists and is neither a regular file nor a folder, such as
    ``a named pipe (FIFO)``; None otherwise. Only its mode is read: opening a FIFO blocks until a writer comes."""
    try:
        mode = path.stat().st_mode
    except OSError:  # missing: a new store; unreadable: MLflow says why when it opens it
        return None
    return next((kind for test, kind in SPECIAL_FILES.items() if test(mode)), None)


def claim(path: str, setting: str = RUN_DIR) -> str:
    """Create the folder ``path`` of ``setting`` (:data:`RUN_DIR` or :data:`SWEEP_DIR`), or ``path_2``, ``path_3``,
    ... if another run has it; returns the one created. A command line that only shows the config (``--cfg``) gets
    the name it would claim, and nothing is created."""
    wanted = Path(path)
    if showing_only:
        return str(wanted)
    doing = f"create the {'sweep' if setting == SWEEP_DIR else 'run'} folder"
    try:
        wanted.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(describe_os_error(exc, doing, setting=setting)) from None
    candidate, number = wanted, 1
    while True:
        try:
            candidate.mkdir()
        except FileExistsError:
            number += 1
            candidate = wanted.with_name(f"{wanted.name}_{number}")
            continue
        except OSError as exc:
            raise ConfigError(describe_os_error(exc, doing, setting=setting)) from None
        job_folders.append(candidate)
        return str(candidate)


def note_showing_only(flags: argparse.Namespace) -> None:
    """Note whether the command line only shows the config, by Hydra's reading of its ``flags`` (``--cfg=job`` as
    well as ``-c job``)."""
    global showing_only
    showing_only = bool(flags.cfg or flags.info or flags.shell_completion)


def register_resolver() -> None:
    """Make ``${nnexp.claim:PATH}`` (``${nnexp.claim:PATH,hydra.sweep.dir}`` for a sweep's) available to configs;
    cached, so a config claims its folder once."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, claim, use_cache=True)


class FolderRefused(StartRefused):
    """A run folder that is in use or already holds a run."""


class JobFolderError(ConfigError):
    """A sweep job's folder that another job of the sweep has, or that holds files nnexp did not write: the job fails
    and the sweep goes on."""


#: Where Hydra's default job logging writes the job's log file: inside the job's folder.
JOB_FOLDER = "${hydra.runtime.output_dir}/"


def check_hydra_paths(config: DictConfig) -> None:
    """Refuse Hydra settings that would write a run's files outside its folder: ``hydra.output_subdir`` (its
    ``.hydra`` copies of the config), ``hydra.job.name`` (its ``<name>.log``) and a file that a log handler of
    ``hydra.job_logging`` writes."""
    output_subdir = OmegaConf.select(config, "hydra.output_subdir")
    job_name = OmegaConf.select(config, "hydra.job.name")
    if output_subdir is not None and (Path(output_subdir).is_absolute() or ".." in Path(output_subdir).parts):
        raise FolderRefused(
            f"hydra.output_subdir={output_subdir}: must be a folder inside the run's folder, such as .hydra"
        )
    if job_name is not None and ("/" in job_name or job_name in ("", ".", "..")):
        raise FolderRefused(f"hydra.job.name={job_name!r}: names the run's log file, <name>.log; write a plain name")
    handlers = OmegaConf.select(config, "hydra.job_logging.handlers")
    for name, handler in (OmegaConf.to_container(handlers) if isinstance(handlers, DictConfig) else {}).items():
        filename = handler.get("filename") if isinstance(handler, dict) else None
        if filename is not None and not (str(filename).startswith(JOB_FOLDER) and ".." not in Path(filename).parts):
            raise FolderRefused(
                f"hydra.job_logging.handlers.{name}.filename={filename}: a run's log files go inside its folder; "
                f"write {JOB_FOLDER}NAME.log"
            )


#: The settings that name a run's or a sweep's folder.
FOLDER_SETTINGS = ("hydra.run.dir", "hydra.sweep.dir")


def normalised_folders(arguments: list[str]) -> list[str]:
    """``arguments`` with ``a/..`` taken out of the folders they give ``hydra.run.dir`` and ``hydra.sweep.dir``:
    Hydra would create ``a`` and leave it behind, empty. Quoted values and interpolations are left as they are."""
    normalised = []
    for item in arguments:
        key, _, value = item.partition("=")
        if key.lstrip("+") in FOLDER_SETTINGS and value and not any(character in value for character in "'\"$\\"):
            item = f"{key}={os.path.normpath(value)}"
        normalised.append(item)
    return normalised


def use_run_folder(folder: Path, resuming: bool) -> None:
    """Create ``folder`` and lock it for this process; refuse, in one line, a folder another process is using or,
    unless ``resuming``, one that already holds a run. A folder that cannot be created is left for Hydra to report."""
    if folder.resolve() == Path.cwd().resolve():  # hydra.run.dir='' or .: the project's own files beside the run's
        raise FolderRefused(
            f"hydra.run.dir={str(folder)!r} is the folder nnexp runs from; a run needs a folder of its own, "
            "such as outputs/NAME"
        )
    # A new run among another's files, whose model and checkpoints folders are logged and synced as that run's own;
    # a resumed run goes on in its own folder, which a sweep's job has inside the sweep's.
    around = enclosing_run_folder(folder)
    if around is not None and not resuming:
        raise FolderRefused(
            f"hydra.run.dir={folder} lies inside the folder of another run or sweep ({around}); a run needs a folder "
            "of its own, such as outputs/NAME"
        )
    missing = [path for path in (folder, *folder.parents) if not os.path.lexists(path)]  # a name too long: missing
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        for path in missing[1:]:  # the parents made on the way, innermost first; Hydra names the failure
            with contextlib.suppress(OSError):
                path.rmdir()
        return
    created_folders.update(path.resolve() for path in missing[1:])
    entries = {entry.name for entry in folder.iterdir()}
    others = others_records(folder)
    if others:  # the run's checkpoints, model and plots would land among them
        discard_dir(folder, set())
        raise FolderRefused(
            f"hydra.run.dir={folder} holds other records ({', '.join(others[:3])}); a run needs a folder of its own, "
            "such as outputs/NAME"
        )
    foreign = [] if resuming else not_from_setup(folder)
    if foreign and entries & RESUMABLE:
        raise FolderRefused(
            f"hydra.run.dir={folder} already holds a run ({shown(sorted(entries - {FOLDER_LOCK}))}); "
            "choose another folder, or resume it with resume=<id>"
        )
    if foreign:  # the run would write its model, plots and checkpoints among them, and log them as its own
        raise FolderRefused(
            f"hydra.run.dir={folder} holds files nnexp did not write ({shown(foreign)}); a run needs a new or empty "
            "folder, such as outputs/NAME"
        )
    if resuming:
        _before_resume[folder.resolve()] = {name: read_if_file(folder / name) for name in WRITTEN_AT_SETUP}
    lock_folder(folder, "run folder")
    if resuming:  # the folder is this process's now: what a killed process of the run was writing is stale
        remove_run_partials(folder)


def not_from_setup(folder: Path) -> list[str]:
    """What in ``folder`` a run that failed at setup did not leave (:data:`WRITTEN_AT_SETUP`); its own entries are
    read first, so that a large folder (``/``) is not walked."""
    extra = sorted(entry.name for entry in folder.iterdir() if entry.name not in SETUP_ENTRIES)
    return extra or foreign_files(folder, WRITTEN_AT_SETUP)


def shown(names: list[str], limit: int = 3) -> str:
    """The first ``limit`` of ``names``, and ``...`` when there are more."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def claim_job_folder(folder: Path, subdir: str, resuming: bool = False) -> None:
    """Take the sweep job's folder ``folder`` for this job, by creating its lock file, which exactly one job can;
    refuse, in one line, a folder another job of the sweep has taken (``hydra.sweep.subdir`` gave both that one) or
    one holding files nnexp did not write. A job ``resuming`` (a requeued SLURM job) goes on in the folder it took
    before: it only locks it."""
    if resuming:
        lock_folder(folder, "job folder")
        return
    try:
        os.close(os.open(folder / FOLDER_LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise JobFolderError(
            f"hydra.sweep.subdir={subdir!r} gives this job the folder {folder}, which another job of the sweep has; "
            "make it differ between jobs, such as ${hydra.job.num} (the default)"
        ) from None
    foreign = not_from_setup(folder)
    if foreign:
        raise JobFolderError(
            f"hydra.sweep.subdir={subdir!r} gives this job the folder {folder}, which holds files nnexp did not "
            f"write ({shown(foreign)}); choose another hydra.sweep.dir"
        )
    lock_folder(folder, "job folder")


def enclosing_run_folder(path: Path) -> Path | None:
    """The folder of a run or sweep (one holding its lock) that ``path`` lies inside; ``None`` when there is none."""
    # os.path.exists: a name too long for the file system is no lock, where Path.exists would raise
    return next((parent for parent in path.resolve().parents if os.path.exists(parent / FOLDER_LOCK)), None)


def read_if_file(path: Path) -> bytes | None:
    """The bytes of the file ``path``; None when there is none (or it is no regular file, which is no setup's)."""
    return path.read_bytes() if path.is_file() and not path.is_symlink() else None


def restore_setup_files(folder: Path) -> None:
    """Put back what Hydra's copies of the config, the job's log and the lock held in the resumed run's ``folder``
    before this process wrote them: a refused resume leaves the run's record as it was."""
    for name, contents in _before_resume.pop(folder.resolve(), {}).items():
        path = folder / name
        lock = next((lock for lock in _held if Path(lock.name).resolve() == path.resolve()), None)
        if lock is not None:  # still held, until the process exits: its record is replaced in place
            record_text(lock, (contents or b"").decode(errors="replace"))
        elif contents is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(contents)


#: What a tracking store keeps beside its database: no run folder is one of these, or inside the artifacts.
STORE_ENTRIES = ("mlflow.db", "mlartifacts")


def others_records(folder: Path) -> list[str]:
    """What in ``folder`` belongs to other records: a tracking store and its artifacts, or other runs' folders, which
    hold their lock (a date folder of ``outputs``); also ``folder`` itself when it lies inside a store's artifacts."""
    if "mlartifacts" in folder.resolve().parts:
        return ["MLflow's artifacts"]
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name in STORE_ENTRIES or (entry / FOLDER_LOCK).exists()
    )


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run's files, more than what a run that failed at setup leaves."""
    entries = {entry.name for entry in folder.iterdir()}
    return bool(entries & RUN_MARKERS or (folder / "checkpoints").is_dir()) and bool(entries - SETUP_ENTRIES)


def use_sweep_folder(folder: Path) -> None:
    """Lock the existing ``folder`` for this sweep; refuse, in one line, one that another process is using or that
    holds an earlier sweep's jobs, whose folders (0, 1, ...) this sweep's jobs would share."""
    jobs = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and holds_run(entry))
    if jobs or (folder / "multirun.yaml").exists():
        listed = f" (jobs {shown(jobs)})" if jobs else ""
        raise FolderRefused(
            f"hydra.sweep.dir={folder} already holds a sweep{listed}; choose another folder, or leave hydra.sweep.dir "
            "unset for a new one each time"
        )
    lock_folder(folder, "sweep folder")


def lock_folder(folder: Path, kind: str) -> None:
    """Lock ``folder`` for this process until it exits; refuse it, in one line, if another process holds it."""
    if fcntl is None:
        return
    # Held open, and so locked, until the process exits.
    lock = open(folder / FOLDER_LOCK, "a")  # noqa: SIM115  (not "w": the record of a process holding it stays)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise FolderRefused(f"{kind} {folder} is in use by another nnexp process; wait until it ends") from None
    # Who holds the folder, so that a later command can tell the folder of a process killed during setup; a
    # resumed run's own model folder stays replaceable.
    kept = {MODEL_SAVED: True} if recorded(folder).get(MODEL_SAVED) else {}
    record(lock, {**kept, **liveness.where_this_process_lives()})
    _held.append(lock)


def recorded(folder: Path) -> dict[str, Any]:
    """What ``folder``'s lock records; empty when it has none or it cannot be read."""
    try:
        contents = json.loads((folder / FOLDER_LOCK).read_text())
    except (OSError, ValueError):
        return {}
    return contents if isinstance(contents, dict) else {}


def release_folder(folder: Path) -> None:
    """Let go of this process's lock of ``folder``: a process running many sweep jobs would otherwise hold a file
    open for each. The lock file stays, and still says the folder is taken (:func:`claim_job_folder`)."""
    for lock in [lock for lock in _held if Path(lock.name).resolve().parent == folder.resolve()]:
        _held.remove(lock)
        lock.close()


def record(lock: IO[str], contents: dict[str, Any]) -> None:
    """Replace what the lock file ``lock`` records; on a full disk it records nothing, and the lock still holds."""
    record_text(lock, json.dumps(contents))


def record_text(lock: IO[str], text: str) -> None:
    """Replace the text of the lock file ``lock``; on a full disk it records nothing, and the lock still holds."""
    try:
        lock.truncate(0)
        lock.write(text)
        lock.flush()
    except OSError:
        # A folder whose record is unreadable is never taken for a dead process's leftovers; the run itself says
        # what the disk refused, where it writes what it needs.
        return


def note_run_opened(folder: Path, store: str) -> None:
    """Note in ``folder``'s lock that its MLflow run is being opened in ``store``: from now on the folder belongs to a
    record, and :func:`discard_orphan_folders` keeps it unless that store shows it holds no run of the folder."""
    note(folder, {OPENED: True, STORE: store})


def note_model_saved(folder: Path) -> None:
    """Note in ``folder``'s lock that nnexp saved the MLflow model folder in it (see :data:`MODEL_SAVED`)."""
    note(folder, {MODEL_SAVED: True})


def note(folder: Path, fields: dict[str, Any]) -> None:
    """Add ``fields`` to the record of ``folder``'s lock, if this process holds it."""
    for lock in _held:
        if Path(lock.name).resolve().parent == folder.resolve():
            record(lock, {**recorded(folder), **liveness.where_this_process_lives(), **fields})


#: Where nnexp's default ``hydra.run.dir`` and ``hydra.sweep.dir`` put run and sweep folders, below the project.
DEFAULT_LAYOUT = tuple(f"outputs/{folders}/{FOLDER_LOCK}" for folders in ("*", "*/*", "multirun/*/*"))


class Orphan(NamedTuple):
    """A run folder left at setup by a process that is gone."""

    folder: Path
    #: Why its process is gone.
    why: str
    #: What in it nnexp did not write, which keeps it; empty when it was removed.
    kept: list[str]
    #: Whether its process was killed while opening its MLflow run, which the store does not hold.
    opened: bool = False


def discard_orphan_folders(
    project_dir: Path, unrecorded: Callable[[str, Path], bool] | None = None
) -> list[Orphan]:
    """Remove the run folders under ``project_dir/outputs`` that hold nothing but setup's leftovers of a process that
    is gone (killed before its MLflow run was opened, or while it was); returns each such folder, removed or kept.

    A folder is removed only when its lock records a process on this machine that has ended, is not locked, and
    every file in it is one nnexp wrote at setup; one whose lock says its run was being opened, only when
    ``unrecorded(store, folder)`` says that store, named in the lock, surely holds no run of the folder. A folder
    that belongs to a record, or to a live process, is never touched, and one holding a file of the user's is kept.
    """
    found = []
    for lock_path in sorted({path for pattern in DEFAULT_LAYOUT for path in project_dir.glob(pattern)}):
        folder = lock_path.parent
        try:
            record = json.loads(lock_path.read_text())
            leftovers = {entry.name for entry in folder.iterdir()} <= SETUP_ENTRIES
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or not leftovers:
            continue
        why = liveness.why_gone({key: str(value) for key, value in record.items()})
        if why is None or locked(lock_path):
            continue
        opened = bool(record.get(OPENED))
        store = record.get(STORE)
        # Last, as it asks the store: a run the store may hold keeps its folder, whatever the folder holds.
        if opened and not (unrecorded is not None and isinstance(store, str) and unrecorded(store, folder.resolve())):
            continue
        kept = foreign_files(folder, WRITTEN_AT_SETUP)
        if not kept:
            discard_dir(folder, WRITTEN_AT_SETUP)
        found.append(Orphan(folder, why, kept, opened))
    return found


def locked(lock_path: Path) -> bool:
    """Whether a process holds the lock ``lock_path``."""
    if fcntl is None:
        return False
    with open(lock_path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def discard_job_dir(output_dir: Path) -> None:
    """Remove a job directory that holds only what Hydra wrote before the job failed, so no stray output remains."""
    discard_dir(output_dir, WRITTEN_AT_SETUP)


def discard_dir(directory: Path, written_before_work: Collection[str]) -> None:
    """Remove ``directory`` if every file in it is one of ``written_before_work`` (paths inside it), and then each
    parent that is left empty and is either inside the folder nnexp runs in (a date folder, ``outputs``) or was
    created by this process."""
    if directory.is_dir() and not directory.is_symlink() and not foreign_files(directory, written_before_work):
        shutil.rmtree(directory)
        top = Path.cwd().resolve()
        for parent in directory.resolve().parents:
            ours = parent in created_folders or top in parent.parents
            if parent == top or not ours or any(parent.iterdir()):
                break
            parent.rmdir()


def foreign_files(directory: Path, written: Collection[str]) -> list[str]:
    """What in ``directory``, at any depth, nnexp did not write: each path (inside it) that is not one of ``written``,
    or is a log holding a line no logger wrote; a folder that cannot be read, or a link to one, counts too."""
    foreign: list[str] = []

    def unreadable(exc: OSError) -> None:
        foreign.append(os.path.relpath(exc.filename or directory, directory))

    for root, folders, files in os.walk(directory, onerror=unreadable):
        links = [name for name in folders if os.path.islink(os.path.join(root, name))]  # never followed: not ours
        for name in (*files, *links):
            path = Path(root, name)
            inside = path.relative_to(directory).as_posix()
            if inside not in written or (name.endswith(".log") and not only_log_lines(path)):
                foreign.append(inside)
    return sorted(foreign)


def only_log_lines(path: Path) -> bool:
    """Whether every line of the log ``path`` is one Hydra's job logging wrote."""
    try:
        with open(path, errors="replace") as log:
            return all(LOG_LINE.match(line) for line in log)
    except OSError:
        return False


def discard_unused_folders() -> None:
    """Remove every run folder of this process that holds only what Hydra writes before a job starts."""
    for folder in job_folders:
        discard_job_dir(folder)
