"""``python -m nnexp resume=<run id or checkpoint folder>``: continue a stopped run from its last checkpoint.

The command line is rewritten into the run's own: its overrides as they were, its output folder, and
``resume=<checkpoint folder>``, so Hydra composes the same config and the job continues the same MLflow run.

The manifest is data, never a command: only overrides of nnexp's own config keys become Hydra's command line, the
output folder must be the run's (as its MLflow run records it, or the folder holding the checkpoint), and the run
must be in the store; anything else is one line naming the manifest and the field, with nothing run or written.
"""

from __future__ import annotations

import re
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from nnexp.atomic import remove_run_partials
from nnexp.errors import ConfigError, DataError
from nnexp.job import checkpoint
from nnexp.schema import Fields
from nnexp.tracking import liveness

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

ALLOWED = ("resume=", "tracking.uri=")
#: A config group option as Hydra names it: no path, so no file outside the project's conf/ folder.
OPTION = re.compile(r"[\w-]+(\.[\w-]+)*")
#: Characters a path may not hold to be passed as ``hydra.run.dir``: they would be read as escapes or interpolations.
UNQUOTABLE = ("'", "\\", "$")


def hydra_arguments(arguments: list[str], project_dir: Path) -> list[str]:
    """The Hydra command line that continues the run ``resume=`` names; ``arguments`` without it are returned as
    they are."""
    found = [item for item in arguments if item.startswith("resume=")]
    if not found:
        return arguments
    others = [item for item in arguments if not item.startswith(ALLOWED)]
    if others:
        raise ConfigError(
            f"resume continues a run with its own config; remove {' '.join(others)} (only tracking.uri= may be given)"
        )
    target = found[-1].split("=", 1)[1]
    if not target:
        raise ConfigError("resume= needs a run id or a checkpoint folder")
    uri = next((item.split("=", 1)[1] for item in arguments if item.startswith("tracking.uri=")), None)
    folder = Path(target)
    by_run_id = not folder.exists()
    if by_run_id:
        folder = checkpoint_of_run(target, uri, project_dir)
    elif folder.is_file():
        folder = folder.parent
    loaded = checkpoint.load(folder)
    manifest, fields = loaded.manifest, Fields(loaded.path)
    if by_run_id and manifest["run_id"] != target:
        fields.fail("run_id", f"{target}, the run resume= names", manifest["run_id"])
    overrides = check_overrides(fields, manifest["overrides"], project_dir)
    output_dir = run_folder(loaded, project_dir)
    check_writable(output_dir)
    return [*overrides, f"resume={folder.resolve()}", f"hydra.run.dir='{output_dir}'"]


def config_roots(project_dir: Path) -> tuple[set[str], set[str]]:
    """The top-level keys of nnexp's config and its config groups (a project's conf/ folders too), Hydra's not."""
    from nnexp.config import RunConfig, config_fields

    groups = {
        name for entry in RunConfig().defaults if isinstance(entry, dict) for name in entry if name != "hydra"
    }
    conf = project_dir / "conf"
    if conf.is_dir():
        groups |= {path.name for path in conf.iterdir() if path.is_dir() and path.name != "hydra"}
    keys = {name for name in config_fields(RunConfig) if name != "resume"}
    return keys | groups, groups


def check_overrides(fields: Fields, overrides: list[str], project_dir: Path) -> list[str]:
    """``overrides`` if each only sets a key or chooses an option of nnexp's own config, else a DataError."""
    from nnexp.config import group_options

    allowed, groups = config_roots(project_dir)
    conf = project_dir / "conf"
    options = {group: group_options(group, conf if conf.is_dir() else None) for group in groups}
    for index, item in enumerate(overrides):
        check_override(fields, f"overrides[{index}]", item, allowed, options)
    return overrides


