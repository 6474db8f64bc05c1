"""The callbacks a job trains with: metrics to MLflow, early stopping, checkpoints, and stop requests."""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from nnexp.atomic import remove_partials
from nnexp.config import (
    MONITORED,
    Direction,
    default_direction,
)
from nnexp.core.training import Callback, EarlyStopping, Trainer, TrainingState
from nnexp.errors import RECURRING, STOPPED, ConfigError, DataError, Interrupted, ParameterError
from nnexp.job import checkpoint
from nnexp.job.build import Experiment
from nnexp.job.phases import Phases
from nnexp.job.record import run_config_yaml
from nnexp.tracking.opening import OpeningRun
from nnexp.tracking.store import flatten, mlflow_metrics
from nnexp.tracking.tracked_run import RunDeletedError, TrackedRun


class MetricLogger(Callback):
    """Sends each epoch's metrics to the run, with ``step`` = epoch; the learning rate only if ``rate_changes``."""

    def __init__(self, run: TrackedRun | OpeningRun, phases: Phases, rate_changes: bool, trainer: Trainer) -> None:
        self.run, self.phases, self.rate_changes, self.trainer = run, phases, rate_changes, trainer

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        with self.phases("mlflow_logging"):
            try:
                self.run.log_metrics(mlflow_metrics(logs, rate_changes=self.rate_changes), step=epoch)
            except RunDeletedError:  # stopped as a signal stops it, at the next batch, with a checkpoint
                self.trainer.request_stop(self.run.deleted_reason, 1)


def stateful_callbacks(early_stopping: EarlyStopping | None) -> dict[str, Callback]:
    """The callbacks whose state a checkpoint keeps, by the name it keeps it under."""
    return {"early_stopping": early_stopping} if early_stopping else {}


def restore_checkpoint(
    resumed: checkpoint.Checkpoint | None,
    experiment: Experiment,
    rng: np.random.Generator,
    early_stopping: EarlyStopping | None,
) -> TrainingState | None:
    """Put the network, optimizer, generator and early stopping where ``resumed`` left them; None for a new run."""
    if resumed is None:
        return None
    return resumed.restore(
        experiment.network,
        experiment.optimizer,
        rng,
        stateful_callbacks(early_stopping),
        experiment.trainer,
        len(experiment.data["train"]),
    )


def early_stopping_callback(cfg: DictConfig, experiment: Experiment) -> EarlyStopping | None:
    """The configured early stopping, after checking its monitor is a metric this run logs every epoch."""
    settings = cfg.early_stopping
    if settings.patience is None:
        return None
    logged = [metric for metric in MONITORED if "val" in experiment.data or not metric.startswith("val_")]
    if settings.monitor not in logged:
        fix = ""
        if settings.monitor.startswith("val_") and "val" not in experiment.data:
            fix = "; this run has no validation split: add one (dataset.val_size=0.2) or monitor a training metric"
        raise ConfigError(
            f"early_stopping.monitor must be one of {', '.join(logged)} for this run, got {settings.monitor!r}{fix}"
        )
    direction = settings.direction or default_direction(settings.monitor)
    try:
        return EarlyStopping(
            experiment.trainer,
            experiment.network,
            settings.monitor,
            direction is Direction.maximize,
            settings.patience,
            settings.min_delta,
            settings.restore_best_weights,
        )
    except ParameterError as exc:
        raise exc.within("early_stopping") from None


def load_checkpoint(cfg: DictConfig) -> checkpoint.Checkpoint | None:
    """The checkpoint ``resume`` names, after checking the config composes to the one it was written with."""
    if not cfg.resume:
        return None
    loaded = checkpoint.load(Path(cfg.resume))
    if loaded.manifest["config"] != run_config_yaml(cfg):
        before, now = OmegaConf.create(loaded.manifest["config"]), OmegaConf.create(run_config_yaml(cfg))
        changed = sorted(key for key, value in flatten(before).items() if flatten(now).get(key) != value)
        # An override that sets a changed key itself disagrees with the config written beside it, whatever the
        # presets say: the manifest was edited.
        edited = [item for item in loaded.manifest["overrides"] if item.partition("=")[0].lstrip("+~") in changed]
        if edited:
            raise DataError(
                f"{loaded.path}: overrides {' '.join(edited)} do not compose to its config ({', '.join(changed)}); "
                "a manifest's overrides and config are written together, so one of them was edited"
            )
        raise ConfigError(
            f"resume={cfg.resume}: the config no longer composes to the run's ({', '.join(changed) or 'keys differ'}); "
            "were conf/ presets or plugins changed?"
        )
    remove_partials(loaded.path.parent)  # left by the process that wrote it, killed while writing
    return loaded


#: The signals that ask a run to stop: Ctrl-C and those :func:`nnexp.errors.raise_on_stop_signals` handles.
STOP_SIGNALS = (signal.SIGINT, *STOPPED)


class StopRequests:
    """Ctrl-C and SIGTERM while a run is open. The first asks training to stop at the next batch boundary, or, once
    trained, the run to end as soon as its model is kept, plots left out; a second one stops at once."""

    def __init__(self, trainer: Trainer, checkpoints: Path) -> None:
        self.trainer, self.checkpoints = trainer, checkpoints
        #: The run's id, once it is open: what a second stop says to resume.
        self.run_id: str | None = None
        #: The first request's reason and exit code.
        self.request: tuple[str, int] | None = None
        self._previous: dict[int, Any] = {}
        self._unraisable: Any = None

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # only the main thread may handle signals
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
            self._unraisable, sys.unraisablehook = sys.unraisablehook, self._deliver_again
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._unraisable is not None:
            sys.unraisablehook = self._unraisable

    def _deliver_again(self, unraisable: Any) -> None:
        """A second stop raised where Python ignores exceptions (a weak reference's callback, which an import can
        run) would be lost, and the run go on: send the signal again from another thread, so that it arrives once
        this hook and the callback have returned (raised here, it would be ignored as well)."""
        stop = unraisable.exc_value
        if isinstance(stop, Interrupted) and self.request is not None and stop.exit_code > 128:
            _thread.start_new_thread(send_later, (stop.exit_code - 128,))  # Thread.start would wait, and take it
            return
        self._unraisable(unraisable)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.request is not None and signum in RECURRING:
            return  # a hang-up (or the death of nnexp reproduce), a CPU limit, a timer repeats itself: no one insists
        if self.request is not None:
            raise Interrupted(f"interrupted again ({name}); {self.what_is_kept()}", 128 + signum)
        self.request = (f"interrupted ({name})", 128 + signum)
        self.trainer.request_stop(*self.request)

    def what_is_kept(self) -> str:
        """The last complete checkpoint and how to resume from it, or that there is none."""
        manifest = self.checkpoints / checkpoint.MANIFEST
        if self.run_id is None or not manifest.is_file():
            return "no checkpoint was written; the run cannot be resumed"
        return f"the last complete checkpoint is in {self.checkpoints}; resume with: {resume_command(self.run_id)}"


def send_later(signum: int) -> None:
    """Send ``signum`` to this process in a moment (from a thread of its own)."""
    time.sleep(0.05)
    os.kill(os.getpid(), signum)


def resume_command(run_id: str) -> str:
    return f"python -m nnexp resume={run_id}"
