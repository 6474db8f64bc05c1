"""The outbox: what a tracking store missed while it was away, kept in a run's folder, checked as data and sent
by ``nnexp sync`` once the store answers again.

A little over 350 lines, kept together: the checks against the run's own record (its steps, its history's gaps, its
model) and the sending they guard are one promise, that nothing is sent unless all of it can be the run's.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnexp.config import MAX_TAG_KEY, MAX_TAG_VALUE
from nnexp.core.training import EPOCH_METRICS
from nnexp.errors import ConfigError, DataError, NnexpError
from nnexp.tracking import liveness
from nnexp.tracking.store import DESCRIPTION_TAG, MLFLOW_METRIC_NAMES, OUTBOX, OUTBOX_STATUSES, existing_store, find_run
from nnexp.tracking.tracked_run import OutboxWriteError, TrackedRun, TrackingStoreError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from nnexp.schema import Fields

#: The largest step or timestamp MLflow's stores hold.
INT64_MAX = 2**63 - 1
#: The largest outbox ``nnexp sync`` reads. Unlike nnexp's other files, an outbox grows with the run: each epoch's
#: metrics take about 500 bytes in it, so this holds half a million epochs trained while the store was away.
MAX_OUTBOX_BYTES = 256 * 2**20
#: The tags a run's later record may change after they were sent: its end's reason, and whether it was resumed.
CHANGING_TAGS = frozenset({"failure_reason", "resumed"})
#: Training's per-epoch diagnostics under their names in a run's history, by the names they are logged with.
HISTORY_NAMES = {logged: name for name, logged in MLFLOW_METRIC_NAMES.items()}
#: The metrics a run logs every epoch, at step = epoch, under their logged names.
EPOCH_LOGGED = frozenset(MLFLOW_METRIC_NAMES.get(name, name) for name in EPOCH_METRICS)
#: The metrics a finished run holds at every epoch from the first to its last.
FINISHED_HISTORY = ("train_loss", "train_accuracy")
#: The metrics a run with a validation split logs every epoch.
VALIDATION = ("val_loss", "val_accuracy")


def history_name(key: str) -> str:
    """The history's name of the logged metric ``key``, whose range it shares: early stopping's ``best_<monitor>``
    is its monitor's value at the best epoch."""
    return HISTORY_NAMES.get(key, key.removeprefix("best_"))


def metric_name(key: object) -> bool:
    """Whether MLflow takes ``key`` as a metric name: its characters, and no ``..`` or absolute path."""
    return (
        isinstance(key, str)
        and bool(re.fullmatch(r"[\w.\- :/]+", key))
        and not key.startswith("/")
        and ".." not in key.split("/")
    )


