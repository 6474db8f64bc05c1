"""One MLflow run as nnexp keeps it: opened or reopened, fed in batches, closed with its status.

A little over 350 lines, kept together: the run and the tracker that opens it share one promise, that a run ends
with a status and nothing it was sent is lost (the outbox), and splitting them would split that promise.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnexp.errors import ConfigError, Interrupted, NnexpError, interruption
from nnexp.folders import describe_os_error
from nnexp.tracking import liveness
from nnexp.tracking.store import (
    OUTBOX,
    UI_ADDRESS,
    VIEW_TAG_PREFIX,
    RunCreationError,
    artifact_root,
    check_store,
    disk_error,
    mlflow_metrics,
    quiet_mlflow,
    relative_location,
    resolve_uri,
    resumable,
    sqlite_path,
    store_error_reason,
    store_lock,
    ui_url,
    unusable_store,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0
#: While the store does not answer, how often to try again; each try pauses training for a few seconds.
RETRY_SECONDS = 30.0
#: Tries to deliver what is queued when a run ends, before writing the outbox, and the pause between them.
END_ATTEMPTS = 3
END_PAUSE_SECONDS = 5.0


# MLflow's own limits for one log_batch request.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000

#: The tags a resumed run must find as it recorded them, and what each stands for: its data (a dataset plugin that
#: ignores its ``rng`` gives other data each time it loads).
SAME_ON_RESUME = {"dataset_digest": "data"}


class TrackingStoreError(NnexpError):
    """The tracking store went away during a run and did not come back; what it missed is in an outbox file."""


class OutboxWriteError(TrackingStoreError):
    """The store stayed away at a run's end, and the outbox could not be written either: ``error`` says why."""

    def __init__(self, message: str, error: OSError) -> None:
        super().__init__(message)
        self.error = error


class RunDeletedError(NnexpError):
    """The run was deleted from its store while this process had it open: the store takes nothing more of it, and
    waiting for it to answer would wait for ever."""


class ModelLostError(NnexpError):
    """The model a run held for its end was removed from the disk before the store took it: the run is FAILED."""


