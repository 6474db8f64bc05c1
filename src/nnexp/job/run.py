"""One job: build everything from the composed config, train, evaluate, and record it all in MLflow."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nnexp.core.engine import warm_up
from nnexp.core.metrics import confusion_matrix
from nnexp.core.schedules import Constant, LearningRateScheduler
from nnexp.core.training import Callback, EarlyStopping, Stopped, TrainingState, evaluate
from nnexp.errors import Interrupted
from nnexp.folders import describe_os_error, discard_job_dir, note_run_opened
from nnexp.job import checkpoint
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
    job_choices,
    keep_model,
    log_model_files,
    record_failed_job,
    run_config_yaml,
    run_label,
    run_tags,
    write_plots,
)
from nnexp.tracking.store import RunCreationError, check_parent, resolve_uri
from nnexp.tracking.tracked_run import TrackedRun, Tracker

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Train and evaluate one configuration; returns the final value of ``cfg.objective``, which sweepers optimise.

    Within a sweep (``tracking.parent_run_id`` set) a job that fails before training is still recorded, as a
    FAILED child run with its reason.
    """
    phases = Phases()
    hydra = HydraConfig.get()
    output_dir = Path(hydra.runtime.output_dir)
    project_dir = Path(hydra.runtime.cwd)
    label = run_label(cfg)
    try:
        with phases("setup"):
            components = configure(cfg)
            resumed = load_checkpoint(cfg)
            warm_up(cfg.trainer.engine.value)
        rng = np.random.default_rng(cfg.seed)
        with phases("data"):
            # Before MLflow's import, which holds 170 MB or so: reading MNIST briefly needs twice its raw images.
            experiment = prepare(components, rng)
        with phases("setup"):  # before the store is opened: a value error creates no store
            objective = Objective.of(cfg, "val" in experiment.data)
            early_stopping = early_stopping_callback(cfg, experiment)
            # Before the run is reopened: a checkpoint that does not fit this run leaves the run's status as it was.
            state = restore_checkpoint(resumed, experiment, rng, early_stopping)
        with phases("mlflow_setup"):
            uri = resolve_uri(cfg.tracking.uri, project_dir)
            if cfg.tracking.parent_run_id:
                check_parent(uri, cfg.tracking.parent_run_id, resuming=bool(cfg.resume))
            tracker = Tracker(uri, cfg.tracking.experiment)
    except BaseException as exc:
        if not cfg.resume:
            discard_job_dir(output_dir)  # nothing ran: leave no directory behind
        # A resumed job's run exists already: its failure to start again is no new run.
        if cfg.tracking.parent_run_id and not cfg.resume and isinstance(exc, Exception):
            record_failed_job(cfg, label, project_dir, exc)
        raise
    with phases("setup"):
        choices = job_choices()
        tags = run_tags(cfg, choices, project_dir, output_dir)
        tags.update({"objective": objective.metric, "objective_direction": objective.direction.value})
    with phases("data"):
        tags["dataset_digest"] = experiment.splits.digest()
    tags["engine"] = experiment.trainer.engine_used
    stops = StopRequests(experiment.trainer, output_dir / "checkpoints")
    note_run_opened(output_dir)
    try:
        with (
            stops,  # around the run's end too: a stop while it is closed would leave it RUNNING
            phases("mlflow_logging"),  # whatever the block does outside the phases below: MLflow's requests
            tracker.start_run(label, tags, resumed.run_id if resumed else None, outbox=output_dir) as tracked,
        ):
            stops.run_id = tracked.run_id
            if resumed is None:
                tracked.log_params(run_params(cfg))
            else:
                print(resumed.resuming(experiment.trainer.epochs, project_dir), file=sys.stderr, flush=True)
            with phases("training"):
                history = train(cfg, experiment, tracked, rng, output_dir, label, early_stopping, state, phases)
            epochs = len(history["train_loss"])
            with phases("evaluation"):
                test_loss, test_accuracy, predicted = evaluate(
                    experiment.network, experiment.loss, experiment.data["test"]
                )
                experiment.release_training_data()
            tracked.log_metrics({"test_loss": test_loss, "test_accuracy": test_accuracy}, step=epochs)
            # The model first: a run whose plots cannot be written still keeps what it trained.
            splits = experiment.splits
            matrix = confusion_matrix(splits.y_test, predicted, splits.n_classes)
            with phases("model"):
                model_dir = keep_model(output_dir, cfg, experiment, components.dataset, matrix)
            log_model_files(tracked, output_dir, hydra.output_subdir)
            if model_dir is not None:
                from nnexp.serving import log_saved_model

                log_saved_model(tracked, model_dir, epochs)
            with phases("plots"):  # a stop asked for after training ends the run once its model is kept
                plotted = stops.request is None and write_plots(output_dir / "plots", experiment, history, matrix)
            if plotted:
                tracked.log_artifact(output_dir / "plots", "plots")
            run_id = tracked.run_id
            tracked.log_metrics(phases.metrics(), step=epochs)
    except RunCreationError:
        if not cfg.resume:
            discard_job_dir(output_dir)  # the store refused the run before anything ran
        raise
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
        tracker.where_to_see(run_id),
    )
    if stops.request is not None:  # asked for after the last batch: nothing is lost but the plots
        reason, code = stops.request
        kept = f"the model is kept and MLflow run {run_id} is FINISHED{'' if plotted else ', without plots'}"
        raise Interrupted(f"{reason} after training; {kept}", code)
    return float(finals[objective.metric])


def train(
    cfg: DictConfig,
    experiment: Experiment,
    tracked: TrackedRun,
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
            "run_id": tracked.run_id,
            "config": run_config_yaml(cfg),
            "overrides": [item for item in HydraConfig.get().overrides.task if not item.startswith("resume=")],
            "output_dir": str(output_dir.resolve()),
        }

    warned = False

    def save_checkpoint(stopped: TrainingState | None = None) -> bool:
        """Write a checkpoint; one that cannot be written (a full disk) is a warning, and training goes on."""
        nonlocal warned
        with phases("checkpoints"):
            try:
                checkpoint.save(
                    directory,
                    identity=identity,
                    network=network,
                    optimizer=optimizer,
                    rng=rng,
                    state=stopped or trainer.state,
                    callbacks=stateful,
                    stopped=stopped is not None,
                )
            except OSError as exc:
                if not warned:
                    log.warning("warning: checkpoint not written: %s", describe_os_error(exc, "write", directory))
                warned = True
                return False
        return True

    def log_checkpoint() -> None:
        with phases("mlflow_logging"):
            for path in checkpoint.files(directory):  # not the folder: a killed write may have left a partial file
                tracked.log_artifact(path, "checkpoint")

    rate_changes = not isinstance(experiment.schedule, Constant)  # a constant rate is the optimizer's param
    progress = Progress(label)
    callbacks: list[Callback] = [
        LearningRateScheduler(optimizer, experiment.schedule),
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
    except Stopped as stop:
        kept = "checkpoint" if save_checkpoint(stop.state) else "the checkpoint could not be written; the last one"
        resume = f"resume with: {resume_command(tracked.run_id)}"
        if tracked.deleted:  # the store takes nothing more of it, the checkpoint's copy neither
            resume = f"restore it with: {tracked.restore_command}, then {resume}"
        else:
            log_checkpoint()
        raise Interrupted(f"{stop}; {kept} in {directory}; {resume}", stop.exit_code) from None
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