def sync(folder: Path, uri: str | None = None) -> str:
    """Send the outbox a run left in ``folder`` to its store (or ``uri``); returns what was sent.

    The outbox is data: every field is checked, artifacts are sent only from inside ``folder`` and only to the run
    it names, which must be in the store and, if it records its folder, be this folder's; otherwise nothing is sent.
    """
    from mlflow.entities import Metric

    from nnexp.schema import Fields, parse_json, read_text

    path = folder / OUTBOX
    try:
        contents = parse_json(read_text(path, MAX_OUTBOX_BYTES))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no outbox here; nothing to send") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable outbox: {exc}") from None
    fields = Fields(path)
    outbox = check_outbox(fields, contents, folder)
    store = uri or outbox["tracking_uri"]
    model = folder / "model"
    has_model = (model / "MLmodel").is_file()
    try:
        artifacts = [
            (file, artifact_path)
            for index, (local, directory) in enumerate(outbox["artifacts"])
            for file, artifact_path in artifact_files(fields, f"artifacts[{index}]", folder / local, folder, directory)
        ]
        if has_model:
            from nnexp.serving import check_saved_model

            artifact_files(fields, "model", model, folder)
            check_saved_model(model)  # what nnexp predict would refuse once logged is never logged
    except DataError:
        # Nothing is sent, but the run was looked at: if its process is gone it is marked KILLED, as every command
        # that reads runs does. A store that cannot be read leaves the outbox's own error to be reported.
        with contextlib.suppress(NnexpError):
            reaped_run(store, outbox["run_id"], path, folder)
        raise
    client, found = reaped_run(store, outbox["run_id"], path, folder)
    recorded = found.data.tags.get("output_dir")
    if recorded is not None and Path(recorded).resolve() != folder.resolve():
        raise DataError(f"{path}: run_id {outbox['run_id']} is the run of {recorded}, not of {folder.resolve()}")
    if found.info.lifecycle_stage == "deleted":  # MLflow refuses to log to it, which read as a store not answering
        raise DataError(
            f"{path}: run {outbox['run_id']} is deleted in {store}; restore it first with: "
            f"mlflow runs restore --run-id {outbox['run_id']}"
        )
    status = found.info.status
    # Only a run left open, or marked KILLED because its process died, still waits for what its outbox holds.
    if status != "RUNNING" and not (status == "KILLED" and found.data.tags.get("failure_reason") == liveness.REASON):
        raise DataError(
            f"{path}: run {outbox['run_id']} is already {status}, closed since this outbox was written; "
            "nothing to send (remove the outbox)"
        )
    keys = {*(row[0] for row in outbox["metrics"]), *FINISHED_HISTORY, *VALIDATION}
    histories = stored_histories(client, found, keys)
    last = check_steps(fields, outbox, found, histories)
    metrics = missed_metrics(fields, outbox, found, histories)
    run = TrackedRun(client, outbox["run_id"], folder, training=False)
    run._pending = [Metric(*row) for row in metrics]
    run._tags = dict(outbox["tags"])
    run._artifacts = artifacts
    counts = f"{len(run._pending)} metric values, {len(run._tags)} tags, {len(run._artifacts)} artifacts"
    from nnexp.serving import has_ready_model, upload_model

    logged_model = has_ready_model(client, run.run_id)
    if has_model and not logged_model:  # never logged, or its upload failed
        run.hold_model(model, functools.partial(upload_model, client, run.run_id, model, last))
        counts += ", the model"
    unfinished = outbox["status"] == "FINISHED" and training_unfinished(
        found, metrics, histories, folder, last, has_model or logged_model
    )
    if unfinished:
        # Its own record and folder say the process ended mid-training: what it logged is kept, not its claim.
        reason = f"{path}: status FINISHED, but {unfinished}"
        end(run, "KILLED", path, reason)
        raise DataError(f"{reason}; sent {counts} to {store} and closed run {run.run_id} KILLED{remove(path)}")
    failed, stored_reason = outbox["status"] != "FINISHED", found.data.tags.get("failure_reason")
    # A run closed KILLED or FAILED says why; an outbox that does not leaves what its status tells.
    told = "failure_reason" in outbox["tags"] or stored_reason is not None
    end(run, outbox["status"], path, liveness.REASON if failed and not told else None)
    if not failed and stored_reason == liveness.REASON and "failure_reason" not in outbox["tags"]:
        # The run finished after all, and its outbox says so: the reap's guess is no longer its record.
        client.delete_tag(run.run_id, "failure_reason")
    return f"run {run.run_id}: sent {counts} to {store}; status {outbox['status']}{remove(path)}"


def end(run: TrackedRun, status: str, path: Path, reason: str | None = None) -> None:
    """End ``run`` with ``status`` as its outbox at ``path`` asks. A store that refuses leaves what it did not take
    in the outbox, or, if the outbox's folder cannot be written either (mounted read-only), the outbox as it was."""
    try:
        run.end(status, reason)
    except OutboxWriteError as exc:
        raise TrackingStoreError(
            f"tracking store {run.store} refused what was sent ({run.refusal}), and {path.parent} cannot be written "
            f"({exc.error.strerror}): the outbox is kept as it was; send it again with: nnexp sync {path.parent} "
            "once both take writes"
        ) from None


