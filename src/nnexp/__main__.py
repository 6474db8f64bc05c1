"""``python -m nnexp``: discover plugins, store their configs, then let Hydra compose and run."""

from __future__ import annotations

import errno
import gc
import importlib
import logging
import math
import os
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig

from nnexp import streams
from nnexp.errors import Interrupted, NnexpError, StartRefused, interruption, raise_on_stop_signals, report
from nnexp.folders import (
    describe_os_error,
    discard_unused_folders,
    job_folders,
    normalised_folders,
    note_showing_only,
)

#: Sub-commands that are not Hydra runs, and the module whose ``main(argv) -> int`` runs each.
COMMANDS = {
    "data": "nnexp.commands.data",
    "reproduce": "nnexp.commands.reproduce",
    "compare": "nnexp.commands.compare",
    "runs": "nnexp.commands.runs",
    "sync": "nnexp.commands.sync",
    "predict": "nnexp.commands.predict",
    "check": "nnexp.commands.check",
    "ui": "nnexp.commands.ui",
}

#: How MLflow's client retries a tracking server that does not answer: a few seconds per request, not minutes.
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}

#: Whether the user asked for Hydra's full tracebacks; nnexp then re-raises instead of printing one line.
FULL_ERRORS = os.environ.get("HYDRA_FULL_ERROR") == "1"

#: The exit status of a command whose output was no longer read (``| head``), as a shell reports SIGPIPE.
CLOSED_PIPE_STATUS = 128 + 13


def main() -> None:
    streams.open_closed_streams()
    ignore_socks_warning()
    from nnexp.plugins import leave_plugin_threads

    try:
        run_command()
    except SystemExit as exc:
        leave_plugin_threads(exc.code)
        raise
    leave_plugin_threads(0)


def run_command() -> None:
    """:func:`command`, its output flushed; ends by ``sys.exit`` with one line on a stop or an unwritable output."""
    try:
        try:
            command()
        finally:
            sys.stdout.flush()  # here, not at the interpreter's exit, where a closed pipe prints "Exception ignored"
            if streams.lost_output():  # also when the command ends by sys.exit(0), as a sub-command does
                raise OSError(errno.EBADF, "standard output is closed")
    except BrokenPipeError:
        # The reader went away (``nnexp runs | head -2``): what it wanted was printed; stop quietly, and point
        # stdout at nothing so that nothing else tries to write to the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(CLOSED_PIPE_STATUS)
    except KeyboardInterrupt as exc:  # one that lands before command() can catch it, as in its first lines
        stop = Interrupted.of(exc)
        fail(str(stop), stop.exit_code)
    except OSError as exc:  # a sub-command's output that cannot be written (``> /dev/full``), or a file it cannot use
        if exc.errno is None:
            raise
        if exc.filename is None:  # the output: flushed again at the interpreter's exit, it would fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        fail(describe_os_error(exc, "write the output" if exc.filename is None else None))


def ignore_socks_warning() -> None:
    """requests silences this warning (about a SOCKS proxy package nnexp never uses) while it imports, but a
    ``warnings.catch_warnings()`` left in another thread meanwhile restores the filters without it: MLflow is
    imported in a thread while the job goes on. Set before any thread starts, the filter survives such restores."""
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")


def command() -> None:
    """What ``main`` does: a sub-command, or Hydra's run or sweep; every error but a Ctrl-C ends here."""
    if sys.argv[1:] == ["--version"]:
        from nnexp import __version__

        print(f"nnexp {__version__}")
        return
    raise_on_stop_signals()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # nnexp prints its own one-line summary; MLflow would add two "View run" lines per run against a server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Fetching artifacts (a resume from MLflow's copy of a checkpoint, predict of runs:/...) would draw progress bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow retries a request to a server that does not answer for minutes; training should not wait that long.
    for variable, value in HTTP_RETRIES.items():
        os.environ.setdefault(variable, value)
    # Every command, a run or a sub-command, stops in one line on Ctrl-C or SIGTERM, wherever the signal lands
    # (MLflow, SQLAlchemy, an import): 130 or 143, as a shell reports a process killed by the signal.
    try:
        if sys.argv[1:2] and sys.argv[1] in COMMANDS:
            sys.exit(importlib.import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:]))
        run_hydra()
    except KeyboardInterrupt as exc:
        stop = Interrupted.of(exc)
        fail(str(stop), stop.exit_code)
    except SystemExit as exc:
        from nnexp.plugins import blame

        blamed = blame(exc)  # a plugin's sys.exit(0) outside a run's phases (nnexp check, predict) is no success
        if blamed is None:
            raise
        fail(str(blamed))


