"""One job: build everything from the composed config, train, evaluate, and record it all in MLflow."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from nnexp import __version__
from nnexp.config import FINAL_METRICS, GROUPS, Direction, check_known_keys
from nnexp.core.losses import LOSSES, Loss
from nnexp.core.metrics import confusion_matrix
from nnexp.core.network import Sequential
from nnexp.core.optimizers import OPTIMIZERS, Optimizer
from nnexp.core.schedules import SCHEDULES, LearningRateScheduler, Schedule
from nnexp.core.training import Callback, Examples, Trainer, evaluate, predict
from nnexp.datasets.base import DATASETS, Dataset, Splits
from nnexp.errors import ConfigError, NnexpError, ParameterError
from nnexp.models.base import MODELS, Model
from nnexp.progress import Progress
from nnexp.tracking import TrackedRun, Tracker, flatten, git_state, resolve_uri

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
        direction = cfg.objective.direction or (Direction.minimize if metric.endswith("loss") else Direction.maximize)
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


def configure(cfg: DictConfig) -> Components:
    """Construct every plugin the config names; fast, and raises NnexpError on any bad value."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key} is required; set it with {exc.full_key}=...") from None
    check_known_keys(cfg)
    Objective.of(cfg)
    try:
        trainer = Trainer(cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.shuffle)
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
    return components


def prepare(components: Components, rng: np.random.Generator) -> Experiment:
    """Load the data and build the network it fits; raises NnexpError on bad data."""
    splits = components.dataset.load(rng)
    loss, dtype = components.loss, components.dtype
    data = {
        part: Examples(x.astype(dtype, copy=False), loss.encode(y, splits.n_classes, dtype), y)
        for part, x, y in splits.parts()
    }
    network = components.model.build(splits.n_features, splits.n_classes, loss, rng, dtype)
    return Experiment(splits, data, network, loss, components.optimizer, components.schedule, components.trainer)


def build(cfg: DictConfig, rng: np.random.Generator) -> Experiment:
    """:func:`configure` then :func:`prepare`."""
    return prepare(configure(cfg), rng)


class MetricLogger(Callback):
    """Sends each epoch's metrics to the run, with ``step`` = epoch."""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.run.log_metrics(logs, step=epoch)


def run(cfg: DictConfig) -> float:
    """Train and evaluate one configuration; returns the final value of ``cfg.objective``, which sweepers optimise.

    Within a sweep (``tracking.parent_run_id`` set) a job that fails before training is still recorded, as a
    FAILED child run with its reason.
    """
    started = time.perf_counter()
    hydra = HydraConfig.get()
    output_dir = Path(hydra.runtime.output_dir)
    project_dir = Path(hydra.runtime.cwd)
    rng = np.random.default_rng(cfg.seed)
    label = run_label(cfg)
    try:
        components = configure(cfg)
        tracker = Tracker(resolve_uri(cfg.tracking.uri, project_dir), cfg.tracking.experiment)
        experiment = prepare(components, rng)
        objective = Objective.of(cfg, "val" in experiment.data)
    except BaseException as exc:
        discard_job_dir(output_dir)  # nothing ran: leave no directory behind
        if cfg.tracking.parent_run_id and isinstance(exc, Exception):
            record_failed_job(cfg, label, project_dir, exc)
        raise
    choices = job_choices()
    tags = run_tags(cfg, choices, project_dir, output_dir)
    tags.update({"objective": objective.metric, "objective_direction": objective.direction.value})
    with tracker.start_run(label, tags) as tracked:
        tracked.log_params(run_params(cfg))
        progress = Progress(label)
        try:
            history = experiment.trainer.fit(
                experiment.network,
                experiment.loss,
                experiment.optimizer,
                experiment.data["train"],
                rng,
                validation=experiment.data.get("val"),
                callbacks=[
                    LearningRateScheduler(experiment.optimizer, experiment.schedule),
                    progress,
                    MetricLogger(tracked),
                ],
            )
        finally:
            progress.close()
        test_loss, test_accuracy, predicted = evaluate(experiment.network, experiment.loss, experiment.data["test"])
        tracked.log_metrics({"test_loss": test_loss, "test_accuracy": test_accuracy}, step=cfg.trainer.epochs)
        write_artifacts(output_dir, cfg, experiment, history, predicted)
        log_artifacts(tracked, output_dir, hydra.output_subdir)
        run_id = tracked.run_id
    n_test = len(experiment.data["test"])
    val_accuracy = history["val_accuracy"][-1] if "val_accuracy" in history else None
    log.info(
        "%stest_accuracy=%.4f (%d/%d) in %.1f s; run %s; %s",
        "" if val_accuracy is None else f"val_accuracy={val_accuracy:.4f} ",
        test_accuracy,
        round(test_accuracy * n_test),
        n_test,
        time.perf_counter() - started,
        run_id,
        tracker.where_to_see(run_id),
    )
    finals = {key: values[-1] for key, values in history.items()}
    finals.update(test_loss=test_loss, test_accuracy=test_accuracy)
    return float(finals[objective.metric])


