"""Config schemas: the primary config, and one ConfigStore node per registered plugin built from its signature.

One module, a little over 350 lines: every key a user can set, and the checks that name a wrong one, are in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import inspect
import logging
import string
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ValidationError

from nnexp.core.activations import ACTIVATIONS
from nnexp.core.initializers import INITIALIZERS
from nnexp.core.losses import LOSSES
from nnexp.core.optimizers import OPTIMIZERS
from nnexp.core.schedules import SCHEDULES
from nnexp.datasets.base import DATASETS
from nnexp.errors import ConfigError, ParameterError, PluginError, abbreviated, require
from nnexp.folders import RESOLVER, SWEEP_DIR
from nnexp.models.base import MODELS
from nnexp.registry import Registry, config_parameters

#: The registries that are Hydra config groups, with the option each defaults to.
GROUPS: tuple[tuple[Registry[Any], str], ...] = (
    (DATASETS, "moons"),
    (MODELS, "mlp"),
    (LOSSES, "cross_entropy"),
    (OPTIMIZERS, "adam"),
    (SCHEDULES, "constant"),
)
PRIMARY = "nnexp"


class Dtype(enum.Enum):
    float32 = "float32"
    float64 = "float64"


class Engine(enum.Enum):
    auto = "auto"
    numpy = "numpy"
    compiled = "compiled"


@dataclass
class TrainerConfig:
    epochs: int = 50
    batch_size: int | None = 32
    shuffle: bool = True
    dtype: Dtype = Dtype.float32
    #: numpy: the layers' own code; compiled: Numba kernels for the built-in MLP; auto: compiled when every
    #: component has a kernel, else numpy (saying why in one line).
    engine: Engine = Engine.auto


class Direction(enum.Enum):
    maximize = "maximize"
    minimize = "minimize"


def default_direction(metric: str) -> Direction:
    """How a metric improves when nobody says: losses go down, accuracies up."""
    return Direction.minimize if metric.endswith("loss") else Direction.maximize


#: Overrides that say where and how a run is recorded, not what it trains (its store, name and parent, Hydra's
#: settings, free-form tags, the run it resumes): they neither name a run nor tell runs apart.
RECORD_KEYS = ("tracking.", "tracking=", "hydra.", "hydra=", "hydra/", "tags.", "tags=", "resume=")


def setting_overrides(overrides: Iterable[str]) -> list[tuple[str, str]]:
    """The ``(key, value)`` of each override that says what a run trains: none of :data:`RECORD_KEYS`."""
    found = []
    for item in overrides:
        key, equals, value = item.lstrip("+~").partition("=")
        if equals and not f"{key}=".startswith(RECORD_KEYS):
            found.append((key, value))
    return found


def given_overrides(overrides: Iterable[str]) -> list[str]:
    """Hydra's list of overrides as the user typed them: plain strings, a ``${...}`` in one never resolved (read
    item by item, ``'seed=${oc.env:NOPE}' seed=1`` would fail on an override that the later one replaced)."""
    if isinstance(overrides, ListConfig):
        overrides = OmegaConf.to_container(overrides, resolve=False)  # type: ignore[assignment]
    return [str(item) for item in overrides]

#: The final metrics every run has; ``objective.metric`` names one of them.
FINAL_METRICS = tuple(f"{part}_{kind}" for part in ("train", "val", "test") for kind in ("accuracy", "loss"))
#: The per-epoch metrics ``early_stopping.monitor`` may name (the validation ones need a validation split).
MONITORED = tuple(f"{part}_{kind}" for part in ("train", "val") for kind in ("loss", "accuracy"))


@dataclass
class ObjectiveConfig:
    #: The final metric a run returns to a sweeper and sweeps rank by; ``auto`` is val_accuracy when the dataset
    #: has a validation split, else test_accuracy.
    metric: str = "auto"
    #: null: minimize a loss, maximize anything else.
    direction: Direction | None = None


@dataclass
class CheckpointConfig:
    #: Write a checkpoint at the first epoch end this many seconds after the last one, and after the last epoch.
    seconds: float = 30.0
    #: Or every this many epochs instead (and after the last); 0 writes one only when training is stopped.
    every: int | None = None


@dataclass
class EarlyStoppingConfig:
    #: Stop after this many epochs without improvement of ``monitor``; null turns early stopping off.
    patience: int | None = None
    #: A per-epoch metric of :data:`MONITORED`: train_loss, train_accuracy, val_loss or val_accuracy.
    monitor: str = "val_loss"
    #: How much ``monitor`` must improve by to count as an improvement.
    min_delta: float = 0.0
    #: null: minimize a loss, maximize anything else.
    direction: Direction | None = None
    #: Put back the best epoch's weights when training ends; the saved model is then the best one.
    restore_best_weights: bool = True


@dataclass
class TrackingConfig:
    #: MLflow tracking URI; null takes $MLFLOW_TRACKING_URI, else a SQLite store in ./outputs.
    uri: str | None = None
    experiment: str = "nnexp"
    run_name: str | None = None
    #: Record the run as a child of this MLflow run (set by ``nnexp reproduce`` and sweeps).
    parent_run_id: str | None = None


def _hydra_settings() -> dict[str, Any]:
    stamp = "${now:%Y-%m-%d}/${now:%H-%M-%S}"
    # Claimed with mkdir, so that runs started in the same second never share a folder (nnexp.folders).
    return {
        "job": {"name": "nnexp"},
        # Creates a sweep's MLflow parent run before any job starts, and summarises the sweep at its end.
        "callbacks": {
            "nnexp_sweep": {"_target_": "nnexp.job.sweep.SweepCallback"},
            "nnexp_run_folder": {"_target_": "nnexp.job.run_folder.RunFolderCallback"},
        },
        "run": {"dir": f"${{{RESOLVER}:outputs/{stamp}}}"},
        "sweep": {"dir": f"${{{RESOLVER}:outputs/multirun/{stamp},{SWEEP_DIR}}}", "subdir": "${hydra.job.num}"},
        "help": {
            "app_name": "nnexp",
            "header": "nnexp: experiments with hand-written NumPy neural networks, tracked in MLflow.\n\n"
            "Usage: python -m nnexp [group=option ...] [key=value ...]   (-m sweeps comma-separated values)\n",
            "footer": f"model.activation: {ACTIVATIONS.available()}\n"
            f"model.initializer: {INITIALIZERS.available()}\n\n"
            "Commands: nnexp data mnist [DIR] [--csv] fetches MNIST; nnexp reproduce runs the tutorial presets;\n"
            "nnexp compare [--sweep last] prints runs side by side; nnexp runs lists runs, newest first, and marks\n"
            "KILLED those whose process ended without closing them; nnexp sync FOLDER sends what a tracking store\n"
            "missed; python -m nnexp resume=RUN_ID continues a stopped run.\n"
            "Runs are recorded in MLflow; README.md shows how to compare them.",
        },
    }


#: Hydra's default job logging, but the terminal shows bare messages; the job's log file keeps Hydra's timestamps.
#: An option of its own, so that ``hydra/job_logging=disabled`` (or any other) replaces it whole.
JOB_LOGGING = {
    "defaults": ["default", "_self_"],
    "formatters": {"bare": {"format": "%(message)s"}},
    # A sweep job's "error: job N failed" belongs on stderr, with the other errors; the rest on stdout.
    "filters": {"below_error": {"()": "nnexp.config.below_error"}},
    "handlers": {
        "console": {"formatter": "bare", "filters": ["below_error"]},
        "errors": {"class": "logging.StreamHandler", "formatter": "bare", "level": "ERROR", "stream": "ext://sys.stderr"},
    },
    "root": {"handlers": ["console", "file", "errors"]},
}


def below_error() -> Callable[[logging.LogRecord], bool]:
    """A logging filter that passes what is not an error: Hydra's console handler writes to stdout."""
    return lambda record: record.levelno < logging.ERROR


