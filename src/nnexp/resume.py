"""``python -m nnexp resume=<run id or checkpoint folder>``: continue a stopped run from its last checkpoint.

The command line is rewritten into the run's own: its overrides as they were, its output folder, and
``resume=<checkpoint folder>``, so Hydra composes the same config and the job continues the same MLflow run.
"""

from __future__ import annotations

from pathlib import Path

from nnexp import checkpoint
from nnexp.errors import ConfigError

ALLOWED = ("resume=", "tracking.uri=")


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
    uri = next((item.split("=", 1)[1] for item in arguments if item.startswith("tracking.uri=")), None)
    folder = Path(target)
    if not folder.exists():
        folder = checkpoint_of_run(target, uri, project_dir)
    elif folder.is_file():
        folder = folder.parent
    manifest = checkpoint.load(folder).manifest
    return [*manifest["overrides"], f"resume={folder.resolve()}", f"hydra.run.dir={manifest['output_dir']}"]


def checkpoint_of_run(run_id: str, uri: str | None, project_dir: Path) -> Path:
    """The checkpoint folder of MLflow run ``run_id``: the one in its output folder, else its logged copy.

    A run RUNNING in a process that is gone is marked KILLED first; one that is FINISHED, or RUNNING in a live
    process, is refused.
    """
    from nnexp.tracking import existing_store, find_run, resolve_uri, resumable

    store = resolve_uri(uri, project_dir)
    client = existing_store(store, f"resume={run_id} is no checkpoint folder either")
    run = resumable(
        client, find_run(client, run_id, f"resume={run_id}: no such checkpoint folder, and no such run in {store}")
    )
    local = Path(run.data.tags.get("output_dir", "")) / "checkpoints"
    if (local / checkpoint.MANIFEST).is_file():
        return local
    paths = {entry.path for entry in client.list_artifacts(run_id)}
    if "checkpoint" not in paths:
        raise ConfigError(f"resume={run_id}: the run has no checkpoint, neither in {local} nor in MLflow")
    destination = project_dir / "outputs" / "resumed" / run_id
    destination.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, "checkpoint", str(destination)))
