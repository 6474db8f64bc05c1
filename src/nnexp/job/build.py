"""From a composed config to built plugins and loaded data: every value checked before anything is written."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from nnexp.config import (
    FINAL_METRICS,
    MONITORED,
    Direction,
    check_known_keys,
    check_list_items,
    check_run_names,
    check_tags,
    default_direction,
    given_overrides,
)
from nnexp.core.activations import ACTIVATIONS, Activation
from nnexp.core.losses import LOSSES, Loss
from nnexp.core.network import Sequential
from nnexp.core.optimizers import OPTIMIZERS, Optimizer
from nnexp.core.schedules import SCHEDULES, Schedule
from nnexp.core.training import EarlyStopping, Examples, Trainer
from nnexp.datasets.base import DATASETS, Dataset, Splits, checked_splits
from nnexp.errors import ConfigError, ParameterError, PluginError, require
from nnexp.job import memory
from nnexp.models.base import MODELS, Model
from nnexp.presets import check_plugin_nodes, chosen_presets, named_by_preset, where_hydra_set
from nnexp.tracking.store import flatten
from nnexp.tracking.tracked_run import MAX_PARAM_LENGTH


@dataclass
class Components:
    """The plugins a config names, constructed (so their values are checked) but not yet given data."""

    dataset: Dataset
    dataset_config: dict[str, Any]
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
        given = cfg.objective.direction
        direction = Direction(given) if given is not None else default_direction(metric)
        if direction is not default_direction(metric):
            where = where_configured("objective.direction", cfg)
            kind = "a loss, better lower" if metric.endswith("loss") else "an accuracy, better higher"
            raise ConfigError(
                f"{where}objective.direction={direction.value} contradicts objective.metric={metric} ({kind}); "
                "leave objective.direction out (null) to rank by the metric's own direction"
            )
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


def configure(cfg: DictConfig) -> Components:
    """Construct every plugin the config names; fast, and raises NnexpError on any bad value, naming the preset that
    set a value out of range."""
    try:
        return constructed(cfg)
    except ParameterError as exc:
        where = where_configured(exc.field, cfg)
        if not where:
            raise
        raise ConfigError(f"{where}{exc}") from None


def constructed(cfg: DictConfig) -> Components:
    """:func:`configure`, its errors naming no preset."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key} is required; set it with {exc.full_key}=...") from None
    except InterpolationResolutionError as exc:
        overrides = given_overrides(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        named_by_preset(exc, preset_files(), overrides)
        raise
    check_known_keys(cfg)
    check_list_items(cfg)
    check_plugin_nodes(cfg, preset_files())
    check_tags(OmegaConf.to_container(cfg.tags, resolve=True))  # type: ignore[arg-type]
    check_run_names(cfg.tracking)
    require(cfg.seed >= 0, "seed", "must be >= 0", cfg.seed)
    every = cfg.checkpoint.every
    require(every is None or every >= 0, "checkpoint.every", "must be >= 0", every)
    require(cfg.checkpoint.seconds > 0, "checkpoint.seconds", "must be > 0", cfg.checkpoint.seconds)
    Objective.of(cfg)
    check_early_stopping(cfg.early_stopping)
    try:
        trainer = Trainer(cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.shuffle, cfg.trainer.engine.value)
    except ParameterError as exc:
        raise exc.within("trainer") from None
    components = Components(
        dataset=DATASETS.build(cfg.dataset),
        dataset_config=dict(cfg.dataset),
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
    floor, rate = getattr(components.schedule, "min_rate", None), cfg.optimizer.get("learning_rate")
    if floor is not None and rate is not None and floor >= rate:  # the schedule would raise the rate, not lower it
        raise ConfigError(f"schedule.min_rate must be < optimizer.learning_rate ({rate}), got {floor}")
    check_param_lengths(run_params(cfg))
    check_in_dtype(cfg, components.dtype)
    return components


def check_early_stopping(settings: DictConfig) -> None:
    """Check early stopping's values also while it is off (``patience`` null): the run records them, and a
    ``monitor`` that no run logs would only be found once early stopping is turned on."""
    try:
        require(settings.monitor in MONITORED, "monitor", f"must be one of {', '.join(MONITORED)}", settings.monitor)
        EarlyStopping.check(settings.patience, settings.min_delta)
    except ParameterError as exc:
        raise exc.within("early_stopping") from None


def where_configured(key: str, cfg: DictConfig) -> str:
    """``FILE: `` naming the preset that set ``key`` of ``cfg``, by ``cfg``'s Hydra node or else the running job's;
    ``""`` when none did."""
    hydra = cfg.hydra if "hydra" in cfg else HydraConfig.get() if HydraConfig.initialized() else None
    return where_hydra_set(key, hydra) if hydra is not None else ""


def prepare(components: Components, rng: np.random.Generator) -> Experiment:
    """Load the data and build the network it fits; raises NnexpError on bad data."""
    memory.check_data_fits(components.dataset_config, components.loss, components.dtype)
    loss, dtype = components.loss, components.dtype
    try:
        loaded = components.dataset.load(rng)
    except ParameterError as exc:  # a setting that the data proves wrong, such as a split that leaves no sample
        raise exc.within("dataset") from None
    splits = checked_splits(components.dataset, loaded, dtype)
    data = {
        part: Examples(x.astype(dtype, copy=False), loss.encode(y, splits.n_classes, dtype), y)
        for part, x, y in splits.parts()
    }
    memory.check_fits(components.model, components.optimizer, loss, splits, components.trainer.batch_size, dtype)
    with memory.running_out("building the network", "use a smaller model"):
        network = components.model.build(splits.n_features, splits.n_classes, loss, rng, dtype)
    check_plugin_outputs(network, loss, data["train"].x[:2], data["train"].targets[:2])
    components.trainer.select_engine(network, loss, components.optimizer)
    return Experiment(splits, data, network, loss, components.optimizer, components.schedule, components.trainer)


def build(cfg: DictConfig, rng: np.random.Generator) -> Experiment:
    """:func:`configure` then :func:`prepare`."""
    return prepare(configure(cfg), rng)


def preset_files() -> dict[str, Path]:
    """The YAML file of each config group's chosen preset, by group; none outside a Hydra job."""
    return chosen_presets(HydraConfig.get().runtime) if HydraConfig.initialized() else {}


def check_param_lengths(params: dict[str, Any]) -> None:
    """Refuse a value MLflow would cut to :data:`MAX_PARAM_LENGTH` characters: the record would not be the run's."""
    for key, value in params.items():
        if len(str(value)) > MAX_PARAM_LENGTH:
            raise ConfigError(
                f"{key}: an MLflow param holds at most {MAX_PARAM_LENGTH} characters, this value has "
                f"{len(str(value))}; the run's record would be cut short"
            )


#: The config groups whose numbers meet the network's arrays, and so become numbers of the run's dtype: NumPy
#: casts a Python float to a float32 array's dtype (``step += epsilon``). A dataset's numbers make its data, whose
#: cast the dataset check looks at.
DTYPE_GROUPS = ("model", "loss", "optimizer", "schedule")


def check_in_dtype(cfg: DictConfig, dtype: type[np.floating]) -> None:
    """Refuse a number of :data:`DTYPE_GROUPS` that ``dtype`` turns into 0 or infinity: ``optimizer.epsilon=1e-50``
    would be 0 in float32, and the record would say 1e-50."""
    name = np.dtype(dtype).name
    for group in DTYPE_GROUPS:
        for key, value in flatten(OmegaConf.to_container(cfg[group], resolve=True), f"{group}.").items():
            values = value if isinstance(value, list) else [value]
            for number in values:
                if not isinstance(number, float) or not math.isfinite(number) or number == 0:
                    continue
                with np.errstate(over="ignore"):
                    cast = dtype(number)
                if cast == 0:
                    raise ConfigError(
                        f"{key}={number} is 0 in trainer.dtype={name}, whose smallest positive number is "
                        f"{np.finfo(dtype).smallest_subnormal:.3g}; use a larger value, or trainer.dtype=float64"
                    )
                if not np.isfinite(cast):
                    raise ConfigError(
                        f"{key}={number} is infinite in trainer.dtype={name}, whose largest number is "
                        f"{np.finfo(dtype).max:.3g}; use a smaller value, or trainer.dtype=float64"
                    )


def check_plugin_outputs(network: Sequential, loss: Loss, x: np.ndarray, targets: np.ndarray) -> None:
    """Pass a few rows through ``network`` and ``loss`` and back, and refuse an activation or a loss whose result is
    not an array shaped and typed like what it was given, which the next layer would meet as a bare NumPy error
    naming no plugin (and a wider dtype would widen the run's arrays), or NaN for finite numbers, which training
    would blame on the learning rate; and a negative loss, which nnexp's records of a run take as impossible."""
    for layer in network.layers:
        out = layer.forward(x)
        if isinstance(layer, Activation):
            check_like(ACTIVATIONS.label(type(layer)), "an output", out, x)
        x = out
    value, grad = loss.value_and_gradient(targets, x)
    label = LOSSES.label(type(loss))
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, float | np.floating):
        raise PluginError(f"{label} returned a loss of {type(value).__name__} {np.shape(value)}; a loss is one number")
    check_numbers(label, "a loss", np.asarray(value), x)
    if value < 0:
        raise PluginError(f"{label} returned {value:.4g} for {len(x)} rows of the training set; a loss must be >= 0")
    check_like(label, "a gradient", grad, x)
    for layer in reversed(network.layers[1:]):
        out = layer.backward(grad)
        if isinstance(layer, Activation):
            check_like(ACTIVATIONS.label(type(layer)), "a gradient", out, grad)
        grad = out


def check_like(label: str, what: str, result: object, given: np.ndarray) -> None:
    """Refuse ``result``, a plugin's ``what`` for the array ``given``, unless it is an array of its shape and dtype,
    free of NaN where ``given`` is."""
    if not isinstance(result, np.ndarray) or result.shape != given.shape or result.dtype != given.dtype:
        found = f"{np.shape(result)} {result.dtype}" if isinstance(result, np.ndarray) else type(result).__name__
        raise PluginError(
            f"{label} returned {what} of {found} for {given.shape} {given.dtype}; it must be an array of the same "
            "shape and dtype"
        )
    check_numbers(label, what, result, given)


def check_numbers(label: str, what: str, result: np.ndarray, given: np.ndarray) -> None:
    """Refuse ``result``, a plugin's ``what`` for the array ``given``, if it holds NaN where ``given`` holds none."""
    if np.isnan(result).any() and np.isfinite(given).all():
        raise PluginError(f"{label} returned {what} holding NaN for finite numbers; it must return numbers for them")


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted MLflow params; ``tags`` go to the run's tags instead, and where the run is
    recorded (``tracking.*``: its store, experiment, name and parent) and ``resume`` are the run's own record, not
    settings to compare runs by."""
    return config_params(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def config_params(config: dict[str, Any]) -> dict[str, Any]:
    """The params :func:`run_params` logs for a resolved ``config`` of plain containers (a checkpoint's, say)."""
    settings = {key: value for key, value in config.items() if key not in ("tags", "tracking", "resume")}
    return flatten(settings)