@dataclass
class RunConfig:
    defaults: list[Any] = field(
        default_factory=lambda: [
            *({registry.kind: option} for registry, option in GROUPS),
            "_self_",
            # After _self_, so that an experiment preset's values beat the primary config's. Not "optional":
            # an optional entry would silently ignore a misspelt preset name.
            {"experiment": None},
            {"hparams_search": None},
            {"override hydra/job_logging": PRIMARY},
        ]
    )
    dataset: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    #: A run id or checkpoint folder to continue; ``python -m nnexp resume=...`` fills in the run's own config.
    resume: str | None = None
    seed: int = 0
    #: Free-form tags for the MLflow run; presets record e.g. the published accuracy they reproduce.
    tags: dict[str, Any] = field(default_factory=dict)
    hydra: Any = field(default_factory=_hydra_settings)


def _omegaconf_type(annotation: Any) -> Any:
    """Spell ``X | None`` and ``list[X]`` in the ``typing`` forms every OmegaConf 2.3 release understands."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = next(arg for arg in args if arg is not type(None))
        return typing.Optional[_omegaconf_type(inner)]  # noqa: UP045
    if origin is list:
        return typing.List[_omegaconf_type(args[0])]  # noqa: UP006
    return annotation


def schema_for(cls: type, name: str) -> type:
    """A dataclass whose fields mirror ``cls.__init__``: types and defaults, plus ``name`` fixed to ``name``."""
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=name))]
    for parameter, annotation, default in config_parameters(cls):
        if default is inspect.Parameter.empty:
            spec = field(default=MISSING)
        elif isinstance(default, list):
            spec = field(default_factory=lambda default=default: list(default))
        else:
            spec = field(default=default)
        fields.append((parameter, _omegaconf_type(annotation), spec))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def store_configs() -> None:
    """Store every registered plugin under its group, and the primary config, in Hydra's ConfigStore."""
    store = ConfigStore.instance()
    for registry, _ in GROUPS:
        for name, cls in registry.items():
            try:
                store.store(group=registry.kind, name=name, node=schema_for(cls, name), provider="nnexp")
            except ValidationError as exc:
                raise PluginError(unfit_default(registry, name, cls, exc)) from None
    store.store(group="hydra/job_logging", name=PRIMARY, node=JOB_LOGGING, provider="nnexp")
    store.store(name=PRIMARY, node=RunConfig, provider="nnexp")


