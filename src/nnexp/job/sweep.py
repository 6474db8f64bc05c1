"""Sweeps (``python -m nnexp -m ...``) as one MLflow parent run with a child run per job.

The parent is created in the launching process before any job starts, so that launchers whose jobs run in
other processes never create the store at the same time (MLflow's SQLite migrations crash when two do). Its
id reaches every job as the override ``tracking.parent_run_id``. When the sweep ends, the parent gets a table
of its children, best-of metrics, the best job's params and a comparison plot.

A little over 350 lines: the sweep's parent run, the callback every job reports to and the summary built from
them keep one record, and change together.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from nnexp.config import MAX_RUN_NAME, check_run_names, check_tags, given_overrides
from nnexp.errors import ConfigError, NnexpError, require
from nnexp.folders import (
    FOLDER_LOCK,
    SWEEP_DIR,
    WRITTEN_AT_SETUP,
    check_hydra_paths,
    discard_dir,
    note_run_opened,
    use_sweep_folder,
)
from nnexp.job.hooks import NnexpCallback
from nnexp.presets import check_command_line_options, where_hydra_set
from nnexp.tracking.store import DESCRIPTION_TAG

if TYPE_CHECKING:
    from hydra.core.config_loader import ConfigLoader
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from nnexp.errors import Interrupted
    from nnexp.tracking.tables import Configuration, Ranking, Table
    from nnexp.tracking.tracked_run import TrackedRun, Tracker

log = logging.getLogger(__name__)

PARENT_OVERRIDE = "tracking.parent_run_id"
#: The longest description (:data:`~nnexp.tracking.store.DESCRIPTION_TAG`) MLflow keeps in a tag.
MAX_DESCRIPTION = 8000
#: How many jobs' composed configs :func:`compose_jobs_once` keeps at a time, about 0.13 MB each.
KEPT_CONFIGS = 100
#: Settings of Hydra's sweepers and launchers that their plugins accept and then fail on mid-sweep, with a message
#: that names no option (optuna's "No trials are completed yet", an AssertionError, a ZeroDivisionError):
#: (group, option, setting, what it must be, the check).
PLUGIN_SETTINGS: tuple[tuple[str, str, str, str, Callable[[Any], bool]], ...] = (
    ("sweeper", "optuna", "n_trials", "must be >= 1", lambda value: value >= 1),
    ("sweeper", "optuna", "n_jobs", "must be >= 1", lambda value: value >= 1),
    ("sweeper", "basic", "max_batch_size", "must be >= 1 or null", lambda value: value is None or value >= 1),
    ("launcher", "joblib", "n_jobs", "must be >= 1, or negative (all cores but |n_jobs| - 1)", lambda value: value),
)


class SweepCallback(NnexpCallback):
    """Hydra callback that opens the sweep's parent run at the start of a multirun and summarises it at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _open
        _open = Sweep.start(config)
        choices = config.hydra.runtime.choices
        if choices.get("hydra/launcher") in PROCESS_LAUNCHERS:
            pass_stops_to_jobs(_open.directory)
            start_workers_deaf_to_ctrl_c()
            quiet_resource_tracker()
        if choices.get("hydra/sweeper") == "basic" and choices.get("hydra/launcher") == "basic":
            from hydra.core.global_hydra import GlobalHydra

            _open.undo_composing = compose_jobs_once(GlobalHydra.instance().config_loader())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _open, _failure
        sweep, _open = _open, None
        if sweep is not None:
            _failure = sweep.finish()


