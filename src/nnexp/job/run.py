"""One job: build everything from the composed config, train, evaluate, and record it all in MLflow."""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nnexp.config import given_overrides
from nnexp.core.engine import warm_up
from nnexp.core.metrics import confusion_matrix
from nnexp.core.schedules import Constant, LearningRateScheduler
from nnexp.core.training import Callback, EarlyStopping, Stopped, TrainingState, evaluate
from nnexp.errors import Interrupted
from nnexp.folders import (
    JobFolderError,
    claim_job_folder,
    describe_os_error,
    discard_job_dir,
    note_run_opened,
    restore_setup_files,
)
from nnexp.job import checkpoint
from nnexp.job.background import Workers, in_thread
from nnexp.job.build import Experiment, Objective, configure, prepare, run_params
from nnexp.job.callbacks import (
    MetricLogger,
    StopRequests,
    early_stopping_callback,
    load_checkpoint,
    restore_checkpoint,
    resume_command,
    stateful_callbacks,
)
from nnexp.job.phases import Phases
from nnexp.job.progress import Progress
from nnexp.job.record import (
    KeptModel,
    draw_plots,
    job_choices,
    keep_model,
    log_model_files,
    record_failed_job,
    run_config_yaml,
    run_label,
    run_plots,
    run_tags,
    start_plotter,
)
from nnexp.tracking.opening import OpeningRun, ending
from nnexp.tracking.store import RunCreationError, check_parent, resolve_uri
from nnexp.tracking.tracked_run import TrackedRun, Tracker

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Train and evaluate one configuration; returns the final value of ``cfg.objective``, which sweepers optimise.

    Within a sweep (``tracking.parent_run_id`` set) a job that fails before training is still recorded, as a
    FAILED child run with its reason.

    MLflow's import, the store and the run's opening happen in a thread (:class:`OpeningRun`) while training
    starts; if the run cannot be opened, training stops at the next batch with that error.
    """
    phases = Phases()
    hydra = HydraConfig.get()
    output_dir = Path(hydra.runtime.output_dir)
    project_dir = Path(hydra.runtime.cwd)
    label = run_label(cfg)
    opening: OpeningRun | None = None
    # First, on the other core: its matplotlib import then overlaps the data's loading rather than a training that
    # may want both cores (a 5-epoch MNIST run took 0.8 s longer when it started after the data).
    plotter = start_plotter()
    try:
        with phases("setup"):
            if hydra.mode == RunMode.MULTIRUN:  # jobs not known up front (Optuna's) get their folder here
                subdir = OmegaConf.to_container(hydra.sweep, resolve=False)["subdir"]
                claim_job_folder(output_dir, subdir, resuming=bool(cfg.resume))
            components = configure(cfg)
            resumed = load_checkpoint(cfg)
            warm_up(cfg.trainer.engine.value)
        rng = np.random.default_rng(cfg.seed)
        with phases("data"):
            # Before MLflow's import, which holds 170 MB or so: reading MNIST briefly needs twice its raw images.
            # Both imports are Python-bound too, and would only take turns (scikit-learn's, for moons).
            experiment = prepare(components, rng)
            # Hashing lets go of Python's lock: the digest of MNIST's 188 MB (0.16 s) overlaps the start of training.
            digest = in_thread(experiment.splits.digest, "nnexp-digest")
        opening = OpeningRun(lambda: phases("mlflow_setup"))
        with phases("setup"):  # before the store is opened: a value error creates no store
            objective = Objective.of(cfg, "val" in experiment.data)
            early_stopping = early_stopping_callback(cfg, experiment)
            # Before the run is reopened: a checkpoint that does not fit this run leaves the run's status as it was.
            state = restore_checkpoint(resumed, experiment, rng, early_stopping)
            tags = run_tags(cfg, job_choices(), project_dir, output_dir)
            tags.update({"objective": objective.metric, "objective_direction": objective.direction.value})
        tags["engine"] = experiment.trainer.engine_used
    except BaseException as exc:
        if opening is not None:
            opening.cancel()
        discard_unstarted(cfg, label, project_dir, output_dir, exc)
        raise
    trainer = experiment.trainer
    stops = StopRequests(trainer, output_dir / "checkpoints")
    opening.on_failure = lambda: trainer.request_stop("the tracking store failed", 1)

    def open_job_run() -> tuple[Tracker, TrackedRun]:
        tags["dataset_digest"], _ = digest.result()  # a resume on other data is refused before the run reopens
        tracker, tracked = open_run(cfg, project_dir, label, tags, resumed.run_id if resumed else None, output_dir)
        stops.run_id = tracked.run_id
        if resumed is not None:  # before the first progress line, which waits for the run
            print(resumed.resuming(trainer.epochs, project_dir), file=sys.stderr, flush=True)
        return tracker, tracked

    note_run_opened(output_dir, resolve_uri(cfg.tracking.uri, project_dir))
    opening.open(open_job_run)
    workers = Workers()
    kept: KeptModel | None = None
    try:
        with (
            stops,  # around the run's end too: a stop while it is closed would leave it RUNNING
            workers,  # inside stops, whose handler takes a further stop while the threads finish their work
            phases("mlflow_logging"),  # whatever the block does outside the phases below: MLflow's requests
            ending(opening),
        ):
            if resumed is None:
                opening.log_params(run_params(cfg))
            with phases("training"):
                history = train(cfg, experiment, opening, rng, output_dir, label, early_stopping, state, phases)
            tracked = opening.wait()
            epochs = len(history["train_loss"])
            with phases("evaluation"):
                test_loss, test_accuracy, predicted = evaluate(
                    experiment.network, experiment.loss, experiment.data["test"]
                )
                experiment.release_training_data()
            tracked.log_metrics({"test_loss": test_loss, "test_accuracy": test_accuracy}, step=epochs)
            splits = experiment.splits
            matrix = confusion_matrix(splits.y_test, predicted, splits.n_classes)
            # A stop asked for after training ends the run once its model is kept: no plots are drawn then. A run
            # whose plots cannot be written still keeps what it trained.
            drawing = None
            if stops.request is None:  # the plots are drawn while the model is saved and logged
                plots = run_plots(output_dir / "plots", experiment, history, matrix)
                drawing = workers.start(functools.partial(draw_plots, plotter, plots), "nnexp-plots")
            with phases("model"):
                kept = keep_model(output_dir, cfg, experiment, components.dataset, matrix)
            log_model_files(tracked, kept.files, output_dir, hydra.output_subdir)
            if kept.model_dir is not None:
                from nnexp.serving import log_saved_model

                log_saved_model(tracked, kept.model_dir, epochs, temporary=kept.temporary)
            plotted = False
            with phases("plots"):  # drawings started before a stop was asked for are finished and logged
                if drawing is not None:
                    (plotted, drawn), _ = drawing.result()
            if drawing is not None:
                phases.overlapped("plots", drawn)
            if plotted:
                tracked.log_artifact(output_dir / "plots", "plots")
            run_id = tracked.run_id
            phases.overlapped("mlflow_setup", opening.seconds)
            phases.overlapped("data_digest", digest.result()[1])
            tracked.log_metrics(phases.metrics(), step=epochs)
    except BaseException as exc:
        if opening.failed:
            discard_unstarted(cfg, label, project_dir, output_dir, exc)
        raise
    finally:
        if kept is not None:  # a temporary copy of the MLflow model is kept until the run has ended
            kept.discard()

    # With the best epoch's weights restored, the epoch metrics that describe the model are that epoch's.
    restored = early_stopping is not None and bool(early_stopping.best_weights)
    final_epoch = early_stopping.best_epoch if restored else len(history["train_loss"])
    finals = {key: values[final_epoch - 1] for key, values in history.items()}
    finals.update(test_loss=test_loss, test_accuracy=test_accuracy)
    n_test = len(experiment.data["test"])
    log.info(
        "%stest_accuracy=%.4f (%d/%d) in %.1f s; run %s; %s",
        f"val_accuracy={finals['val_accuracy']:.4f} " if "val_accuracy" in finals else "",
        test_accuracy,
        round(test_accuracy * n_test),
        n_test,
        time.perf_counter() - phases.started,
        run_id,
        opening.tracker.where_to_see(run_id),
    )
    if stops.request is not None:  # asked for after the last batch: nothing is lost but the plots
        reason, code = stops.request
        outcome = f"the model is kept and MLflow run {run_id} is FINISHED{'' if plotted else ', without plots'}"
        raise Interrupted(f"{reason} after training; {outcome}", code)
    return float(finals[objective.metric])


def open_run(
    cfg: DictConfig, project_dir: Path, label: str, tags: dict[str, Any], resume: str | None, output_dir: Path
) -> tuple[Tracker, TrackedRun]:
    """Check the store (and a sweep's parent run), then open the job's run, or reopen the resumed one."""
    uri = resolve_uri(cfg.tracking.uri, project_dir)
    if cfg.tracking.parent_run_id:
        check_parent(uri, cfg.tracking.parent_run_id, resuming=bool(cfg.resume))
    tracker = Tracker(uri, cfg.tracking.experiment)
    return tracker, tracker.open_or_reopen(label, tags, resume, outbox=output_dir)


def discard_unstarted(cfg: DictConfig, label: str, project_dir: Path, output_dir: Path, exc: BaseException) -> None:
    """A job that failed before its run could be opened leaves no folder; in a sweep it is kept as a FAILED child
    run, unless the store refused to create runs at all. A refused resume leaves the run's folder as it was."""
    if cfg.resume:  # a resumed job's run exists already: its failure to start again is no new run
        restore_setup_files(output_dir)
        return
    if not isinstance(exc, JobFolderError):  # another job's folder, or the user's
        discard_job_dir(output_dir)
    if cfg.tracking.parent_run_id and isinstance(exc, Exception) and not isinstance(exc, RunCreationError):
        record_failed_job(cfg, label, project_dir, exc)


def train(
    cfg: DictConfig,
    experiment: Experiment,
    tracked: OpeningRun,
    rng: np.random.Generator,
    output_dir: Path,
    label: str,
    early_stopping: EarlyStopping | None,
    state: TrainingState | None,
    phases: Phases,
) -> dict[str, list[float]]:
    """Fit with checkpoints and early stopping, from ``state`` when resumed (see :func:`restore_checkpoint`);
    returns the history.

    A stop request (see :class:`StopRequests`) ends training at the next batch boundary with a checkpoint, and
    raises :class:`Interrupted` saying how to resume.
    """
    trainer, network, optimizer = experiment.trainer, experiment.network, experiment.optimizer
    stateful = stateful_callbacks(early_stopping)
    directory = output_dir / "checkpoints"
    with phases("checkpoints"):
        identity = {
            "config": run_config_yaml(cfg),
            "overrides": [
                item for item in given_overrides(HydraConfig.get().overrides.task) if not item.startswith("resume=")
            ],
            "output_dir": str(output_dir.resolve()),
        }

    warned = False

    def save_checkpoint(stopped: TrainingState | None = None) -> str | None:
        """Write a checkpoint; one that cannot be written (a full disk) is a warning, and training goes on. Returns
        why it could not be written, or None."""
        nonlocal warned
        run_id = tracked.run_id  # the first checkpoint waits for the run to be open, which names it
        with phases("checkpoints"):
            try:
                checkpoint.save(
                    directory,
                    identity={"run_id": run_id, **identity},
                    network=network,
                    optimizer=optimizer,
                    rng=rng,
                    state=stopped or trainer.state,
                    callbacks=stateful,
                    stopped=stopped is not None,
                )
            except OSError as exc:
                reason = describe_os_error(exc, "write", directory)
                if not warned and stopped is None:  # a stop says it in its own line
                    log.warning("warning: checkpoint not written: %s", reason)
                warned = True
                return reason
        return None

    def log_checkpoint() -> None:
        if not (directory / checkpoint.MANIFEST).is_file():  # none was ever written (a disk full from the start)
            return
        with phases("mlflow_logging"):
            for path in checkpoint.files(directory):  # not the folder: a killed write may have left a partial file
                tracked.log_artifact(path, "checkpoint")

    rate_changes = not isinstance(experiment.schedule, Constant)  # a constant rate is the optimizer's param
    progress = Progress(label, run=tracked)
    callbacks: list[Callback] = [
        LearningRateScheduler(optimizer, experiment.schedule, experiment.network.dtype),
        progress,
        MetricLogger(tracked, phases, rate_changes, trainer),
    ]
    callbacks += stateful.values()
    if cfg.checkpoint.every != 0:
        callbacks.append(checkpoint.Checkpointer(save_checkpoint, cfg.checkpoint.every, cfg.checkpoint.seconds))
    if state is not None:  # a process killed between flushes may have sent fewer epochs than the checkpoint holds
        tracked.complete_history(state.history, rate_changes=rate_changes)
    try:
        history = trainer.fit(
            network,
            experiment.loss,
            optimizer,
            experiment.data["train"],
            rng,
            validation=experiment.data.get("val"),
            callbacks=callbacks,
            resume=state,
        )
        tracked.wait()  # a run that cannot be opened fails the job before its progress is shown
    except Stopped as stop:
        tracked.check()  # a run that could not be opened stops training with its own error, and keeps nothing
        failed = save_checkpoint(stop.state)
        resume = f"resume with: {resume_command(tracked.run_id)}"
        if tracked.deleted:  # the store takes nothing more of it, the checkpoint's copy neither
            resume = f"restore it with: {tracked.restore_command}, then {resume}"
        else:
            log_checkpoint()
        if failed is None:
            kept = f"checkpoint in {directory}; {resume}"
        elif (directory / checkpoint.MANIFEST).is_file():
            kept = f"the checkpoint could not be written ({failed}); the last one is in {directory}; {resume}"
        else:
            kept = f"the checkpoint could not be written ({failed}); there is none to resume from"
        raise Interrupted(f"{stop}; {kept}", stop.exit_code) from None
    finally:
        progress.close()
    if directory.is_dir():
        log_checkpoint()
    if early_stopping is not None and early_stopping.best_epoch:
        epochs_run = len(history["train_loss"])
        log.info(
            "early stopping: %s%s best at epoch %d (%.4f)%s",
            f"stopped at epoch {epochs_run}, " if epochs_run < trainer.epochs else "",
            early_stopping.monitor,
            early_stopping.best_epoch,
            early_stopping.best,
            "; its weights are restored" if early_stopping.best_weights else "",
        )
        tracked.log_metrics(
            {f"best_{early_stopping.monitor}": early_stopping.best, "best_epoch": early_stopping.best_epoch},
            step=len(history["train_loss"]),
        )
    return history