def remove(path: Path) -> str:
    """Remove the outbox at ``path``, all it holds being sent; what to add to the line that says so if it stays."""
    try:
        path.unlink()
    except FileNotFoundError:
        return ""
    except OSError as exc:  # a folder mounted read-only
        return (
            f"; {path} could not be removed ({exc.strerror}) and holds nothing more to send: remove it once its "
            "folder is writable"
        )
    return ""


def stored_histories(client: MlflowClient, found: Run, keys: set[str]) -> dict[str, dict[int, float]]:
    """The values the store holds of each metric of ``keys`` of the run ``found``, by step."""
    return {
        key: {metric.step: metric.value for metric in client.get_metric_history(found.info.run_id, key)}
        for key in keys
    }


def has_validation(found: Run, histories: dict[str, dict[int, float]]) -> bool:
    """Whether the run ``found`` has a validation split: not when its dataset's ``val_size`` is 0, nor when the store
    holds epochs of it (``histories``) without validation metrics; a run logs both in one batch every epoch."""
    val_size = found.data.params.get("dataset.val_size")
    with contextlib.suppress(ValueError):
        if val_size is not None and float(val_size) == 0:
            return False
    return not histories["train_loss"] or any(histories[key] for key in VALIDATION)


def check_steps(fields: Fields, outbox: dict[str, Any], found: Run, histories: dict[str, dict[int, float]]) -> int:
    """Check each outbox row's step against the run ``found`` it is sent to, and that the training history's steps,
    with those the store holds (``histories``), run without a gap from epoch 1; returns the run's last epoch. A run
    logs per-epoch metrics at step = epoch, within ``trainer.epochs``, ``val_*`` only with a validation split, and
    the others (test metrics, early stopping's, ``system/`` times) at its last epoch.

    A run without ``trainer.epochs`` trains nothing (a sweep's parent): its rows are not epochs.
    """
    rows = outbox["metrics"]
    run_id = found.info.run_id
    last = max([row[3] for row in rows if row[0] == "train_loss"] + list(histories["train_loss"]), default=0)
    try:
        epochs = int(found.data.params["trainer.epochs"])
    except (KeyError, ValueError):
        return last
    validation = has_validation(found, histories)
    steps: dict[str, set[int]] = {}
    for index, (key, _, _, step) in enumerate(rows):
        field = f"metrics[{index}]: {key} step"
        if key.startswith("val_") and not validation:
            raise DataError(
                f"{fields.source}: metrics[{index}]: {key} is logged only by a run with a validation split, and run "
                f"{run_id} has none"
            )
        if key in EPOCH_LOGGED:
            fields.check(1 <= step <= epochs, field, f"an epoch 1..{epochs} (trainer.epochs of run {run_id})", step)
            steps.setdefault(key, set()).add(step)
        else:
            expected = f"{last}, the last epoch of run {run_id} (its last train_loss step), where nnexp logs {key}"
            fields.check(step == last and last >= 1, field, expected, step)
    for key in [key for key in FINISHED_HISTORY if key in steps]:  # in a fixed order: the first gap is named
        # An outbox holds every epoch the store missed, in order: one past a gap was not written by the run. (A
        # validation loss that overflows is not logged: its epoch stays empty.)
        outboxed = steps[key]
        missing = first_gap(outboxed | set(histories[key]), max(outboxed))
        if missing is not None:
            index = next(i for i, row in enumerate(rows) if row[0] == key and row[3] > missing)
            raise DataError(
                f"{fields.source}: metrics[{index}]: {key} at epoch {rows[index][3]} follows no value at epoch "
                f"{missing}, neither in the outbox nor in run {run_id}"
            )
    return last