class TrackedRun:
    """One MLflow run; metrics are buffered and sent in batches, since one request per value is slow.

    If the store stops answering mid-run, training goes on: metrics, tags and artifacts wait here and are sent
    when it answers again. If it is still away when the run ends, they are written with the run's final status to
    ``outbox/OUTBOX`` (the run's output folder), and ``nnexp sync FOLDER`` sends them later.

    A run this process opened (:meth:`Tracker.open_run`, :meth:`Tracker.start_run`) has a heartbeat until it ends,
    refreshed with each flush of metrics and by a daemon thread; see :mod:`nnexp.tracking.liveness`.
    """

    def __init__(self, client: MlflowClient, run_id: str, outbox: Path | None = None, training: bool = True) -> None:
        self.client, self.run_id, self.outbox = client, run_id, outbox
        #: Whether a process trains meanwhile, which a store going away tells at once (``nnexp sync`` only ends a run).
        self.training = training
        #: The store's own words for the last request it refused.
        self.refusal: str | None = None
        self._pending: list[Any] = []
        self._tags: dict[str, str] = {}
        self._artifacts: list[tuple[str, str | None]] = []
        self._last_flush = time.monotonic()
        self._away_since: float | None = None
        #: The last failed request failed on the store's own disk (full, or a file where a folder belongs).
        self._disk_error: str | None = None
        self._heartbeat: liveness.Heartbeat | None = None
        #: (metric, step) pairs the store held when a resumed run reopened: a replayed epoch does not log them again.
        self._stored: set[tuple[str, int]] = set()
        #: A model the store did not take, where it is kept, and how to log it when the store takes requests again.
        self._model: tuple[Path, Callable[[], object]] | None = None
        #: The held model is a temporary copy, gone once the run ends: an outbox cannot keep it for ``nnexp sync``.
        self._model_temporary = False
        #: The run was deleted from the store while open (:class:`RunDeletedError`).
        self.deleted = False
        #: Why the model it held could not be logged: its folder is gone; the run then ends FAILED.
        self.lost_model: str | None = None

    @property
    def disk_error(self) -> str | None:
        """Why the store's disk refused the last request that failed (``database or disk is full: …``), if it did."""
        return self._disk_error

    def start_heartbeat(self) -> None:
        self._heartbeat = liveness.Heartbeat(self.client, self.run_id)

    @property
    def deleted_reason(self) -> str:
        return f"run {self.run_id} was deleted from {self.store} while it trained"

    @property
    def restore_command(self) -> str:
        return f"mlflow runs restore --run-id {self.run_id}"

    @property
    def store(self) -> str:
        return str(self.client.tracking_uri)

    def _send(self, request: Callable[[], object], reads: Path | None = None, records: bool = True) -> bool:
        """Make one request; if the store does not answer, note it (warning once) and return False. Raises
        :class:`RunDeletedError` if the store refuses the request because the run is deleted.

        ``reads``: the local file or folder the request sends; if it is gone once the request fails, the request
        failed for want of it, and the store is not blamed (False all the same). ``records``: the request writes
        the store's records; only then does its success say the store takes requests again (an artifact's upload
        into a local store only copies files, which a database that refuses every write does not stop).
        """
        try:
            request()
        except Exception as exc:
            if f"The run {self.run_id} must be in the 'active' state. Current state is deleted" in str(exc):
                self.deleted = True
                if self._heartbeat is not None:
                    self._heartbeat.stop()
                raise RunDeletedError(f"{self.deleted_reason}; restore it with: {self.restore_command}") from None
            if reads is not None and not reads.exists():
                return False
            self._disk_error = disk_error(exc, sqlite_path(self.store))
            self.refusal = store_error_reason(exc)[:200]
            if self._away_since is None and self.training:
                trouble = "cannot write what it is sent" if self._disk_error else "does not answer"
                log.warning(
                    "tracking store %s %s (%s); training goes on, and what it misses is kept and sent when it "
                    "takes it again",
                    self.store,
                    trouble,
                    self.refusal,
                )
            self._away_since = time.monotonic()
            return False
        if self._away_since is not None and records:
            log.warning("tracking store %s takes requests again; sending what it missed", self.store)
            self._away_since = None
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start : start + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._tags.update({key: str(value) for key, value in tags.items()})
        self._send_tags()

    def _send_tags(self) -> bool:
        from mlflow.entities import RunTag

        entries = [RunTag(key, value) for key, value in self._tags.items()]
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            chunk = entries[start : start + MAX_PARAMS_PER_BATCH]
            if not self._send(lambda chunk=chunk: self.client.log_batch(self.run_id, tags=chunk)):
                return False
            for tag in chunk:
                del self._tags[tag.key]
        return True

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: int | None = None) -> None:
        """Queue ``metrics`` at ``step`` (``timestamp`` in ms, now by default); they are sent every few seconds and
        when the run ends."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000) if timestamp is None else timestamp
        self._pending += [
            Metric(key, float(value), timestamp, step)
            for key, value in metrics.items()
            if math.isfinite(value) and (key, step) not in self._stored
        ]
        waited = time.monotonic() - self._last_flush
        if waited >= (FLUSH_SECONDS if self._away_since is None else RETRY_SECONDS):
            self.flush()

    def flush(self) -> bool:
        """Send the queued metrics, with a heartbeat; False if the store did not take them all (the rest stay
        queued)."""
        from mlflow.entities import RunTag

        self._last_flush = time.monotonic()
        beat = [RunTag(liveness.HEARTBEAT, liveness.beat())] if self._heartbeat else []
        while self._pending:
            chunk = self._pending[:MAX_METRICS_PER_BATCH]
            if not self._send(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk, tags=beat)):
                return False
            del self._pending[: len(chunk)]
        return True

    def complete_history(self, history: Mapping[str, Sequence[float]], *, rate_changes: bool = True) -> None:
        """Queue the values of a resumed run's per-epoch ``history`` (step = epoch) that the store lacks, and
        remember every step it holds, so that epochs replayed after the checkpoint are not logged twice.

        A process that died between flushes sent fewer epochs than its checkpoint holds, or, with checkpoints
        every few epochs, more.
        """
        history = mlflow_metrics(history, rate_changes=rate_changes)
        try:
            keys = set(history) | set(self.client.get_run(self.run_id).data.metrics)
            for key in keys:
                self._stored.update((key, metric.step) for metric in self.client.get_metric_history(self.run_id, key))
        except Exception as exc:
            reason = store_error_reason(exc)[:200]
            log.warning("cannot read run %s's metrics (%s); epochs it lacks are not logged again", self.run_id, reason)
            self._stored.clear()
            return
        steps: dict[int, dict[str, float]] = {}
        for key, values in history.items():
            for step, value in enumerate(values, start=1):
                steps.setdefault(step, {})[key] = value
        for step, metrics in sorted(steps.items()):
            self.log_metrics(metrics, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._artifacts.append((str(path.resolve()), artifact_path))
        self._send_artifacts()

    def _send_artifacts(self) -> bool:
        while self._forget_missing_artifacts():
            path, artifact_path = self._artifacts[0]
            upload = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
            if self._send(functools.partial(upload, self.run_id, path, artifact_path), Path(path), records=False):
                self._artifacts.pop(0)
            elif Path(path).exists():
                return False
        return True

    def _forget_missing_artifacts(self) -> bool:
        """Drop, with a warning each, the queued artifacts whose local file is gone (no store, and no ``nnexp sync``,
        can log them); whether any are left."""
        for path, artifact_path in list(self._artifacts):
            if not Path(path).exists():
                not_logged(path)
                self._artifacts.remove((path, artifact_path))
        return bool(self._artifacts)

    def hold_model(self, directory: Path, upload: Callable[[], object], temporary: bool = False) -> None:
        """Keep the model saved in ``directory`` for the run's end, which calls ``upload`` before it sets the status:
        a run is never closed FINISHED without the model it logs. If the store stays away, the outbox says so and
        ``nnexp sync`` logs the model; a ``temporary`` directory, removed as the run ends, keeps it for no one: the
        outbox then ends the run FAILED, saying so."""
        self._model = (directory, upload)
        self._model_temporary = temporary

    def _send_model(self) -> bool:
        if self._model is None:
            return True
        directory, upload = self._model
        if directory.exists() and self._send(upload, directory):
            self._model = None
        elif not directory.exists():
            self._model, self.lost_model = None, f"the model was not logged: {not_logged(directory)}"
        return self._model is None

    def end(self, status: str, reason: str | None = None) -> None:
        """Send everything queued (a held model too) and set the final status; ``reason`` becomes the
        ``failure_reason`` tag.

        Raises :class:`TrackingStoreError` after writing the outbox if the store stays away, and
        :class:`ModelLostError` after ending a run that would be FINISHED as FAILED if the model it held is gone.
        """
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if reason is not None:
            self._tags["failure_reason"] = reason
        lost = False
        for attempt in range(END_ATTEMPTS):
            if attempt:
                time.sleep(END_PAUSE_SECONDS)
            delivered = self.flush() and self._send_tags() and self._send_artifacts() and self._send_model()
            if delivered and self.lost_model is not None and status == "FINISHED":  # never FINISHED without its model
                lost, status, self._tags["failure_reason"] = True, "FAILED", self.lost_model
                delivered = self._send_tags()
            if delivered and self._send(functools.partial(self.client.set_terminated, self.run_id, status)):
                if lost:
                    raise ModelLostError(f"{self.lost_model}; run {self.run_id} is marked FAILED")
                return
        trouble = f"cannot write ({self._disk_error})" if self._disk_error else "stopped answering"
        model = f"model (saved in {self._model[0]}), " if self._model else ""
        if self._model is not None and self._model_temporary:
            nowhere = "the run's MLflow model was not logged and is kept nowhere (its folder had no room for it)"
            model = ""
            if status == "FINISHED":
                status, self._tags["failure_reason"] = "FAILED", nowhere
            trouble += f"; {nowhere}"
        try:
            outbox = self.write_outbox(status)
        except OSError as exc:  # the run's folder is on the store's full disk too
            raise OutboxWriteError(
                f"tracking store {self.store} {trouble}, and the outbox cannot be kept either "
                f"({describe_os_error(exc, 'write', self.outbox)}); run {self.run_id} stays RUNNING (nnexp runs "
                f"marks it KILLED once this process ends) without its {model}last metrics, tags and artifacts",
                exc,
            ) from None
        raise TrackingStoreError(
            f"tracking store {self.store} {trouble}; run {self.run_id}'s {model}last metrics, tags, artifacts and "
            f"status {status} are kept in {outbox}; send them with: nnexp sync {self.outbox}"
        )

    def write_outbox(self, status: str) -> Path:
        """Everything the store missed, and the final status, as JSON in the run's folder."""
        from nnexp.atomic import replacing

        folder = self.outbox or Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        self._forget_missing_artifacts()
        contents = {
            "tracking_uri": self.store,
            "run_id": self.run_id,
            "status": status,
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in self._pending],
            "tags": self._tags,
            "artifacts": self._artifacts,
        }
        with replacing(folder / OUTBOX, "w") as file:
            json.dump(contents, file, indent=1)
        self.outbox = folder
        return folder / OUTBOX


