"""One job: build everything from the composed config, train, evaluate, and record it all in MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from nnexp import __version__, checkpoint, memory
from nnexp.atomic import remove_partials, replacing
from nnexp.cli_errors import check_plugin_nodes
from nnexp.config import (
    FINAL_METRICS,
    GROUPS,
    Direction,
    check_known_keys,
    check_tags,
    default_direction,
    setting_overrides,
)
from nnexp.core.activations import ACTIVATIONS, Activation
from nnexp.core.engine import warm_up
from nnexp.core.initializers import INITIALIZERS
from nnexp.core.losses import LOSSES, Loss
from nnexp.core.metrics import confusion_matrix
from nnexp.core.network import Sequential
from nnexp.core.optimizers import OPTIMIZERS, Optimizer
from nnexp.core.schedules import SCHEDULES, Constant, LearningRateScheduler, Schedule
from nnexp.core.training import Callback, EarlyStopping, Examples, Stopped, Trainer, TrainingState, evaluate, predict
from nnexp.datasets.base import DATASETS, Dataset, Splits, checked_splits
from nnexp.errors import ConfigError, Interrupted, NnexpError, ParameterError, PluginError, require
from nnexp.folders import describe_os_error, discard_job_dir
from nnexp.models.base import MODELS, Model
from nnexp.plugins import blame, plugin_label
from nnexp.progress import Progress
from nnexp.sweep import MAX_RUN_NAME, PARENT_OVERRIDE, short_keys
from nnexp.tracking import (
    MAX_PARAM_LENGTH,
    SYSTEM_PREFIX,
    RunCreationError,
    TrackedRun,
    Tracker,
    check_parent,
    flatten,
    git_state,
    mlflow_metrics,
    resolve_uri,
)

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The plugins a config names, constructed (so their values are checked) but not yet given data."""

    dataset: Dataset
    model: Model
    loss: Loss
    optimizer: Optimizer
    schedule: Schedule
    trainer: Trainer
    dtype: type[np.floating]


@dataclass
class Objective:
    """The final metric a run returns to a sweeper, and whether larger is better."""

    metric: str
    direction: Direction

    @classmethod
    def of(cls, cfg: DictConfig, has_validation: bool | None = None) -> Objective:
        """``cfg.objective`` resolved; ``auto`` needs ``has_validation``, and stays ``auto`` when it is None."""
        metric = cfg.objective.metric
        if metric not in ("auto", *FINAL_METRICS):
            raise ConfigError(f"objective.metric must be auto or one of {', '.join(FINAL_METRICS)}, got {metric!r}")
        if metric == "auto" and has_validation is not None:
            metric = "val_accuracy" if has_validation else "test_accuracy"
        if metric.startswith("val_") and has_validation is False:
            raise ConfigError(f"objective.metric={metric} needs a validation split, and this dataset has none")
        direction = cfg.objective.direction or default_direction(metric)
        return cls(metric, direction)

    def worst(self) -> float:
        """What a failed job returns, so that a sweeper such as Optuna ranks it last instead of crashing."""
        return -math.inf if self.direction is Direction.maximize else math.inf


@dataclass
class Experiment:
    """Everything a job needs to train: data encoded for the loss, and a freshly initialised network."""

    splits: Splits
    data: dict[str, Examples]
    network: Sequential
    loss: Loss
    optimizer: Optimizer
    schedule: Schedule
    trainer: Trainer

    def release_training_data(self) -> None:
        """Let go of the training and validation inputs, the run's largest arrays, once trained and evaluated, so
        that drawing plots and saving the model do not add to them. 2-D data stays: the decision boundary shows
        every point, and they are few."""
        self.data = {"test": self.data["test"]}
        splits = self.splits
        if splits.n_features != 2:
            empty = np.empty((0, splits.n_features), splits.x_train.dtype)
            self.splits = dataclasses.replace(
                splits, x_train=empty, y_train=splits.y_train[:0].copy(), x_val=None, y_val=None
            )