def unfit_default(registry: Registry[Any], name: str, cls: type, exc: ValidationError) -> str:
    """One line naming the plugin's file, class and the parameter whose default OmegaConf cannot give its type."""
    source = registry.source(name).removeprefix("file ")
    parameter = str(exc.full_key).split("[", 1)[0]  # an item of a list default reports sizes[0]
    annotation, default = next((a, d) for key, a, d in config_parameters(cls) if key == parameter)
    shown = inspect.formatannotation(annotation)
    fix = f"write {parameter}: {shown} | None = None" if default is None else "change the default or the annotation"
    unfit = f"{cls.__qualname__}({parameter}: {shown} = {default!r})"
    return f"{source}: {unfit}: the default is not of the annotated type; {fix}"
def group_options(group: str, config_dir: Path | None) -> list[str]:
    """The options of config group ``group``: its registered plugins and the YAML presets in ``config_dir/group``."""
    registered = next((registry.names() for registry, _ in GROUPS if registry.kind == group), [])
    presets = [path.stem for path in (config_dir / group).glob("*.yaml")] if config_dir is not None else []
    return sorted({*registered, *presets})


def config_fields(schema: Any) -> list[str]:
    """The user-facing field names of a config dataclass (not Hydra's ``defaults`` and ``hydra``); [] otherwise."""
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return []
    return [f.name for f in dataclasses.fields(schema) if f.name not in ("defaults", "hydra")]


def unknown_key_message(key: str, schema: Any) -> str:
    """``key is not a known key; valid keys here: ...``, listing the fields of ``schema``; a field of the schema
    is missing only because an override removed it (``~trainer``)."""
    if key.rpartition(".")[2] in config_fields(schema):
        return f"{key} is part of every run's config and cannot be removed; set its fields instead"
    if key.startswith("tags."):  # free-form: a tag is added, as Hydra adds any key that is not in the config
        return f"{key} is not a known key; to add the tag, write +{key}=..."
    valid = ", ".join(name for name in config_fields(schema) if name != "name")
    return f"{key} is not a known key; " + (f"valid keys here: {valid}" if valid else "check its spelling")


