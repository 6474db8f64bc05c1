"""What a run records beside its metrics: its name, params, tags, model files and plots."""

from __future__ import annotations

import errno
import functools
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nnexp import __version__
from nnexp.atomic import replacing
from nnexp.config import (
    GROUPS,
    MAX_RUN_NAME,
    given_overrides,
    setting_overrides,
)
from nnexp.core.activations import ACTIVATIONS
from nnexp.core.initializers import INITIALIZERS
from nnexp.core.training import predict
from nnexp.datasets.base import Dataset
from nnexp.errors import NnexpError
from nnexp.folders import MODEL_SAVED, describe_os_error, note_model_saved, recorded
from nnexp.job.build import Experiment, run_params
from nnexp.job.sweep import PARENT_OVERRIDE, short_keys
from nnexp.tracking.store import check_parent, git_state, resolve_uri
from nnexp.tracking.tracked_run import TrackedRun, Tracker

if TYPE_CHECKING:
    from nnexp.core.network import Sequential
    from nnexp.job.plot_process import Plotter
    from nnexp.job.plots import RunPlots
    from nnexp.serving import NetworkSpec

log = logging.getLogger(__name__)

#: The MLflow model folder inside a run folder.
MODEL_FOLDER = "model"


def run_config_yaml(cfg: DictConfig) -> str:
    """The resolved config, without ``resume``: what a resumed run must compose to again."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("resume", None)
    return OmegaConf.to_yaml(container)


def job_choices() -> dict[str, Any]:
    """Hydra's config group choices (``model: deep_sigmoid``), without Hydra's own groups."""
    choices = HydraConfig.get().runtime.choices
    return {key: value for key, value in choices.items() if not key.startswith("hydra/")}


def job_overrides() -> list[str]:
    """The job's command-line overrides, without the parent run id a sweep adds."""
    overrides = given_overrides(HydraConfig.get().overrides.task)
    return [item for item in overrides if not item.startswith(f"{PARENT_OVERRIDE}=")]


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


@dataclass(frozen=True)
class KeptModel:
    """What :func:`keep_model` wrote: the files in the run folder to log, and the MLflow model folder to log (None
    when there is none), which is a temporary one, removed once the run has ended, when the run folder had no room
    for it."""

    files: tuple[Path, ...]
    model_dir: Path | None
    temporary: bool = False

    def discard(self) -> None:
        """Remove a temporary MLflow model folder."""
        if self.temporary and self.model_dir is not None:
            shutil.rmtree(self.model_dir.parent, ignore_errors=True)


def keep_model(
    output_dir: Path, cfg: DictConfig, experiment: Experiment, dataset: Dataset, matrix: np.ndarray
) -> KeptModel:
    """Write the weights, then the resolved config, the confusion matrix and the MLflow model folder (none for a
    network with a layer nnexp cannot describe, with a warning).

    Only weights that cannot be written fail the run. Anything else the run folder has no room for is one warning
    naming it; the MLflow model is then saved in a temporary folder, for the store alone.
    """
    from nnexp.job.plots import write_confusion_csv
    from nnexp.network_files import describe

    splits = experiment.splits
    try:
        experiment.network.save(output_dir / "model.npz")
    except OSError as exc:
        raise NnexpError(f"the trained model was not kept: {describe_os_error(exc, 'write', output_dir)}") from None
    writers: dict[str, Callable[[Path], object]] = {
        "config.yaml": functools.partial(write_text, OmegaConf.to_yaml(cfg, resolve=True)),
        "confusion_matrix.csv": functools.partial(write_confusion_csv, matrix, splits.names()),
    }
    save = None
    try:
        spec = describe(experiment.network, experiment.loss, splits.names(), dataset)
    except NnexpError as exc:
        log.warning("the run logs no MLflow model: %s", exc)
    else:
        save = writers[MODEL_FOLDER] = functools.partial(save_model_folder, experiment.network, spec, splits.x_test)
    written, missing, reason = [output_dir / "model.npz"], [], ""
    for name, write in writers.items():
        try:
            write(output_dir / name)
        except OSError as exc:
            missing.append(name)
            reason = reason or describe_os_error(exc, "write", output_dir)
        else:
            written.append(output_dir / name)
    files = tuple(path for path in written if path.name != MODEL_FOLDER)
    model_dir = output_dir / MODEL_FOLDER if save is not None else None
    if not missing:
        return KeptModel(files, model_dir)
    temporary = save is not None and MODEL_FOLDER in missing
    if temporary:
        model_dir = temporary_model(save)
    logged = ", and the MLflow model is logged from a temporary copy" if temporary and model_dir else ""
    shown = ", ".join(f"{name}/" if name == MODEL_FOLDER else name for name in missing)
    log.warning("warning: not written: %s: %s; model.npz is kept%s", shown, reason, logged)
    return KeptModel(files, model_dir, temporary)