def job_choices() -> dict[str, Any]:
    """Hydra's config group choices (``model: deep_sigmoid``), without Hydra's own groups."""
    choices = HydraConfig.get().runtime.choices
    return {key: value for key, value in choices.items() if not key.startswith("hydra/")}


def job_overrides() -> list[str]:
    """The job's command-line overrides, without the parent run id a sweep adds."""
    return [item for item in HydraConfig.get().overrides.task if not item.startswith("tracking.parent_run_id=")]


def run_label(cfg: DictConfig) -> str:
    """In a sweep the job's overrides; else ``tracking.run_name``, the preset, or the group choices."""
    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN:  # tracking.run_name then names the sweep's parent run
        return " ".join(job_overrides()) or f"job {hydra.job.num}"
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    choices = job_choices()
    return choices.get("experiment") or "-".join(str(choices[registry.kind]) for registry, _ in GROUPS)


def record_failed_job(cfg: DictConfig, label: str, project_dir: Path, exc: Exception) -> None:
    """Keep a sweep job that failed before training as a FAILED child run, so the sweep's summary counts it."""
    reason = str(exc) if isinstance(exc, NnexpError) else f"{type(exc).__name__}: {exc}"
    tags = {"mlflow.parentRunId": cfg.tracking.parent_run_id, "overrides": " ".join(job_overrides()) or "(none)"}
    tags.update(job_tags())
    try:
        tracker = Tracker(resolve_uri(cfg.tracking.uri, project_dir), cfg.tracking.experiment)
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
    """The resolved config as dotted MLflow params; ``tags`` go to the run's tags instead."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("tags", None)
    return flatten(container)


def run_tags(cfg: DictConfig, choices: dict[str, Any], project_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Hydra's group choices (so presets show), plugin sources, versions, git state and the preset's own tags."""
    tags: dict[str, Any] = {key: value for key, value in choices.items() if value is not None}
    for registry, _ in GROUPS:
        tags[f"source.{registry.kind}"] = registry.source(cfg[registry.kind].name)
    tags.update(git_state(project_dir))
    tags.update({"nnexp_version": __version__, "output_dir": str(output_dir.resolve())})
    tags["overrides"] = " ".join(job_overrides()) or "(none)"
    tags.update(job_tags())
    tags.update(OmegaConf.to_container(cfg.tags, resolve=True))
    if cfg.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    return tags


def write_artifacts(
    output_dir: Path,
    cfg: DictConfig,
    experiment: Experiment,
    history: dict[str, list[float]],
    predicted: np.ndarray,
) -> None:
    """Resolved config, weights, confusion matrix and plots, written into the job's output directory."""
    from nnexp import plots

    splits = experiment.splits
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    experiment.network.save(output_dir / "model.npz")
    matrix = confusion_matrix(splits.y_test, predicted, splits.n_classes)
    plots.write_confusion_csv(matrix, splits.names(), output_dir / "confusion_matrix.csv")
    figures = output_dir / "plots"
    figures.mkdir(exist_ok=True)
    plots.plot_confusion_matrix(matrix, splits.names(), figures / "confusion_matrix.png")
    plots.plot_learning_curves(history, figures / "learning_curves.png")
    if splits.n_features == 2:
        network = experiment.network
        x = np.concatenate([splits.x_train, splits.x_test])
        y = np.concatenate([splits.y_train, splits.y_test])

        def predict_labels(points: np.ndarray) -> np.ndarray:
            return predict(network, points.astype(network.dtype)).argmax(axis=1)

        plots.plot_decision_boundary(predict_labels, x, y, splits.names(), figures / "decision_boundary.png")


def log_artifacts(tracked: TrackedRun, output_dir: Path, hydra_subdir: str | None) -> None:
    """Send what :func:`write_artifacts` wrote, and Hydra's own copy of the config, to the run."""
    for name in ("config.yaml", "model.npz", "confusion_matrix.csv"):
        tracked.log_artifact(output_dir / name)
    tracked.log_artifact(output_dir / "plots", "plots")
    if hydra_subdir:  # hydra.output_subdir=null turns Hydra's copy off
        tracked.log_artifact(output_dir / hydra_subdir, "hydra")


def discard_job_dir(output_dir: Path) -> None:
    """Remove a job directory that holds only what Hydra wrote before the job failed, so no stray output remains."""
    hydra_files = {".hydra", "nnexp.log"}
    if output_dir.is_dir() and {entry.name for entry in output_dir.iterdir()} <= hydra_files:
        shutil.rmtree(output_dir)
        parent = output_dir.parent
        if parent.name != "outputs" and not any(parent.iterdir()):
            parent.rmdir()