#: MLflow's limits on a tag (``mlflow.utils.validation``): a longer key is refused, a longer value cut short.
MAX_TAG_KEY, MAX_TAG_VALUE = 250, 8000
#: The longest run and experiment names MLflow's database stores hold (its ``runs.name`` and ``experiments.name``
#: columns): SQLite keeps a longer one, a PostgreSQL or MySQL server refuses it once the run is under way.
MAX_RUN_NAME, MAX_EXPERIMENT_NAME = 250, 256


def check_tag_key(key: str, option: str) -> None:
    """Raise a ConfigError naming ``option`` for a tag key longer than MLflow accepts."""
    if len(key) > MAX_TAG_KEY:
        raise ConfigError(
            f"{abbreviated(option)}: an MLflow tag key holds at most {MAX_TAG_KEY} characters, found {len(key)}"
        )


#: The tags nnexp records itself, which a user's tag must not overwrite: ``nnexp runs`` and ``resume=`` read
#: ``output_dir``, comparisons read the group choices, and so on.
OWN_TAGS = frozenset(
    {
        *(registry.kind for registry, _ in GROUPS),
        "experiment",
        "objective",
        "objective_direction",
        "dataset_digest",
        "engine",
        "job_num",
        "blas_threads",
        "git_commit",
        "git_dirty",
        "nnexp_version",
        "output_dir",
        "overrides",
        "failure_reason",
        "resumed",
        "nnexp_command",
        "sweep_overrides",
        "sweep_dir",
        "sweeper",
        "launcher",
        "seeds",
    }
)
OWN_TAG_PREFIXES = ("source.", "nnexp.", "mlflow.")


def check_tags(tags: dict[str, Any]) -> None:
    """Raise a ConfigError naming ``tags.<key>`` for a tag that MLflow would refuse or cut short, that nnexp
    records itself, or that holds control characters."""
    for key, value in tags.items():
        check_tag_key(str(key), f"tags.{key}")
        if str(key) in OWN_TAGS or str(key).startswith(OWN_TAG_PREFIXES) or str(key) in ("source", "nnexp", "mlflow"):
            raise ConfigError(f"tags.{key}: nnexp records the tag {key} itself; give yours another name")
        if value is None or not isinstance(value, (str, int, float)):  # a bool is an int
            raise ConfigError(f"tags.{key} must be a string, number or bool, got {value!r}")
        check_printable(f"tags.{key}", value)
        if len(str(value)) > MAX_TAG_VALUE:
            raise ConfigError(
                f"{abbreviated(f'tags.{key}')}: an MLflow tag value holds at most {MAX_TAG_VALUE} characters, "
                f"found {len(str(value))}"
            )


def check_run_names(tracking: DictConfig) -> None:
    """Refuse control characters in ``tracking.run_name`` and ``tracking.experiment``, which tables and progress
    lines print, and names longer than MLflow's stores hold."""
    for key, limit, what in (("run_name", MAX_RUN_NAME, "run"), ("experiment", MAX_EXPERIMENT_NAME, "experiment")):
        if tracking[key] is not None:
            check_printable(f"tracking.{key}", tracking[key])
            if len(str(tracking[key])) > limit:
                raise ConfigError(
                    f"tracking.{key}: an MLflow {what} name holds at most {limit} characters, "
                    f"found {len(str(tracking[key]))}"
                )


def check_printable(option: str, value: object) -> None:
    """Refuse a string with control characters: printed on a terminal, an escape sequence would recolour or rewrite
    it, and a carriage return or newline forge lines."""
    if isinstance(value, str):
        require(value.isprintable(), option, "must be text without control characters (such as an escape)", value)


#: How a message names what a field of each scalar type expects.
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe_type(annotation: Any) -> str:
    """``Optional[int]`` -> "an integer or null", ``List[int]`` -> "a list of integers, like [64, 32]"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = next(arg for arg in args if arg is not type(None))
        return f"{describe_type(inner)} or null"
    if origin is list:
        return f"a list of {describe_type(args[0]).split(' ', 1)[1]}s, like [64, 32]"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(member.name for member in annotation)
    return _TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def check_known_keys(cfg: DictConfig, path: str = "") -> None:
    """Reject keys a schema does not declare: Hydra's ``+key=value`` adds them even to typed nodes."""
    schema = OmegaConf.get_type(cfg)
    known = config_fields(schema)
    for key in cfg:
        if known and key not in known:
            raise ConfigError(unknown_key_message(f"{path}{key}", schema))
    for key in cfg:
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            check_known_keys(node, f"{path}{key}.")