#: What a run was doing in a phase, and what to reduce, when it runs out of memory there.
OUT_OF_MEMORY = {
    "setup": ("setting up", memory.ADVICE),
    "data": ("loading the data", "use a smaller dataset, or free memory"),
    "mlflow_setup": ("opening the tracking store", "free memory"),
    "mlflow_logging": ("logging to MLflow", memory.ADVICE),
    "training": ("training", memory.ADVICE),
    "evaluation": ("evaluating", memory.ADVICE),
    "checkpoints": ("writing a checkpoint", memory.ADVICE),
    "model": ("saving the model", memory.ADVICE),
    "plots": ("drawing plots", memory.ADVICE),
}


class Phases:
    """Wall seconds of a run's phases, each second counted once: time in a phase entered inside another (a
    checkpoint written during training) is taken out of the outer one."""

    def __init__(self) -> None:
        self.started = self._since = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._open: list[str] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._charge()
        self._open.append(name)
        doing, advice = OUT_OF_MEMORY.get(name, (name, memory.ADVICE))
        try:
            with memory.running_out(doing, advice):  # the phase says what ran out, in one line
                yield
        except Exception as exc:
            blamed = None if isinstance(exc, NnexpError) else blame(exc)
            if blamed is None:
                raise
            raise blamed from exc  # a user's plugin failed: one line naming it; HYDRA_FULL_ERROR=1 shows where
        finally:
            self._charge()
            self._open.pop()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._open:
            self.seconds[self._open[-1]] = self.seconds.get(self._open[-1], 0.0) + now - self._since
        self._since = now

    def metrics(self) -> dict[str, float]:
        """``system/<phase>_seconds`` of every phase so far, and ``system/run_seconds`` since the run started."""
        self._charge()
        found = {f"{SYSTEM_PREFIX}{name}_seconds": seconds for name, seconds in self.seconds.items()}
        found[f"{SYSTEM_PREFIX}run_seconds"] = time.perf_counter() - self.started
        return found


def configure(cfg: DictConfig) -> Components:
    """Construct every plugin the config names; fast, and raises NnexpError on any bad value."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key} is required; set it with {exc.full_key}=...") from None
    check_known_keys(cfg)
    check_plugin_nodes(cfg, preset_files())
    check_tags(OmegaConf.to_container(cfg.tags, resolve=True))  # type: ignore[arg-type]
    require(cfg.seed >= 0, "seed", "must be >= 0", cfg.seed)
    every = cfg.checkpoint.every
    require(every is None or every >= 0, "checkpoint.every", "must be >= 0", every)
    require(cfg.checkpoint.seconds > 0, "checkpoint.seconds", "must be > 0", cfg.checkpoint.seconds)
    Objective.of(cfg)
    try:
        trainer = Trainer(cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.shuffle, cfg.trainer.engine.value)
    except ParameterError as exc:
        raise exc.within("trainer") from None
    components = Components(
        dataset=DATASETS.build(cfg.dataset),
        model=MODELS.build(cfg.model),
        loss=LOSSES.build(cfg.loss),
        optimizer=OPTIMIZERS.build(cfg.optimizer),
        schedule=SCHEDULES.build(cfg.schedule),
        trainer=trainer,
        dtype=np.dtype(cfg.trainer.dtype.value).type,
    )
    components.model.check(components.loss)
    warmup = getattr(components.schedule, "warmup_epochs", 0)
    if warmup and warmup >= trainer.epochs:  # the rate would still be rising when training ends
        raise ConfigError(
            f"schedule.warmup_epochs must be < trainer.epochs, got warmup_epochs={warmup} with "
            f"epochs={trainer.epochs}; the warm-up would end after training, short of optimizer.learning_rate"
        )
    check_param_lengths(run_params(cfg))
    return components


def check_param_lengths(params: dict[str, Any]) -> None:
    """Refuse a value MLflow would cut to :data:`MAX_PARAM_LENGTH` characters: the record would not be the run's."""
    for key, value in params.items():
        if len(str(value)) > MAX_PARAM_LENGTH:
            raise ConfigError(
                f"{key}: an MLflow param holds at most {MAX_PARAM_LENGTH} characters, this value has "
                f"{len(str(value))}; the run's record would be cut short"
            )