def check_override(fields: Fields, field: str, item: str, allowed: set[str], groups: dict[str, list[str]]) -> None:
    """Raise a DataError naming ``field`` unless the override ``item`` sets a key in ``allowed`` or chooses one of the
    options of a config group in ``groups``: nothing of Hydra's, no flag, sweep, interpolation, path or removal of
    a part of the config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if item.startswith("-"):
        fields.fail(field, "an override of nnexp's config, not a command-line flag", item)
    if "${" in item:
        fields.fail(field, "a plain value, without an interpolation", item)
    try:
        override = OverridesParser.create().parse_override(item)
    except HydraException:
        fields.fail(field, "a Hydra override key=value", item)
    root = re.split(r"[./]", override.key_or_group, maxsplit=1)[0]
    if root not in allowed or override.package is not None:
        fields.fail(field, f"an override of nnexp's own config ({', '.join(sorted(allowed))})", item)
    if override.is_sweep_override():
        fields.fail(field, "one value, not a sweep", item)
    if override.is_delete() and override.key_or_group in allowed:
        fields.fail(field, "an override that sets a value, not one that removes a part of every run's config", item)
    if override.key_or_group in groups and override.value() is not None:
        value, options = override.value(), groups[override.key_or_group]
        if not (isinstance(value, str) and OPTION.fullmatch(value)):
            fields.fail(field, "a config group option by its name", item)
        if value not in options:
            fields.fail(field, f"an option of {override.key_or_group} ({', '.join(options) or 'none'})", item)


def checkpoint_run(loaded: checkpoint.Checkpoint, project_dir: Path) -> tuple[MlflowClient, Run, str]:
    """A client of the store the checkpoint's config names (relative to ``project_dir``), the checkpoint's run in
    it, and the store's URI; raises a one-line error when either is missing."""
    from nnexp.tracking.store import existing_store, find_run, resolve_uri

    run_id = loaded.manifest["run_id"]
    tracking = yaml.safe_load(loaded.manifest["config"]).get("tracking")
    configured = tracking.get("uri") if isinstance(tracking, dict) else None
    if configured is not None:
        Fields(loaded.path).string(configured, "config's tracking.uri")
    store = resolve_uri(configured, project_dir)
    client = existing_store(store, f"{loaded.path} names run {run_id}, which must be in it")
    return client, find_run(client, run_id, f"{loaded.path}: run_id {run_id} is no run in {store}"), store


def run_folder(loaded: checkpoint.Checkpoint, project_dir: Path) -> Path:
    """The manifest's ``output_dir``, once the run is found in its store and the folder is the run's: the one its
    MLflow run records, else the one that holds the checkpoint's folder."""
    manifest, fields = loaded.manifest, Fields(loaded.path)
    run_id, output_dir = manifest["run_id"], Path(manifest["output_dir"])
    client, run, store = checkpoint_run(loaded, project_dir)
    check_recorded_config(loaded, run, client.get_experiment(run.info.experiment_id).name, store)
    recorded = run.data.tags.get("output_dir")
    if moved(loaded.path.parent, Path(recorded) if recorded is not None else output_dir):
        # The user moved the run's folder: the run goes on where its checkpoint and log now are, not split across
        # a recreated old folder; its output_dir tag and next manifest then name the new one.
        output_dir = loaded.path.parent.parent.resolve()
    elif recorded is not None and Path(recorded).resolve() != output_dir.resolve():
        fields.fail("output_dir", f"{recorded}, the folder of run {run_id}", str(output_dir))
    if recorded is None and output_dir.resolve() != loaded.path.parent.parent.resolve():
        fields.fail("output_dir", f"{loaded.path.parent.parent}, the folder holding the checkpoint", str(output_dir))
    if any(character in str(output_dir) for character in UNQUOTABLE):
        fields.fail("output_dir", f"a folder whose path holds none of {' '.join(UNQUOTABLE)}", str(output_dir))
    return output_dir


def check_writable(output_dir: Path) -> None:
    """Raise ConfigError unless a file can be made in the run's folder ``output_dir`` (if it exists), where the
    resumed run writes its lock, log, checkpoints and model; tried, as permissions alone do not tell (root, a
    read-only mount)."""
    if not output_dir.is_dir():
        return
    try:
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as exc:
        raise ConfigError(
            f"run folder {output_dir} cannot be written ({exc.strerror}); resume writes the run's checkpoints, log "
            "and model there: make it writable, then resume again"
        ) from None


def check_recorded_config(loaded: checkpoint.Checkpoint, run: Run, experiment: str, store: str) -> None:
    """The manifest's config must be the one its run in ``store`` records: its params, its ``experiment``, its parent
    and its tags. They are the run's record, and a manifest edited to train on with other settings, or to be
    recorded elsewhere, would leave them saying what was not done."""
    config, fields = yaml.safe_load(loaded.manifest["config"]), Fields(loaded.path)
    tracking = fields.mapping(config.get("tracking") or {}, "config's tracking")
    tags = fields.mapping(config.get("tags") or {}, "config's tags")
    differ = param_differences(config, run.data.params)
    if tracking.get("experiment", experiment) != experiment:
        differ.append("tracking.experiment")
    if tracking.get("parent_run_id") != run.data.tags.get("mlflow.parentRunId"):
        differ.append("tracking.parent_run_id")
    differ += [f"tags.{key}" for key, value in tags.items() if run.data.tags.get(str(key)) != str(value)]
    if differ:
        raise DataError(
            f"{loaded.path}: config sets {', '.join(sorted(differ))} otherwise than run {loaded.run_id} records in "
            f"{store}; a run is resumed only with the settings it logged"
        )