def write_text(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path, "w") as file:
        file.write(text)


def save_model_folder(network: Sequential, spec: NetworkSpec, example: np.ndarray, path: Path) -> None:
    """Save the MLflow model into ``path``, replacing an earlier attempt's of the same run (a resumed run), which its
    lock records, and nothing else; no half of one stays, as it would load as a broken model."""
    from nnexp.serving import save_model

    if path.exists() or path.is_symlink():
        if not recorded(path.parent).get(MODEL_SAVED) or path.is_symlink():
            raise OSError(errno.ENOTEMPTY, "it holds files nnexp did not write, which are kept", str(path))
        shutil.rmtree(path)
    try:
        save_model(path, network, spec, example)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    note_model_saved(path.parent)


def temporary_model(save: Callable[[Path], object]) -> Path | None:
    """The MLflow model saved by ``save`` in a new temporary folder; None, with a warning, when it cannot be."""
    folder = None
    try:
        folder = Path(tempfile.mkdtemp(prefix="nnexp-model-"))
        save(folder / MODEL_FOLDER)
    except OSError as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        log.warning("warning: the MLflow model is not logged: %s", describe_os_error(exc, "write", folder))
        return None
    return folder / MODEL_FOLDER


def log_model_files(tracked: TrackedRun, files: tuple[Path, ...], output_dir: Path, hydra_subdir: str | None) -> None:
    """Send what :func:`keep_model` wrote, and Hydra's own copy of the config, to the run."""
    for path in files:
        tracked.log_artifact(path)
    if hydra_subdir:  # hydra.output_subdir=null turns Hydra's copy off
        tracked.log_artifact(output_dir / hydra_subdir, "hydra")


def run_plots(folder: Path, experiment: Experiment, history: dict[str, list[float]], matrix: np.ndarray) -> RunPlots:
    """What the run's plots show; for 2-D data the network's predictions over a grid, made here, where it is."""
    from nnexp.job.plots import RunPlots, decision_regions

    splits = experiment.splits
    regions = None
    if splits.n_features == 2:
        network = experiment.network
        x = np.concatenate([splits.x_train, splits.x_test])
        y = np.concatenate([splits.y_train, splits.y_test])

        def predict_labels(points: np.ndarray) -> np.ndarray:
            return predict(network, points.astype(network.dtype)).argmax(axis=1)

        regions = decision_regions(predict_labels, x, y, splits.names())
    history = {key: list(values) for key, values in history.items()}
    return RunPlots(folder, matrix, tuple(splits.names()), history, regions)


def start_plotter() -> Plotter | None:
    """The process that draws this process's plots; ``None``, with a warning, when it cannot be started."""
    from nnexp.job.plot_process import plotter

    try:
        return plotter()
    except OSError as exc:
        log.warning("warning: plots will not be written: cannot start their process: %s", describe_os_error(exc))
        return None


def draw_plots(plotter: Plotter | None, plots: RunPlots) -> tuple[bool, float]:
    """Have ``plotter`` draw ``plots``; whether any plot was written, and the seconds the plotting process took
    (matplotlib's import included the first time). A plot that cannot be written is a warning, not a failed run."""
    from nnexp.job.plot_process import PlotterGoneError
    from nnexp.job.plots import draw_run_plots

    seconds = 0.0
    if plotter is not None:
        try:
            seconds = plotter.draw(functools.partial(draw_run_plots, plots))
        except OSError as exc:
            log.warning("warning: plots not written: %s", describe_os_error(exc, "write", plots.folder))
        except PlotterGoneError as exc:
            log.warning("warning: plots not written: %s", exc)
    return plots.folder.is_dir() and any(plots.folder.iterdir()), seconds