def prepare(components: Components, rng: np.random.Generator) -> Experiment:
    """Load the data and build the network it fits; raises NnexpError on bad data."""
    splits = checked_splits(components.dataset, components.dataset.load(rng))
    loss, dtype = components.loss, components.dtype
    data = {
        part: Examples(x.astype(dtype, copy=False), loss.encode(y, splits.n_classes, dtype), y)
        for part, x, y in splits.parts()
    }
    memory.check_fits(components.model, components.optimizer, loss, splits, components.trainer.batch_size, dtype)
    with memory.running_out("building the network", "use a smaller model"):
        network = components.model.build(splits.n_features, splits.n_classes, loss, rng, dtype)
    check_activation_shapes(network, data["train"].x[:2])
    components.trainer.select_engine(network, loss, components.optimizer)
    return Experiment(splits, data, network, loss, components.optimizer, components.schedule, components.trainer)


def check_activation_shapes(network: Sequential, x: np.ndarray) -> None:
    """Pass a few rows through ``network`` and refuse an activation whose output is not shaped like its input,
    which the next layer would meet as a bare NumPy error naming no plugin."""
    for layer in network.layers:
        out = layer.forward(x)
        if isinstance(layer, Activation) and np.shape(out) != x.shape:
            raise PluginError(
                f"{plugin_label(ACTIVATIONS, type(layer))} returned shape {np.shape(out)} for an input of shape "
                f"{x.shape}; an activation's output must be shaped like its input"
            )
        x = out


def build(cfg: DictConfig, rng: np.random.Generator) -> Experiment:
    """:func:`configure` then :func:`prepare`."""
    return prepare(configure(cfg), rng)


class MetricLogger(Callback):
    """Sends each epoch's metrics to the run, with ``step`` = epoch; the learning rate only if ``rate_changes``."""

    def __init__(self, run: TrackedRun, phases: Phases, rate_changes: bool) -> None:
        self.run, self.phases, self.rate_changes = run, phases, rate_changes

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        with self.phases("mlflow_logging"):
            self.run.log_metrics(mlflow_metrics(logs, rate_changes=self.rate_changes), step=epoch)


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
        MetricLogger(tracked, phases, rate_changes),
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
        log_checkpoint()
        resume = resume_command(tracked.run_id)
        raise Interrupted(f"{stop}; {kept} in {directory}; resume with: {resume}", stop.exit_code) from None
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

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # only the main thread may handle signals
            self._previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
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


def resume_command(run_id: str) -> str:
    return f"python -m nnexp resume={run_id}"


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
    logged = ["train_loss", "train_accuracy", *(["val_loss", "val_accuracy"] if "val" in experiment.data else [])]
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


def run_config_yaml(cfg: DictConfig) -> str:
    """The resolved config, without ``resume``: what a resumed run must compose to again."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("resume", None)
    return OmegaConf.to_yaml(container)


def load_checkpoint(cfg: DictConfig) -> checkpoint.Checkpoint | None:
    """The checkpoint ``resume`` names, after checking the config composes to the one it was written with."""
    if not cfg.resume:
        return None
    loaded = checkpoint.load(Path(cfg.resume))
    if loaded.manifest["config"] != run_config_yaml(cfg):
        before, now = OmegaConf.create(loaded.manifest["config"]), OmegaConf.create(run_config_yaml(cfg))
        changed = sorted(key for key, value in flatten(before).items() if flatten(now).get(key) != value)
        raise ConfigError(
            f"resume={cfg.resume}: the config no longer composes to the run's ({', '.join(changed) or 'keys differ'}); "
            "were conf/ presets or plugins changed?"
        )
    remove_partials(loaded.path.parent)  # left by the process that wrote it, killed while writing
    return loaded


def preset_files() -> dict[str, Path]:
    """The YAML file of each config group's chosen preset, by group; none outside a Hydra job."""
    if not HydraConfig.initialized():
        return {}
    runtime = HydraConfig.get().runtime
    folders = [Path(source.path) for source in runtime.config_sources if source.schema == "file"]
    found = {}
    for group, choice in runtime.choices.items():
        files = [folder / group / f"{choice}.yaml" for folder in folders] if choice else []
        file = next((file for file in files if file.is_file()), None)
        if file is not None:
            found[group] = file
    return found