@dataclass
class Sweep:
    tracker: Tracker
    parent: TrackedRun
    directory: Path
    #: The keys the sweep varies, in command-line order: they name its children.
    swept: list[str]
    #: Gives Hydra's config loader back its own composition (see :func:`compose_jobs_once`) when the sweep ends.
    undo_composing: Callable[[], None] = field(default=lambda: None)

    @classmethod
    def start(cls, config: DictConfig) -> Sweep:
        from nnexp import __version__
        from nnexp.tracking.store import git_state, resolve_uri
        from nnexp.tracking.tracked_run import Tracker

        project_dir = Path.cwd()  # Hydra changes no directory in the launching process
        overrides = given_overrides(config.hydra.overrides.task)
        if any(item.startswith(f"{PARENT_OVERRIDE}=") for item in overrides):
            raise NnexpError(f"{PARENT_OVERRIDE} is set by the sweep itself; remove it from the command line")
        check_command_line_options(config)
        check_plugin_settings(config)
        if config.hydra.runtime.choices.get("hydra/sweeper") == "optuna":
            check_optuna_direction(config)
            check_optuna_search_space(config)
        check_subdir(config)
        check_job_folders(config)
        check_hydra_paths(config)
        user_tags = OmegaConf.to_container(config.tags, resolve=True)
        check_tags(user_tags)  # type: ignore[arg-type]
        check_run_names(config.tracking)
        directory = Path(config.hydra.sweep.dir).resolve()
        created = create_sweep_folder(directory)  # before the store: a folder that cannot be made leaves no store
        try:
            use_sweep_folder(directory)
            store = resolve_uri(config.tracking.uri, project_dir)
            tracker = Tracker(store, config.tracking.experiment)
            choices = config.hydra.runtime.choices
            tags = {
                "nnexp_command": "sweep",
                "sweep_overrides": " ".join(overrides) or "(none)",
                "sweep_dir": str(directory),
                "sweeper": choices.get("hydra/sweeper"),
                "launcher": choices.get("hydra/launcher"),
                "nnexp_version": __version__,
                **git_state(project_dir),
                **user_tags,  # type: ignore[dict-item]
            }
            name = config.tracking.run_name or f"sweep {' '.join(overrides)}"[:MAX_RUN_NAME]
            note_run_opened(directory, store)
            parent = tracker.open_run(name, tags, outbox=directory)  # the sweep's, not the project's, folder
            parent.training = False  # a store that goes away shows in the sweep's end, not in a warning mid-sweep
        except BaseException:
            # The folder claimed by ${nnexp.claim:...} exists already, so it is not among those created here.
            for folder in (directory, *created):
                discard_dir(folder, {FOLDER_LOCK})
            raise
        with read_write(config.hydra.overrides.task):
            config.hydra.overrides.task.append(f"{PARENT_OVERRIDE}='{parent.run_id}'")
        log.info("sweep: MLflow parent run %s in %s", parent.run_id, tracker.uri)
        return cls(tracker, parent, directory, swept_keys(overrides, config.hydra.sweeper.get("params")))

    def finish(self) -> str | None:
        """Summarise the children on the parent and end it; returns what went wrong, if any job failed."""
        self.undo_composing()
        try:
            finished, failed = self.summarise()
        except Exception as exc:
            from nnexp.tracking.store import store_error_reason

            reason = f"the sweep's summary failed: {store_error_reason(exc)}"
            self.parent.end("FAILED", reason)
            return reason
        except KeyboardInterrupt as exc:  # stopped (again) while summarising: the parent is not left RUNNING
            (self.directory / STOP_MARKER).unlink(missing_ok=True)
            self.parent.end("KILLED", self.stop_reason(exc))
            raise
        total = finished + failed
        if _stop is not None:
            (self.directory / STOP_MARKER).unlink(missing_ok=True)
            self.parent.end("KILLED", _stop[0])
            return None
        if not total:  # e.g. trainer.epochs=range(1,0): the sweep expanded to nothing, and leaves nothing
            self.abandon(NnexpError("the sweep has no jobs"))
            return "the sweep has no jobs: its values expand to none (check ranges such as range(1,0))"
        if not finished:
            self.parent.end("FAILED", f"all {total} jobs failed")
        else:
            self.parent.end("FINISHED")
        if failed:
            return f"{failed} of {total} jobs failed; the table above and their MLflow runs give the reasons"
        return None

    def abandon(self, exc: BaseException) -> str:
        """End the parent of a sweep that stopped early: KILLED on Ctrl-C or SIGTERM, else FAILED; returns the reason
        it records. A sweep that stopped before any job (a bad override Hydra found while expanding it) leaves
        nothing behind."""
        self.undo_composing()
        interrupted = isinstance(exc, KeyboardInterrupt)
        reason = self.stop_reason(exc)
        (self.directory / STOP_MARKER).unlink(missing_ok=True)
        try:
            finished, failed = self.summarise()
        except Exception as summary_error:  # the reason the sweep stopped matters more
            log.warning("sweep summary incomplete: %s", summary_error)
            finished = failed = -1
        self.parent.end("KILLED" if interrupted else "FAILED", reason)
        # What Hydra wrote for a job that never ran: when Hydra failed to set up the job's logging, or a second stop
        # ended the launcher's workers before their jobs began.
        for job in self.directory.iterdir() if self.directory.is_dir() else ():
            discard_dir(job, WRITTEN_AT_SETUP)
        if finished == failed == 0 and not interrupted:
            self.tracker.client.delete_run(self.parent.run_id)
            for leftover in ("multirun.yaml", FOLDER_LOCK):  # no job: no summary was written
                (self.directory / leftover).unlink(missing_ok=True)
            discard_dir(self.directory, set())  # unless it holds the user's files too
            self.tracker.discard_new_store()
        return reason

    def stop_reason(self, exc: BaseException) -> str:
        """The first line of why the sweep stopped; a failed write in the sweep's folder (Hydra's multirun.yaml on a
        full disk names no file) names the folder."""
        from nnexp.cli_errors import causes
        from nnexp.folders import describe_os_error

        failed = next((cause for cause in causes(exc) if isinstance(cause, OSError) and cause.errno), None)
        if failed is not None:
            return describe_os_error(failed, where=self.directory, setting=SWEEP_DIR)
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    def summarise(self) -> tuple[int, int]:
        """Log the summary artifacts, metrics and best params on the parent, print the table; returns
        (finished, failed) job counts."""
        from nnexp.tracking import tables
        from nnexp.tracking.liveness import reap

        client = self.tracker.client
        runs, _ = reap(client, tables.child_runs(client, client.get_run(self.parent.run_id)))
        if self.optional("the jobs' names", functools.partial(name_by_swept_values, client, runs, self.swept)):
            runs = tables.child_runs(client, client.get_run(self.parent.run_id))
        finished = [run for run in runs if run.info.status == "FINISHED"]
        failed = len(runs) - len(finished)
        stopped = sum(run.info.status == "KILLED" for run in runs)
        self.parent.log_metrics({"jobs_total": len(runs), "jobs_finished": len(finished), "jobs_failed": failed}, 0)
        if not runs:
            return 0, 0
        ranking = tables.Ranking.of(runs)
        # Every swept key keeps its column, even when failed jobs leave fewer runs to differ.
        params = [key for key in self.swept if any(key in tables.settings(run) for run in runs)]
        params += [key for key in tables.varying_params(runs) if key not in params]
        metrics = tables.shown_metrics(runs, ranking)
        table = tables.runs_table(runs, params, metrics, ranking)
        groups = tables.configurations(runs, params, ranking)
        grouped = tables.configurations_table(groups, params, ranking) if groups else None
        summary = self.directory / "summary"
        counts = f"{len(finished)} finished, {failed - stopped} failed" + (f", {stopped} stopped" if stopped else "")
        print(f"\nsweep {self.parent.run_id}: {counts}; ranked by {ranking.metric}")
        print(table.text())
        if grouped is not None:
            print(f"\nmean ± std over seeds\n{grouped.text()}")
        written = write_summary(summary, table, grouped, lambda path: plot_summary(finished, groups, ranking, path))
        self.log_best(runs, params, ranking, groups)
        self.parent.set_tags({DESCRIPTION_TAG: description(table, ranking)})
        if summary.is_dir() and any(summary.iterdir()):  # what a full disk let through, whole files only
            self.parent.log_artifact(summary, "summary")
        view = tables.sweep_view(self.parent.run_id, params, metrics, ranking)
        saved = self.tracker.save_view(self.parent.run_id, view)
        if written:
            print(f"summary: {summary}")
        print(f"sweep {self.parent.run_id}: {self.tracker.where_to_see(view=self.parent.run_id if saved else None)}")
        return len(finished), failed

    def optional(self, what: str, request: Callable[[], Any]) -> Any:
        """``request``'s result; None, with a warning, if the store refuses it: the parent's summary goes on, and
        what the store misses waits in the parent's outbox (the jobs' names and the best's settings are in
        ``summary/children.csv``)."""
        from nnexp.tracking.store import store_error_reason

        try:
            return request()
        except Exception as exc:
            log.warning("sweep %s: %s not recorded: %s", self.parent.run_id, what, store_error_reason(exc)[:200])
            return None

    def log_best(self, runs: list[Run], params: list[str], ranking: Ranking, groups: list[Configuration]) -> None:
        """The best job's objective (and with seeds the best configuration's mean and std), and its settings."""
        from nnexp.tracking import tables

        scored = [
            (value, run)
            for run in runs
            if run.info.status == "FINISHED"
            and (value := tables.metric_value(run, ranking.metric)) is not None
            and math.isfinite(value)
        ]
        if not scored:
            return
        best_value, best = min(scored, key=lambda pair: ranking.sort_key(pair[0]))
        metrics = {f"best_{ranking.metric}": best_value}
        if groups:
            metrics[f"best_mean_{ranking.metric}"] = groups[0].mean
            metrics[f"best_std_{ranking.metric}"] = groups[0].std
        self.parent.log_metrics(metrics, 0)
        best_params = {f"best.{key}": tables.settings(best).get(key, "") for key in params}
        self.optional("the best job's settings (best.* params)", functools.partial(self.parent.log_params, best_params))
        self.parent.set_tags(
            {"best_run_id": best.info.run_id, "best_run_name": best.info.run_name, "objective": ranking.metric}
        )