def missed_metrics(
    fields: Fields, outbox: dict[str, Any], found: Run, histories: dict[str, dict[int, float]]
) -> list[list[Any]]:
    """The outbox's metric rows that the run ``found`` lacks; raises DataError for a row or tag that would change
    what the run records (another value at a step it holds, another value of a tag it was given): an outbox holds
    only what the store missed, so such a row is not the run's."""
    run_id = found.info.run_id
    for key, value in outbox["tags"].items():
        held = found.data.tags.get(key)
        if held is not None and held != value and key not in CHANGING_TAGS:
            fields.fail(f"tags.{key}", f"{held!r}, as run {run_id} records it (an outbox only adds to a run)", value)
    missed = []
    for index, (key, value, timestamp, step) in enumerate(outbox["metrics"]):
        held = histories[key].get(step)
        if held is None:
            missed.append([key, value, timestamp, step])
        elif held != value and not (math.isnan(held) and math.isnan(value)):  # an equal one was sent before
            expected = f"{held!r}, the value run {run_id} records at step {step} (an outbox only adds to a run)"
            fields.fail(f"metrics[{index}] value", expected, value)
    return missed


def reaped_run(store: str, run_id: str, path: Path, folder: Path) -> tuple[MlflowClient, Run]:
    """A client of ``store`` (which must exist) and its run ``run_id``, which an outbox at ``path`` in ``folder``
    names, marked KILLED first if its process is gone."""
    client = existing_store(store, f"send {path} with: nnexp sync {folder} --uri URI")
    found = find_run(client, run_id, f"{path}: run_id {run_id} is no run in {store}")
    return client, liveness.reap_unless_deleted(client, found)


def training_unfinished(
    found: Run, metrics: list[list[Any]], histories: dict[str, dict[int, float]], folder: Path, last: int, model: bool
) -> str | None:
    """Why the run ``found`` did not finish training, by its folder and its record (the store's ``histories`` and the
    outbox's missed ``metrics``); None when they show it did: ``model.npz`` is saved, its MLflow ``model`` is in its
    folder or logged, the test metrics are logged (only after training and evaluation), every epoch up to its
    ``last`` is, and that is the run's ``trainer.epochs`` or early stopping ended it (its ``best_epoch`` is logged).
    A sweep's or reproduction's parent run (tagged ``nnexp_command``) trains nothing itself: its jobs' runs say how
    they ended."""
    if "nnexp_command" in found.data.tags:
        return None
    logged = {row[0] for row in metrics} | set(found.data.metrics)
    epochs = found.data.params.get("trainer.epochs", "unknown")
    trained = f"its last epoch logged is {last} of trainer.epochs={epochs}"
    if not (folder / "model.npz").is_file():
        return f"{folder.resolve()} holds no model.npz and {trained}"
    if not model:
        return f"{folder.resolve()} holds no model/MLmodel, run {found.info.run_id} logged no model, and {trained}"
    if not {"test_loss", "test_accuracy"} <= logged:
        return f"no test metrics are logged and {trained}"
    for key in FINISHED_HISTORY:
        missing = first_gap(set(histories[key]) | {row[3] for row in metrics if row[0] == key}, last)
        if missing is not None:
            return f"{key} is logged at no epoch {missing} of the {last} it trained"
    if str(last) != epochs and "best_epoch" not in logged:
        return f"{trained}, and no early stopping ended it"
    return None


def first_gap(steps: set[int], last: int) -> int | None:
    """The first epoch from 1 to ``last`` that ``steps`` lacks, or None (found within ``len(steps) + 1`` epochs)."""
    return next((epoch for epoch in range(1, last + 1) if epoch not in steps), None)