def job_choices() -> dict[str, Any]:
    """Hydra's config group choices (``model: deep_sigmoid``), without Hydra's own groups."""
    choices = HydraConfig.get().runtime.choices
    return {key: value for key, value in choices.items() if not key.startswith("hydra/")}


def job_overrides() -> list[str]:
    """The job's command-line overrides, without the parent run id a sweep adds."""
    typed = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)  # as given: ${...} unresolved
    return [item for item in typed if not item.startswith(f"{PARENT_OVERRIDE}=")]


def run_label(cfg: DictConfig) -> str:
    """In a sweep the job's overrides (the sweep renames its children at the end); else ``tracking.run_name``, or
    the preset and the overrides given, keys shortened (``quadrants seed=3``), or the group choices."""
    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN:  # tracking.run_name then names the sweep's parent run
        return " ".join(job_overrides()) or f"job {hydra.job.num}"
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    choices = job_choices()
    given = [(key, value) for key, value in setting_overrides(job_overrides()) if key != "experiment"]
    names = short_keys([key for key, _ in given])
    parts = [choices["experiment"]] if choices.get("experiment") else []
    parts += [f"{names[key]}={value}" for key, value in given]
    if parts:
        return " ".join(parts)[:MAX_RUN_NAME]
    return "-".join(str(choices[registry.kind]) for registry, _ in GROUPS)


def record_failed_job(cfg: DictConfig, label: str, project_dir: Path, exc: Exception) -> None:
    """Keep a sweep job that failed before training as a FAILED child run, so the sweep's summary counts it."""
    reason = str(exc) if isinstance(exc, NnexpError) else f"{type(exc).__name__}: {exc}"
    tags = {"mlflow.parentRunId": cfg.tracking.parent_run_id, "overrides": " ".join(job_overrides()) or "(none)"}
    tags.update(job_tags())
    uri = resolve_uri(cfg.tracking.uri, project_dir)
    try:
        check_parent(uri, cfg.tracking.parent_run_id, resuming=False)
    except NnexpError:
        return  # no child of a run that cannot be its parent; the job's own error says why it failed
    try:
        tracker = Tracker(uri, cfg.tracking.experiment)
        tracker.record_failure(label, tags, reason, run_params(cfg))
    except NnexpError as store_error:
        log.warning("could not record the failed job in MLflow: %s", store_error)


def job_tags() -> dict[str, Any]:
    """The job number within a sweep, and how many BLAS threads the job's process may use."""
    from threadpoolctl import threadpool_info

    hydra = HydraConfig.get()
    tags: dict[str, Any] = {}
    if hydra.mode == RunMode.MULTIRUN:
        tags["job_num"] = hydra.job.num
    blas = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    if blas:
        tags["blas_threads"] = max(blas)
    return tags


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted MLflow params; ``tags`` go to the run's tags instead, and where the run is
    recorded (``tracking.*``: its store, experiment, name and parent) and ``resume`` are the run's own record, not
    settings to compare runs by."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for bookkeeping in ("tags", "tracking", "resume"):
        container.pop(bookkeeping, None)
    return flatten(container)


#: The model fields that name a plugin of their own, recorded as ``source.<field>`` tags.
MODEL_PLUGIN_FIELDS = (
    ("activation", ACTIVATIONS),
    ("output_activation", ACTIVATIONS),
    ("input_activation", ACTIVATIONS),
    ("initializer", INITIALIZERS),
)