def run_hydra() -> None:
    """Compose the command line's config with Hydra and run it, or sweep it with ``-m``."""
    # Hydra prints composition errors over several lines and exits; with this set they reach us instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # A log file that can no longer be written (a full disk) would print a traceback for every line logged; the
    # terminal still shows each line, and the failure that matters is reported once, where it happens.
    logging.raiseExceptions = False
    try:
        launch()
        # Shutting down, the interpreter would garbage-collect all that MLflow and matplotlib imported, in several
        # full passes over millions of objects (half a second or more); the process's end frees them anyway.
        gc.freeze()
    except StartRefused as exc:
        fail(str(exc))
    except Exception as exc:
        discard_unused_folders()
        stop = interruption(exc)
        if stop is not None:  # wrapped by Python, as one in an import can be
            raise stop from None
        from nnexp.cli_errors import causes

        closed = next((cause for cause in causes(exc) if isinstance(cause, BrokenPipeError)), None)
        if closed is not None:  # wrapped by Hydra, perhaps: main() knows it by its class
            raise closed from None
        message = describe_error(exc)
        if message is None or FULL_ERRORS:
            raise
        fail(message)


def describe_error(exc: Exception) -> str | None:
    """One line for a user's error: nnexp's own, a file that cannot be written, or a configuration error; ``None``
    for anything else, which keeps its traceback. OmegaConf and Hydra wrap what they call, so look at the causes."""
    from nnexp.cli_errors import causes, describe_config_error
    from nnexp.presets import describe_preset_error

    for cause in causes(exc):
        if isinstance(cause, BrokenPipeError):  # stdout's reader went away: main() ends quietly
            return None
        if isinstance(cause, NnexpError):
            return str(cause)
        if isinstance(cause, OSError) and cause.errno is not None:
            return describe_os_error(cause, where=job_folders[-1] if job_folders else None)
    from nnexp.job import memory

    if memory.is_out_of_memory(exc):  # outside any phase of a run, which names what ran out itself
        return memory.describe(exc, "running", memory.ADVICE)
    return describe_preset_error(exc, config_dir()) or describe_config_error(exc)


def config_dir() -> Path | None:
    """The project's ``conf/`` of YAML presets, where Hydra looks for them; ``None`` when there is none."""
    conf = Path.cwd() / "conf"
    return conf if conf.is_dir() else None


def launch() -> None:
    import hydra

    from nnexp.cli_errors import check_command_line, check_override_keys
    from nnexp.config import store_configs
    from nnexp.help_flags import hydra_flags, hydra_help_arguments, quick_help, shown_resolved
    from nnexp.job.resume import hydra_arguments
    from nnexp.plugins import load_plugins
    from nnexp.presets import check_interpolations, check_preset_aliases, check_preset_names

    check_command_line(sys.argv[1:])
    sys.argv[1:] = hydra_help_arguments(sys.argv[1:])
    load_plugins(Path.cwd())  # must precede composition, and resume's checks: the options come from the registries
    sys.argv[1:] = normalised_folders(hydra_arguments(sys.argv[1:], Path.cwd()))
    check_override_keys(sys.argv[1:])
    flags = hydra_flags(sys.argv[1:])
    note_showing_only(flags)
    store_configs()
    presets = config_dir()
    check_preset_names(presets)
    check_preset_aliases(presets)  # before anything composes them
    if quick_help(sys.argv[1:], presets):
        return
    shown = shown_resolved(flags)
    if shown is not None:
        check_interpolations(presets, *shown)
    from nnexp.job import hooks, sweep

    streams.running = not (flags.help or flags.hydra_help or flags.cfg or flags.info or flags.shell_completion)
    try:
        hydra.main(version_base="1.3", config_path=str(presets) if presets else None, config_name="nnexp")(task)()
    except hooks.CallbackFailed:
        pass  # raised below, outside this handler, which would become the error's context in place of its causes
    except BaseException as exc:
        reason = sweep.abandon(exc)
        if reason is not None and launcher_error(exc):
            # e.g. sbatch refusing the job array: one line, as for any other error (HYDRA_FULL_ERROR=1 shows all)
            from nnexp.cli_errors import causes

            failed_write = any(isinstance(cause, OSError) for cause in causes(exc))  # the reason says what failed
            cause = "" if failed_write else f"{type(exc).__name__}: "
            raise NnexpError(f"the sweep stopped: {cause}{reason}") from exc
        raise
    stop = sweep.stopped()
    if stop is not None:
        raise stop
    kept = hooks.take_error()  # a start's error, or one after the run or sweep began, which Hydra let pass
    if kept is not None:
        raise kept
    if sweep.failure():
        raise NnexpError(sweep.failure())


