"""Run folders left by processes killed at setup, or while their MLflow run was being opened, which the store shows
they never recorded: ``nnexp runs`` and the next run remove them (see :func:`nnexp.folders.discard_orphan_folders`)."""

from __future__ import annotations

import functools
from pathlib import Path

from nnexp.folders import Orphan, discard_orphan_folders
from nnexp.tracking.store import existing_store, resolve_uri, sqlite_path, sqlite_runs

#: The tags naming the folder a run or a sweep writes into.
FOLDER_TAGS = ("output_dir", "sweep_dir")
#: What a folder's path may not hold to be quoted in MLflow's search filter as it is.
UNQUOTABLE = ("'", '"', "\\")


def discard_leftover_folders(project_dir: Path, uri: str | None) -> list[Orphan]:
    """Remove the folders under ``project_dir/outputs`` left by killed processes; one whose run was being opened
    only when the store ``uri`` names (the project's by default) is that run's and holds no run of the folder."""
    return discard_orphan_folders(project_dir, functools.partial(unrecorded, resolve_uri(uri, project_dir)))


def unrecorded(listed: str, store: str, folder: Path) -> bool:
    """Whether ``store`` is ``listed`` and surely holds no run, in any experiment, deleted or not, whose
    ``output_dir`` or ``sweep_dir`` tag is ``folder`` (a SQLite store that is not there holds none); False on any
    doubt (another store, one that cannot be read)."""
    if store != listed:
        return False
    database = sqlite_path(store)
    # Read without MLflow, which would go on migrating a store left half-built by the same kill.
    if database is not None and (not database.exists() or sqlite_runs(database) == 0):
        return True
    if any(character in str(folder) for character in UNQUOTABLE):
        return False
    from mlflow.entities import ViewType

    try:
        client = existing_store(listed, "")
        experiments = [item.experiment_id for item in client.search_experiments(view_type=ViewType.ALL)]
        return not experiments or not any(
            client.search_runs(experiments, f"tags.{tag} = '{folder}'", run_view_type=ViewType.ALL, max_results=1)
            for tag in FOLDER_TAGS
        )
    except Exception:  # a store that cannot answer keeps the folder; listing its runs says why
        return False