def description(table: Table, ranking: Ranking, limit: int = MAX_DESCRIPTION) -> str:
    """The parent run's description in MLflow's UI: the children's table in Markdown, best first, with as many
    rows as fit in a tag."""
    heading = f"Ranked by `{ranking.metric}`, {'highest' if ranking.maximize else 'lowest'} first."
    for shown in range(len(table.rows), -1, -1):
        left = len(table.rows) - shown
        more = f"\n\n{left} more in `summary/children.md`." if left else ""
        text = f"{heading}\n\n{replace(table, rows=table.rows[:shown]).markdown()}{more}"
        if len(text) <= limit:
            return text
    return heading[:limit]


def swept_keys(overrides: list[str], search_space: Any) -> list[str]:
    """The keys that take several values: comma lists, ranges and choices on the command line, and a sweeper's own
    search space (``hydra.sweeper.params``, as Optuna's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    keys = [override.key_or_group for override in parsed if override.is_sweep_override()]
    return keys + [str(key) for key in (search_space or {}) if str(key) not in keys]


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each key by its last part (``optimizer.learning_rate`` -> ``learning_rate``), whole where two would clash."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: part if last.count(part) == 1 else key for key, part in zip(keys, last, strict=True)}


def name_by_swept_values(client: MlflowClient, runs: list[Run], swept: list[str]) -> int:
    """Rename each child by its swept values alone (``learning_rate=0.01 model=deep_sigmoid``), which MLflow's run
    list shows whole, where the full overrides (kept in the ``overrides`` tag) start with what every child shares.
    Returns how many were renamed."""
    names = short_keys(swept)
    renamed = 0
    for run in runs:
        from nnexp.tracking.tables import settings

        values = [(names[key], settings(run).get(key)) for key in swept]
        name = " ".join(f"{key}={value}" for key, value in values if value is not None)
        if name and name != run.info.run_name:
            client.set_tag(run.info.run_id, "mlflow.runName", name[:MAX_RUN_NAME])
            renamed += 1
    return renamed


def compose_jobs_once(loader: ConfigLoader, limit: int = KEPT_CONFIGS) -> Callable[[], None]:
    """Make Hydra compose each job's config once, not twice, in a sweep of its basic sweeper and launcher; returns
    what undoes it.

    The basic sweeper composes every job of a batch to check it before the first starts, and the basic launcher
    composes each again to run it (0.35 s a job at load 4-5 on 2 cores): the second composition of the same overrides
    gets a copy of the first, taken when it was made and handed out once, with the sweep's cache of resolved values
    copied in as Hydra's own composition does. At most ``limit`` copies are kept at a time (a batch is checked
    whole before its first job starts); the launcher composes the jobs beyond them itself.
    """
    compose = loader.load_sweep_config
    kept: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key in kept:
            config = kept.pop(key)
            OmegaConf.copy_cache(from_config=master_config, to_config=config)
            return config
        config = compose(master_config, sweep_overrides)
        if len(kept) < limit:
            kept[key] = copy.deepcopy(config)
        return config

    def undo() -> None:
        vars(loader).pop("load_sweep_config", None)

    loader.load_sweep_config = load_sweep_config  # type: ignore[method-assign]
    return undo


def check_plugin_settings(config: DictConfig) -> None:
    """Raise a ParameterError naming ``hydra.<group>.<setting>`` for a value in :data:`PLUGIN_SETTINGS` that the
    chosen sweeper or launcher cannot work with."""
    choices = config.hydra.runtime.choices
    for group, option, key, expected, valid in PLUGIN_SETTINGS:
        if choices.get(f"hydra/{group}") == option and key in config.hydra[group]:  # absent in other versions
            value = config.hydra[group][key]
            require(valid(value), f"hydra.{group}.{key}", expected, value)


def check_optuna_direction(config: DictConfig) -> None:
    """Refuse an Optuna ``hydra.sweeper.direction`` that is not ``objective.direction``: the study would search for
    the worst trials, or for several objectives where each job returns one value."""
    from nnexp.job.build import Objective

    objective = Objective.of(config)
    setting = config.hydra.sweeper.direction
    directions = list(setting) if isinstance(setting, ListConfig | list) else [setting]
    names = [getattr(item, "name", str(item)) for item in directions]
    wanted = objective.direction.value
    if names == [wanted]:
        return
    where = where_hydra_set("hydra.sweeper.direction", config.hydra)
    shown = names[0] if isinstance(setting, str | Enum) else f"[{', '.join(names)}]"
    if len(names) != 1:
        raise ConfigError(
            f"{where}hydra.sweeper.direction={shown} asks for {len(names)} objectives; each job returns one, "
            f"objective.metric={objective.metric} ({wanted}): set hydra.sweeper.direction={wanted}"
        )
    raise ConfigError(
        f"{where}hydra.sweeper.direction={shown} contradicts objective.direction={wanted} "
        f"(objective.metric={objective.metric}); set hydra.sweeper.direction={wanted}"
    )


def check_optuna_search_space(config: DictConfig) -> None:
    """Build Optuna's distribution of each key the search varies, as its sweeper will once the sweep's parent run is
    open, so that one Optuna refuses (a log interval from 0) is named by its key and preset."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    space = config.hydra.sweeper.params or {}
    params = {f"hydra.sweeper.params.{key}": f"{key}={value}" for key, value in space.items()}
    given = {item.partition("=")[0]: item for item in given_overrides(config.hydra.overrides.task)}
    parser = OverridesParser.create()
    for key, item in (params | given).items():
        try:
            create_optuna_distribution_from_override(parser.parse_override(item))
        except ValueError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = where_hydra_set(key, config.hydra) if key.startswith("hydra.") else ""
            raise ConfigError(f"{where}{key}={item.partition('=')[2]}: Optuna refuses it: {reason}") from None