class Tracker:
    """An MLflow store and the experiment runs go to; creates the experiment on first use. With ``create=False`` it
    only reads an existing experiment (``nnexp runs``, ``compare``), wherever that keeps its artifacts."""

    def __init__(self, uri: str, experiment: str, create: bool = True) -> None:
        check_store(uri)
        from mlflow import MlflowClient

        quiet_mlflow()
        self.uri = uri
        database = sqlite_path(uri)
        new_store = database is not None and not database.exists()
        #: Whether this tracker created its SQLite store, which :meth:`discard_new_store` may then remove.
        self.created_store = new_store
        #: Whether the store's artifacts folder is the new store's too: one that was there before (kept when its
        #: database was deleted) holds older runs' artifacts, and stays.
        self.created_artifacts = new_store and not (database.parent / "mlartifacts").exists()
        try:
            with store_lock(uri):
                try:
                    if new_store:  # else MLflow's Default experiment keeps its artifacts in ./mlruns, outside the store
                        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

                        SqlAlchemyStore(uri, artifact_root(uri))
                    self.client = MlflowClient(tracking_uri=uri)
                    found = self.client.get_experiment_by_name(experiment)
                    if found is not None and create and relative_location(found.artifact_location):
                        # Inside the lock: a lock file this tracker made goes with the refusal.
                        raise ConfigError(
                            f"tracking.experiment={experiment!r} keeps its artifacts in {found.artifact_location}, "
                            "relative to whatever folder a run starts in, so its runs would leave them there; choose "
                            "another tracking.experiment (a new experiment gets an absolute artifact location)"
                        )
                    if found is None and create:
                        self.experiment_id = self.client.create_experiment(
                            experiment, artifact_location=artifact_root(uri)
                        )
                except BaseException:
                    # A store that could not be created (a full disk, SIGTERM while creating it) is not left half-made.
                    if new_store:
                        database.unlink(missing_ok=True)
                    raise
        except NnexpError:
            raise
        except Exception as exc:
            raise unusable_store(uri, exc) from None
        if found is not None and found.lifecycle_stage == "deleted":
            raise ConfigError(
                f"tracking.experiment={experiment!r} is deleted in {uri}; restore it with mlflow experiments restore, "
                "or choose another name"
            )
        if found is not None:
            self.experiment_id = found.experiment_id
        elif not create:
            raise ConfigError(f"tracking store {uri} has no experiment named {experiment!r}")

    def discard_new_store(self) -> None:
        """Remove the SQLite store this tracker created, with its lock and artifacts, if it holds no run but deleted
        ones; then its folder, if left empty inside the folder nnexp runs in (``outputs``)."""
        from mlflow.entities import ViewType

        from nnexp.folders import discard_dir

        database = sqlite_path(self.uri)
        if not self.created_store or database is None:
            return
        experiments = [experiment.experiment_id for experiment in self.client.search_experiments(ViewType.ALL)]
        if self.client.search_runs(experiments, run_view_type=ViewType.ACTIVE_ONLY, max_results=1):
            return  # another process uses the store too
        if self.created_artifacts:
            shutil.rmtree(database.parent / "mlartifacts", ignore_errors=True)
        for leftover in (database, database.with_name(database.name + ".lock")):
            leftover.unlink(missing_ok=True)
        if Path.cwd().resolve() in database.resolve().parents[1:]:
            discard_dir(database.parent, set())

    def where_to_see(self, run_id: str | None = None, view: str | None = None) -> str:
        """How to look at a run (or the runs table in a saved ``view``): a server's page for it, or ``nnexp ui``
        and the page it will serve."""
        if urllib.parse.urlparse(self.uri).scheme in ("http", "https"):
            return f"see it at {ui_url(self.uri, self.experiment_id, run_id, view)}"
        command = "nnexp ui" if self.uri == resolve_uri(None, Path.cwd()) else f"nnexp ui --uri {self.uri}"
        return f"see it with: {command}, then {ui_url(UI_ADDRESS, self.experiment_id, run_id, view)}"

    def save_view(self, key: str, view: str) -> bool:
        """Save ``view`` (MLflow UI's JSON view state) for the address ``ui_url(..., view=key)``; whether it was."""
        try:
            self.client.set_experiment_tag(self.experiment_id, f"{VIEW_TAG_PREFIX}{key}", view)
        except Exception as exc:  # a view is a convenience: the runs are recorded without it
            log.warning("the runs table's view was not saved: %s", store_error_reason(exc))
            return False
        return True

    def saved_view(self, key: str) -> bool:
        """Whether the experiment holds the view ``key``."""
        tags = self.client.get_experiment(self.experiment_id).tags
        return f"{VIEW_TAG_PREFIX}{key}" in tags

    def open_run(self, run_name: str, tags: Mapping[str, Any], outbox: Path | None = None) -> TrackedRun:
        """A new RUNNING run of this process, with a heartbeat; whoever opens it must :meth:`TrackedRun.end` it."""
        tags = {**{key: str(value) for key, value in tags.items()}, **liveness.process_tags()}
        try:
            created = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        except Exception as exc:
            reason = store_error_reason(exc)
            raise RunCreationError(f"tracking store {self.uri} cannot create the run: {reason[:300]}") from None
        run = TrackedRun(self.client, created.info.run_id, outbox)
        run.start_heartbeat()
        return run

    def reopen_run(self, run_id: str, outbox: Path | None = None, tags: Mapping[str, Any] | None = None) -> TrackedRun:
        """Run ``run_id`` RUNNING again, in this process, with ``tags`` updated; see :func:`resumable`. A tag of
        :data:`SAME_ON_RESUME` in ``tags`` must be the run's own: else it is refused, its status as it was."""
        found = resumable(self.client, self.client.get_run(run_id))
        for key, what in SAME_ON_RESUME.items():
            recorded, now = found.data.tags.get(key), (tags or {}).get(key)
            if recorded is not None and now is not None and recorded != now:
                raise RunCreationError(
                    f"run {run_id} trained on other {what} than it is given now ({key} {recorded[:12]}… recorded, "
                    f"{now[:12]}… now); a resumed run goes on with what it began with: restore that, or start anew"
                )
        tags = {key: value for key, value in (tags or {}).items() if key not in SAME_ON_RESUME}
        run = TrackedRun(self.client, run_id, outbox)
        # Where it lives now before the status: a RUNNING run with the dead process's pid would be marked again.
        run.set_tags({**(tags or {}), **liveness.process_tags(), "resumed": "true", "failure_reason": ""})
        self.client.update_run(run_id, status="RUNNING")
        run.start_heartbeat()
        return run

    def open_or_reopen(
        self, run_name: str, tags: Mapping[str, Any], resume: str | None = None, outbox: Path | None = None
    ) -> TrackedRun:
        """A new run (:meth:`open_run`), or with ``resume`` that existing run reopened (:meth:`reopen_run`)."""
        if resume is None:
            return self.open_run(run_name, tags, outbox)
        # Its folder, if the user moved it; the rest of its tags stay as the run first recorded them.
        kept = {key: tags[key] for key in ("output_dir", *SAME_ON_RESUME) if key in tags}
        return self.reopen_run(resume, outbox, kept)

    def record_failure(self, run_name: str, tags: Mapping[str, Any], reason: str, params: Mapping[str, Any]) -> str:
        """A run that failed before it could start, kept so a sweep shows every job; returns its id."""
        run = self.open_run(run_name, tags)
        run.log_params(params)
        run.end("FAILED", reason)
        return run.run_id

    @contextlib.contextmanager
    def start_run(
        self, run_name: str, tags: Mapping[str, Any], resume: str | None = None, outbox: Path | None = None
    ) -> Iterator[TrackedRun]:
        """A run that ends FINISHED, KILLED on Ctrl-C, or FAILED with a ``failure_reason`` tag otherwise.

        With ``resume``, that existing run is reopened (RUNNING again) instead of a new one created.
        """
        run = self.open_or_reopen(run_name, tags, resume, outbox)
        try:
            yield run
        except BaseException as exc:
            end_after(run, exc)
            raise
        run.end("FINISHED")


def not_logged(path: str | Path) -> str:
    """Warn that ``path``, gone from the disk, is not logged; returns what the warning says of it."""
    gone = f"{path}: {os.strerror(errno.ENOENT)} (the run folder was removed?)"
    log.warning("warning: not logged: %s", gone)
    return gone


def end_after(run: TrackedRun, exc: BaseException) -> None:
    """End ``run`` KILLED if ``exc`` is (or was raised from) a stop, and raise :class:`Interrupted` saying so; else
    FAILED with ``exc`` as its ``failure_reason``."""
    if run.deleted:  # the store takes no status of a deleted run: it stays as it is there
        return
    stop = interruption(exc)
    stop = Interrupted.of(stop) if stop is not None else None
    reason = str(stop or exc) or type(exc).__name__
    try:
        run.end("FAILED" if stop is None else "KILLED", reason)
    except TrackingStoreError as lost:  # the original error matters more; say where the rest went
        log.warning("%s", lost)
    if stop is not None:
        raise Interrupted(f"{reason}; MLflow run {run.run_id} is marked KILLED", stop.exit_code) from None