def run_tags(cfg: DictConfig, choices: dict[str, Any], project_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Hydra's group choices (so presets show), plugin sources, versions, git state and the preset's own tags."""
    tags: dict[str, Any] = {key: value for key, value in choices.items() if value is not None}
    for registry, _ in GROUPS:
        tags[f"source.{registry.kind}"] = registry.source(cfg[registry.kind].name)
    for field, registry in MODEL_PLUGIN_FIELDS:  # a model's activations and initializer are plugins too
        name = cfg.model.get(field)
        if isinstance(name, str) and name in registry:
            tags[f"source.{field}"] = registry.source(name)
    tags.update(git_state(project_dir))
    tags.update({"nnexp_version": __version__, "output_dir": str(output_dir.resolve())})
    tags["overrides"] = " ".join(job_overrides()) or "(none)"
    tags.update(job_tags())
    tags.update(OmegaConf.to_container(cfg.tags, resolve=True))
    if cfg.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    return tags


def keep_model(
    output_dir: Path, cfg: DictConfig, experiment: Experiment, dataset: Dataset, matrix: np.ndarray
) -> Path | None:
    """Write what a run must keep: resolved config, weights, confusion matrix and the MLflow model folder (None
    for a network with a layer nnexp cannot describe, with a warning); a write that fails fails the run."""
    from nnexp.plots import write_confusion_csv
    from nnexp.serving import describe, save_model

    splits = experiment.splits
    model_dir = output_dir / "model"
    try:
        with replacing(output_dir / "config.yaml", "w") as file:
            file.write(OmegaConf.to_yaml(cfg, resolve=True))
        experiment.network.save(output_dir / "model.npz")
        write_confusion_csv(matrix, splits.names(), output_dir / "confusion_matrix.csv")
        try:
            spec = describe(experiment.network, experiment.loss, splits.names(), dataset)
        except NnexpError as exc:
            log.warning("the run logs no MLflow model: %s", exc)
            return None
        if model_dir.exists():  # saved by an earlier attempt of a resumed run
            shutil.rmtree(model_dir)
        save_model(model_dir, experiment.network, spec, splits.x_test)
    except OSError as exc:
        shutil.rmtree(model_dir, ignore_errors=True)  # half an MLflow model would load as a broken one
        raise NnexpError(f"the trained model was not kept: {describe_os_error(exc, 'write', output_dir)}") from None
    return model_dir


def log_model_files(tracked: TrackedRun, output_dir: Path, hydra_subdir: str | None) -> None:
    """Send what :func:`keep_model` wrote, and Hydra's own copy of the config, to the run."""
    for name in ("config.yaml", "model.npz", "confusion_matrix.csv"):
        tracked.log_artifact(output_dir / name)
    if hydra_subdir:  # hydra.output_subdir=null turns Hydra's copy off
        tracked.log_artifact(output_dir / hydra_subdir, "hydra")


def write_plots(folder: Path, experiment: Experiment, history: dict[str, list[float]], matrix: np.ndarray) -> bool:
    """Confusion matrix, learning curves and (for 2-D data) decision boundary as PNG files in ``folder``; a plot
    that cannot be written is a warning, not a failed run. Returns whether any plot was written."""
    from nnexp import plots

    splits = experiment.splits
    try:
        folder.mkdir(exist_ok=True)
        plots.plot_confusion_matrix(matrix, splits.names(), folder / "confusion_matrix.png")
        plots.plot_learning_curves(history, folder / "learning_curves.png")
        if splits.n_features == 2:
            network = experiment.network
            x = np.concatenate([splits.x_train, splits.x_test])
            y = np.concatenate([splits.y_train, splits.y_test])

            def predict_labels(points: np.ndarray) -> np.ndarray:
                return predict(network, points.astype(network.dtype)).argmax(axis=1)

            plots.plot_decision_boundary(predict_labels, x, y, splits.names(), folder / "decision_boundary.png")
    except OSError as exc:
        log.warning("warning: plots not written: %s", describe_os_error(exc, "write", folder))
    return folder.is_dir() and any(folder.iterdir())