def check_subdir(config: DictConfig) -> None:
    """Refuse a ``hydra.sweep.subdir`` without an interpolation (``${hydra.job.num}``), or one that leads out of the
    sweep's folder (absolute, or through ``..``): every job would write into one folder (``0/../..`` and ``1/../..``
    are one), or outside the sweep, and each run's record would point at another job's files."""
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if not isinstance(subdir, str):
        return
    if subdir.startswith("/") or ".." in subdir.split("/"):
        raise ConfigError(
            f"hydra.sweep.subdir={subdir!r} leads out of the sweep's folder; name a folder inside it, such as "
            "${hydra.job.num} (the default)"
        )
    if "${" not in subdir:
        raise ConfigError(
            f"hydra.sweep.subdir={subdir!r} names one folder for every job of the sweep; "
            "include ${hydra.job.num} (the default is ${hydra.job.num})"
        )


#: Hydra's default ``hydra.sweep.subdir``: a folder per job by its number, which needs no check.
JOB_NUMBER = "${hydra.job.num}"


def check_job_folders(config: DictConfig) -> None:
    """Refuse, before any job runs, a ``hydra.sweep.subdir`` that gives two jobs of a basic sweep one folder
    (``e${trainer.epochs}`` when only the seed varies): each job's config is composed from its overrides and its
    subdir resolved, as Hydra's launchers will. Sweepers that choose their jobs as they go (Optuna) are left to
    :func:`nnexp.folders.claim_job_folder`."""
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if subdir == JOB_NUMBER or config.hydra.runtime.choices.get("hydra/sweeper") != "basic":
        return
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    arguments = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    arguments += given_overrides(config.hydra.overrides.task)
    taken: dict[str, tuple[int, list[str]]] = {}
    hydra_config = HydraConfig.instance().cfg
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create(loader).parse_overrides(arguments), None)
        for number, overrides in enumerate(job for batch in batches for job in batch):
            job = loader.load_sweep_config(config, list(overrides))
            with open_dict(job):
                job.hydra.job.id = job.hydra.job.num = number
            HydraConfig.instance().set_config(job)  # for ${hydra:...}, as Hydra's run_job sets it
            folder = os.path.normpath(str(OmegaConf.select(job, "hydra.sweep.subdir")))
            if folder in taken:
                first, other = taken[folder]
                own = [item for item in overrides if item not in other] or list(overrides)
                other = [item for item in other if item not in overrides] or other
                raise ConfigError(
                    f"hydra.sweep.subdir={subdir!r} gives jobs {first} ({' '.join(other)}) and {number} "
                    f"({' '.join(own)}) one folder, {folder}; make it differ between jobs, such as "
                    f"{JOB_NUMBER} (the default)"
                )
            taken[folder] = (number, list(overrides))
    except ConfigError:
        raise
    except Exception:  # a job that cannot be composed: the sweeper says why, in its own words
        return
    finally:
        HydraConfig.instance().cfg = hydra_config