def param_differences(config: dict, params: Mapping[str, str]) -> list[str]:
    """The param keys that ``config`` sets otherwise than the run's logged ``params``; none for a run that never
    logged its params, which records nothing to hold the manifest to."""
    from nnexp.job.build import config_params
    from nnexp.tracking.tracked_run import MAX_PARAM_LENGTH

    if not params:
        return []
    logged = {key: str(value)[:MAX_PARAM_LENGTH] for key, value in config_params(config).items()}
    return [key for key in logged.keys() | params.keys() if logged.get(key) != params.get(key)]


def moved(checkpoints: Path, recorded: Path) -> bool:
    """True if ``checkpoints`` is a run folder's own ``checkpoints/`` and the run's ``recorded`` folder is gone: the
    folder was moved or renamed."""
    holder = checkpoints.parent
    return checkpoints.name == "checkpoints" and not recorded.exists() and holder.resolve() != recorded.resolve()


def checkpoint_of_run(run_id: str, uri: str | None, project_dir: Path) -> Path:
    """The checkpoint folder of MLflow run ``run_id``: the one in its output folder, else its logged copy.

    A run RUNNING in a process that is gone is marked KILLED first; one that is FINISHED, or RUNNING in a live
    process, is refused.
    """
    from nnexp.tracking.store import existing_store, find_run, resolve_uri, resumable

    store = resolve_uri(uri, project_dir)
    client = existing_store(store, f"resume={run_id} is no checkpoint folder either")
    run = resumable(
        client, find_run(client, run_id, f"resume={run_id}: no such checkpoint folder, and no such run in {store}")
    )
    recorded = Path(run.data.tags.get("output_dir", ""))
    local = recorded / "checkpoints"
    manifest = local / checkpoint.MANIFEST
    if manifest.is_file():
        return local
    if manifest.exists():  # the resumed run could write no checkpoint there, and would end FAILED after training
        raise ConfigError(f"{manifest}: not a file, where the run writes its checkpoint manifest; remove it first")
    paths = {entry.path for entry in client.list_artifacts(run_id)}
    if run.data.tags.get(liveness.HOST) == socket.gethostname() and not recorded.exists():
        # Moved on this machine: MLflow's copy would recreate the old folder and split the run across two.
        return moved_checkpoint(run_id, recorded, project_dir, "checkpoint" in paths)
    if "checkpoint" not in paths:
        if run.data.tags.get("output_dir"):  # what its process was writing when killed: the run gets no further
            remove_run_partials(recorded)
        raise ConfigError(f"resume={run_id}: the run has no checkpoint, neither in {local} nor in MLflow")
    destination = project_dir / "outputs" / "resumed" / run_id
    destination.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, "checkpoint", str(destination)))


def moved_checkpoint(run_id: str, recorded: Path, project_dir: Path, logged: bool) -> Path:
    """The ``checkpoints`` folder of run ``run_id`` under the project's ``outputs/``, where the user moved the run's
    folder from ``recorded``; else a ConfigError saying where nnexp looked and how to name the folder (or, when
    the run ``logged`` a checkpoint to MLflow and the folder was removed, how to resume from that copy)."""
    outputs = project_dir.resolve() / "outputs"
    found = [
        manifest.parent
        for manifest in sorted(outputs.rglob(f"checkpoints/{checkpoint.MANIFEST}"))
        if manifest_run_id(manifest) == run_id
    ]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(
            f"resume={run_id}: run {run_id}'s folder {recorded} is gone, and {len(found)} folders hold its checkpoint "
            f"({', '.join(map(str, found))}); choose one with resume=<its checkpoints folder>"
        )
    copy = (
        f"; if you removed it, resume from MLflow's copy: mlflow artifacts download -r {run_id} -a checkpoint "
        f"-d DIR, then resume=DIR/checkpoint"
        if logged
        else ""
    )
    raise ConfigError(
        f"resume={run_id}: run {run_id}'s folder {recorded} is gone, and no checkpoint of it is under {outputs}; "
        f"if you moved the folder, resume with resume=<its new path>/checkpoints{copy}"
    )


def manifest_run_id(manifest: Path) -> object:
    """The ``run_id`` a checkpoint manifest names; None for a file that is no readable manifest (another's, or no
    regular file, which would block its reader)."""
    from nnexp.schema import parse_json, read_text

    try:
        contents = parse_json(read_text(manifest))
    except (OSError, ValueError, DataError):
        return None
    return contents.get("run_id") if isinstance(contents, dict) else None