def launcher_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an unexpected error of Hydra's sweeper or launcher rather than one nnexp describes."""
    from nnexp.cli_errors import describe_config_error

    return isinstance(exc, Exception) and not isinstance(exc, NnexpError) and describe_config_error(exc) is None


def task(cfg: DictConfig) -> float:
    """Hydra's task: one job. A single run's user error ends the process here, in one line; a sweep's failed job
    is logged and returns the worst objective value, so that the other jobs and the sweeper go on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nnexp.plugins import leave_plugin_threads_at_exit, load_plugins

    hydra = HydraConfig.get()
    leave_plugin_threads_at_exit()  # in a launcher's worker process too, which joblib waits for at the sweep's end
    # With hydra.job.chdir=true Hydra starts the job in its folder (and returns after it); nnexp puts each file a run
    # writes in that folder itself, and the paths a user gives (data files) are relative to where nnexp was started.
    os.chdir(hydra.runtime.cwd)
    load_plugins(Path(hydra.runtime.cwd))  # a launcher's worker process starts with the built-in plugins only
    return sweep_job(cfg) if hydra.mode == RunMode.MULTIRUN else job(cfg)


def job(cfg: DictConfig) -> float:
    """Run ``cfg``; a user error ends a single run in one line, and a sweep's job with its worst value."""
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nnexp.job.run import run

    hydra = HydraConfig.get()
    try:
        return run(cfg)
    except Exception as exc:
        if hydra.mode == RunMode.RUN:
            message = None if FULL_ERRORS else describe_error(exc)
            if message is not None:
                fail(message)  # re-raised, Hydra would print a second line naming the overrides
            raise
        logging.getLogger("nnexp").error(
            "error: job %s failed: %s", hydra.job.num, exc, exc_info=not isinstance(exc, NnexpError)
        )
        return worst(cfg)


def worst(cfg: DictConfig) -> float:
    """The worst value of the sweep's objective, which a failed or stopped job returns to the sweeper."""
    from nnexp.job.build import Objective

    try:
        return Objective.of(cfg).worst()
    except NnexpError:
        return -math.inf


def sweep_job(cfg: DictConfig) -> float:
    """One job of a sweep: a job that the sweep asked to stop (nnexp got Ctrl-C or SIGTERM while a launcher's workers
    ran the jobs) ends its run as a stopped run does, and returns its worst value, so that the others end theirs too;
    a job that starts after that leaves no folder."""
    import logging

    from hydra.core.hydra_config import HydraConfig

    from nnexp.folders import discard_job_dir
    from nnexp.job import sweep

    ignore_socks_warning()  # in a launcher's worker process, which main() did not start
    hydra = HydraConfig.get()
    directory = Path(hydra.runtime.cwd, hydra.sweep.dir)
    log = logging.getLogger("nnexp")
    if sweep.stop_asked(directory) is not None:
        discard_job_dir(Path(hydra.runtime.output_dir))
        log.info("job %s not started: the sweep was stopped", hydra.job.num)
        return worst(cfg)
    try:
        with sweep.stops_from_sweep(directory):
            return job(cfg)
    except KeyboardInterrupt as exc:
        if sweep.orphaned():
            sweep.end_orphan(hydra.job.num, Interrupted.of(exc))
        if not sweep.stop_coming(directory):
            raise
        log.info("job %s stopped: %s", hydra.job.num, Interrupted.of(exc))
        return worst(cfg)


def fail(message: str, status: int = 1) -> None:
    report(message)
    sys.exit(status)


if __name__ == "__main__":
    main()