def check_list_items(cfg: DictConfig, path: str = "") -> None:
    """Refuse a list or mapping inside a typed list (``list[int]``): OmegaConf checks a list's items when a value is
    assigned, but not when a config is merged onto it, and the plugin would meet ``[[4, 4]]`` as a TypeError."""
    for key in cfg:
        node = cfg._get_node(key)
        if node._is_missing() or node._is_none():
            continue
        if isinstance(node, DictConfig):
            check_list_items(node, f"{path}{key}.")
        elif isinstance(node, ListConfig) and scalar_type(node._metadata.element_type):
            items = OmegaConf.to_container(node, resolve=True)
            if any(isinstance(item, list | dict) for item in items):
                raise ParameterError(f"{path}{key}", f"expects {describe_type(node._metadata.ref_type)}", items)


def list_type(annotation: Any) -> bool:
    """Whether ``annotation`` is a list type, ``list[int]`` or ``list[int] | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(list_type(arg) for arg in typing.get_args(annotation))
    return typing.get_origin(annotation) in (list, typing.List)  # noqa: UP006


def scalar_type(annotation: Any) -> bool:
    """Whether ``annotation`` is a type of one value: int, float, bool, str or an Enum."""
    return annotation in _TYPE_WORDS or (isinstance(annotation, type) and issubclass(annotation, enum.Enum))


def help_text(config_dir: Path | None, overrides: list[str], resolve: bool) -> str | None:
    """What ``--help`` prints, as Hydra's own help does, but composed once and listing only the app's groups.

    Hydra's help also lists its own groups (launchers, sweepers, ...), which its template never prints, copying the
    whole ConfigStore for each: over a second. ``None`` when the template asks for more than the app's groups and
    config (``$FLAGS_HELP``, ``$HYDRA_CONFIG_GROUPS``): only Hydra's help knows those.
    """
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    with composing(config_dir):
        cfg = compose(config_name=PRIMARY, overrides=overrides, return_hydra_config=True)
        groups = app_groups(GlobalHydra.instance().config_loader().get_sources())
        template = string.Template(cfg.hydra.help.template)
        HydraConfig.instance().set_config(cfg)  # so that --resolve resolves ${hydra:...}, as in Hydra's help
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        listing = "".join(f"{group}: {', '.join(groups[group])}\n" for group in sorted(groups))
        try:
            return template.substitute(APP_CONFIG_GROUPS=listing, CONFIG=OmegaConf.to_yaml(cfg, resolve=resolve))
        except KeyError:
            return None


def composing(config_dir: Path | None) -> contextlib.AbstractContextManager[Any]:
    """Hydra initialised, as ``nnexp`` is, on the presets of ``config_dir`` (``None``: the stored configs only), so
    that ``hydra.compose`` composes configs in this process."""
    from hydra import initialize, initialize_config_dir

    if config_dir is None:
        return initialize(version_base="1.3", config_path=None, job_name=PRIMARY)
    return initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name=PRIMARY)


def app_groups(sources: list[Any], parent: str = "") -> dict[str, list[str]]:
    """The sorted options of every config group under ``parent`` (``""``: all), nested ones too, but Hydra's own.

    ``sources`` are the config loader's sources: asked directly, as Hydra's repository asks them, since
    ``ConfigLoader.get_group_options`` copies the whole ConfigStore on every call.
    """
    from hydra.core.object_type import ObjectType

    def options(group: str, kind: ObjectType) -> list[str]:
        return sorted({name for source in sources if source.is_group(group) for name in source.list(group, kind)})

    found = {}
    for name in options(parent, ObjectType.GROUP):
        group = f"{parent}/{name}" if parent else name
        if group == "hydra":
            continue
        configs = options(group, ObjectType.CONFIG)
        if configs:
            found[group] = configs
        found.update(app_groups(sources, group))
    return found