def check_outbox(fields: Fields, contents: object, folder: Path) -> dict[str, Any]:
    """``contents`` of an outbox in ``folder``, once every field is checked; raises DataError naming the field."""
    from nnexp.schema import RUN_ID, check_metric

    outbox = fields.mapping(contents, "the outbox")
    fields.string(fields.get(outbox, "tracking_uri"), "tracking_uri")
    fields.string(fields.get(outbox, "run_id"), "run_id", RUN_ID, "an MLflow run id (32 hex digits)")
    status = fields.get(outbox, "status")
    fields.check(status in OUTBOX_STATUSES, "status", f"one of {', '.join(OUTBOX_STATUSES)}", status)
    metrics = fields.get(outbox, "metrics")
    fields.check(isinstance(metrics, list), "metrics", "a list of [key, value, timestamp, step]", metrics)
    rows: dict[tuple[str, int], int] = {}
    for index, row in enumerate(metrics):
        field = f"metrics[{index}]"
        fields.check(isinstance(row, list) and len(row) == 4, field, "[key, value, timestamp, step]", row)
        fields.string(row[0], f"{field} key")
        fields.check(metric_name(row[0]), f"{field} key", "a metric name of letters, digits and _-. :/", row[0])
        fields.check(len(row[0]) <= MAX_TAG_KEY, f"{field} key", f"at most {MAX_TAG_KEY} characters", row[0])
        check_metric(fields, history_name(row[0]), row[1], f"{field} value", nan=True)
        # What MLflow's stores hold (64-bit integers); a value past them was refused, which read as no answer.
        fields.integer(row[2], f"{field} timestamp", 0, INT64_MAX)
        fields.integer(row[3], f"{field} step", 0, INT64_MAX)
        # A run logs each metric once a step; a second value there would stand beside the first in its record.
        first = rows.setdefault((row[0], row[3]), index)
        if first != index:
            raise DataError(f"{fields.source}: {field} repeats {row[0]} at step {row[3]}, as metrics[{first}] does")
    tags = fields.mapping(fields.get(outbox, "tags"), "tags")
    for key, value in tags.items():
        fields.check(metric_name(key), f"tags.{key!r}", "a tag key of letters, digits and _-. :/", key)
        fields.check(len(key) <= MAX_TAG_KEY, f"tags.{key[:40]}…", f"at most {MAX_TAG_KEY} characters", len(key))
        fields.string(value, f"tags.{key}")
        fields.check(len(value) <= MAX_TAG_VALUE, f"tags.{key}", f"at most {MAX_TAG_VALUE} characters", len(value))
        # A run's system tags and its folder are set when it is created; an outbox only adds to the run (a sweep's
        # parent its description, the table of its jobs).
        mlflow_own = key.startswith("mlflow.") and key != DESCRIPTION_TAG
        fields.check(not mlflow_own, f"tags.{key}", "a tag of nnexp's, not one of MLflow's own", key)
        if key == "output_dir":
            fields.check(Path(value).resolve() == folder.resolve(), "tags.output_dir", str(folder.resolve()), value)
    artifacts = fields.get(outbox, "artifacts")
    fields.check(isinstance(artifacts, list), "artifacts", "a list of [path, artifact_path]", artifacts)
    for index, entry in enumerate(artifacts):
        field = f"artifacts[{index}]"
        valid = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
        fields.check(valid and (entry[1] is None or isinstance(entry[1], str)), field, "[path, artifact_path]", entry)
    return outbox


def artifact_files(
    fields: Fields, field: str, local: Path, folder: Path, artifact_path: str | None = None
) -> list[tuple[str, str | None]]:
    """The files to upload for the artifact ``local`` (a file, or a folder's files) logged under ``artifact_path``,
    as ``(file, artifact folder)`` pairs; every one must lie inside ``folder``, symbolic links followed.

    Temporary files of writes that were interrupted are left out.
    """
    from nnexp.atomic import PARTIAL
    from nnexp.schema import check_regular, inside

    if not inside(local, folder):
        fields.fail(field, f"a file inside {folder.resolve()}", str(local))
    if not local.exists():
        fields.fail(field, "a file that exists", str(local))
    if artifact_path is not None:
        parts = artifact_path.replace("\\", "/").split("/")
        relative = not artifact_path.startswith("/") and ".." not in parts
        fields.check(relative, f"{field} artifact path", "relative, without ..", artifact_path)
    if not local.is_dir():
        check_regular(local)  # MLflow would read a FIFO for ever
        return [(str(local.resolve()), artifact_path)]
    found = []
    for entry in sorted(local.rglob("*")):
        if not inside(entry, folder):
            fields.fail(field, f"a folder whose files are inside {folder.resolve()}", str(entry))
        if entry.is_dir() or PARTIAL.fullmatch(entry.name):
            continue
        check_regular(entry)
        parent = entry.parent.relative_to(local).as_posix()
        where = "/".join(part for part in (artifact_path, parent) if part and part != ".") or None
        found.append((str(entry.resolve()), where))
    return found