def create_sweep_folder(directory: Path) -> list[Path]:
    """Create ``hydra.sweep.dir`` before the parent run (Hydra would only once the sweep has begun, and fail naming
    no option); returns the folders created, innermost first."""
    from nnexp.folders import describe_os_error

    missing = [path for path in (directory, *directory.parents) if not path.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{SWEEP_DIR}: {describe_os_error(exc, 'create', setting=SWEEP_DIR)}") from None
    return missing


def write_summary(folder: Path, table: Table, grouped: Table | None, plot: Callable[[Path], Any]) -> bool:
    """Write the sweep's tables and plot into ``folder``, each file whole or not at all; False, with a warning
    naming the folder, if the folder could not take them (a full disk): the terminal and MLflow still get them."""
    from nnexp.atomic import replacing
    from nnexp.folders import describe_os_error

    texts = {"children.csv": table.csv(), "children.md": table.markdown() + "\n"}
    if grouped is not None:
        texts |= {"configurations.csv": grouped.csv(), "configurations.md": grouped.markdown() + "\n"}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            with replacing(folder / name, "w") as file:
                file.write(text)
        plot(folder / "comparison.png")
    except OSError as exc:
        described = describe_os_error(exc, "write the summary", folder, SWEEP_DIR)
        print(f"warning: {described}; the table above is kept in MLflow", file=sys.stderr)
        return False
    return True


def plot_summary(finished: list[Run], groups: list[Configuration], ranking: Ranking, path: Path) -> None:
    """Bars of each configuration's mean and std over seeds when there are seeds, else of each finished job."""
    from nnexp.job.plot_process import draw_with_plotter
    from nnexp.job.plots import plot_comparison
    from nnexp.tracking.tables import metric_value

    if groups:
        names = short_keys(list(groups[0].params))
        labels = [" ".join(f"{names[key]}={value}" for key, value in group.params.items()) or "all" for group in groups]
        bars = (labels, [g.mean for g in groups], [g.std for g in groups])
    else:
        scored = [(value, run) for run in finished if (value := metric_value(run, ranking.metric)) is not None]
        scored.sort(key=lambda pair: ranking.sort_key(pair[0]))
        bars = ([run.info.run_name for _, run in scored], [v for v, _ in scored], None)
    # Where the jobs' plots were drawn, matplotlib is imported already: half a second of this process's time saved.
    draw_with_plotter(functools.partial(plot_comparison, *bars, ranking.metric, path))


#: Launchers whose jobs run in processes of their own, which a signal to nnexp does not reach; Hydra's basic launcher
#: runs them in nnexp's own process.
PROCESS_LAUNCHERS = ("joblib",)
#: The file in a sweep's folder that asks its jobs to stop: it holds the number of the signal nnexp got.
STOP_MARKER = ".nnexp.stop"
#: How often a job looks for :data:`STOP_MARKER`, in seconds.
STOP_POLL = 0.2
#: How long a job that a signal stopped waits for :data:`STOP_MARKER` before taking the signal as its own, in seconds.
STOP_WAIT = 2.0


def pass_stops_to_jobs(directory: Path) -> None:
    """Make the first Ctrl-C, SIGTERM or other :data:`~nnexp.errors.STOPPED` signal to this process ask each job of
    the sweep in ``directory`` to stop as a run does, and jobs not started never to start, while the launcher waits
    for them; a second one stops at once, as before (the launcher kills its workers), unless it recurs by itself."""
    import signal

    from nnexp.errors import INTERRUPTED, RECURRING, STOPPED, Interrupted

    reasons = {signal.SIGINT: INTERRUPTED, **STOPPED}

    def stop(signum: int, frame: object) -> None:
        global _stop
        if _stop is not None and signum in RECURRING:
            return
        if _stop is not None:
            raise Interrupted(reasons[signum], 128 + signum)
        try:
            (directory / STOP_MARKER).write_text(str(signum))
        except OSError:  # the jobs cannot be told (a full disk): stop at once, as the launcher does
            raise Interrupted(reasons[signum], 128 + signum) from None
        _stop = (reasons[signum], 128 + signum)
        print(f"{reasons[signum]}: stopping the sweep's jobs (again to stop at once)", file=sys.stderr, flush=True)

    for signum in reasons:
        signal.signal(signum, stop)


def start_workers_deaf_to_ctrl_c() -> None:
    """Start joblib's worker processes with Ctrl-C (SIGINT) blocked, which :func:`stops_from_sweep` lets through while
    a job runs: a terminal's Ctrl-C reaches every process of its group, and killed a worker still starting (joblib
    then ended the sweep with TerminatedWorkerError, its other jobs' runs left RUNNING)."""
    import signal

    from joblib.externals.loky.backend import fork_exec as loky

    spawn = loky.fork_exec
    if getattr(spawn, "blocks_ctrl_c", False):
        return

    def fork_exec(*args: Any, **kwargs: Any) -> int:
        # The mask, unlike a handler, outlives the exec; it is this thread's alone, so the sweep still gets Ctrl-C.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return spawn(*args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    fork_exec.blocks_ctrl_c = True  # type: ignore[attr-defined]
    loky.fork_exec = fork_exec


#: The warning filter, as ``-W`` takes it, that silences loky's resource tracker: once a launcher is killed (``kill
#: -9``), it removes the pool's semaphores and folders, as it should, and warns of each kind as "leaked".
TRACKER_QUIET = "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker"


def quiet_resource_tracker() -> None:
    """Start loky's resource tracker (and workers) with :data:`TRACKER_QUIET`: Python passes this process's ``-W``
    options on to the processes that multiprocessing and loky start."""
    if TRACKER_QUIET not in sys.warnoptions:
        sys.warnoptions.append(TRACKER_QUIET)


def stop_asked(directory: Path) -> int | None:
    """The signal that stopped the sweep in ``directory``, as its jobs see it; ``None`` while it goes on."""
    try:
        return int((directory / STOP_MARKER).read_text())
    except (OSError, ValueError):
        return None


def stop_coming(directory: Path) -> bool:
    """Whether the sweep in ``directory`` asks its jobs to stop, or does within :data:`STOP_WAIT` seconds: a
    terminal's Ctrl-C reaches a job as soon as the sweep, which then asks it."""
    import time

    deadline = time.monotonic() + STOP_WAIT
    while stop_asked(directory) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(STOP_POLL / 4)
    return True


@contextmanager
def stops_from_sweep(directory: Path) -> Iterator[None]:
    """While a job runs in a launcher's worker: the signal nnexp got, once the sweep in ``directory`` asks its jobs to
    stop, sent to this process, where the run's own handlers stop it (a checkpoint, the run KILLED); unless this
    process got it too, as a terminal's Ctrl-C reaches every process of its group, which a second one would stop
    at once."""
    import os
    import signal
    import threading

    from nnexp.errors import STOPPED, raise_on_stop_signals

    previous = {signum: signal.getsignal(signum) for signum in (*STOPPED, signal.SIGINT)}
    raise_on_stop_signals()  # a worker's own are the defaults, which would end it and break the launcher's pool
    die_with_launcher()
    # Python writes the number of each signal this process gets to the wakeup file as it arrives, before any
    # handler runs: a terminal's signal to the group is there before nnexp can have asked the jobs to stop.
    arrived, wakeup = os.pipe()
    os.set_blocking(arrived, False)
    os.set_blocking(wakeup, False)
    previous_wakeup = signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
    done = threading.Event()

    def got(signum: int) -> bool:
        try:
            return signum in os.read(arrived, 4096)
        except BlockingIOError:
            return False

    def watch() -> None:
        while not done.wait(STOP_POLL):
            signum = stop_asked(directory)
            if signum is not None:
                if not got(signum):
                    os.kill(os.getpid(), signum)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # see start_workers_deaf_to_ctrl_c
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        done.set()
        watcher.join()
        signal.set_wakeup_fd(previous_wakeup)
        os.close(arrived)
        os.close(wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def launcher() -> int | None:
    """The pid of the launcher process that started this one as a worker of its pool (joblib's loky); ``None`` in a
    process that is no such worker."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return None if parent is None else parent.pid


def die_with_launcher() -> None:
    """In a launcher's worker: get SIGHUP when the launcher dies, even by SIGKILL, so that a job's run stops as at a
    hang-up (a checkpoint, KILLED) instead of training on as an orphan to end FINISHED under a KILLED parent; an
    idle worker simply ends. Loky spawns its workers from the launcher's main thread or its executor's manager
    thread, which live as long as the pool. A hang-up, not SIGTERM: the kernel sends the signal again each time the
    worker passes to another thread of the dying launcher, and a repeated hang-up is no second stop."""
    import signal

    from nnexp.children import follow_parent

    pid = launcher()
    if pid is not None:
        follow_parent(pid, signal.SIGHUP)


def end_orphan(job: int, stop: Interrupted) -> NoReturn:
    """End this worker, whose job ``stop`` ended because its launcher died: one line, and no result sent back to a
    pool that is gone (loky would fail writing it)."""
    import os

    from nnexp.errors import report

    report(f"job {job} of a sweep whose process {launcher()} has ended: {stop}")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(stop.exit_code)


def orphaned() -> bool:
    """Whether this process is a launcher's worker whose launcher has died."""
    import os

    pid = launcher()
    return pid is not None and os.getppid() != pid


def stopped() -> Interrupted | None:
    """How the last sweep was stopped by a signal its jobs were asked to stop on; ``None`` if it was not."""
    from nnexp.errors import Interrupted

    return Interrupted(*_stop) if _stop is not None else None


#: The reason and exit status of the signal that stopped this process's sweep, once one has.
_stop: tuple[str, int] | None = None
#: The sweep this process launched and has not ended yet; :func:`abandon` ends it when the sweep is cut short.
_open: Sweep | None = None
#: What went wrong in the sweep that ended last, for the exit status; see :func:`failure`.
_failure: str | None = None


def abandon(exc: BaseException) -> str | None:
    """End the open sweep's parent run, if any, after an error or interrupt stopped the sweep; returns the reason
    recorded on it, ``None`` when no sweep was open."""
    global _open
    sweep, _open = _open, None
    return sweep.abandon(exc) if sweep is not None else None


def failure() -> str | None:
    """Why the last sweep should exit non-zero (failed jobs), or None; Hydra would only warn if a callback raised."""
    return _failure
