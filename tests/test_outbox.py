"""``nnexp sync`` sends only what a valid outbox names from inside its run folder, and only to its own run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nnexp.errors import NnexpError
from nnexp.schema import Fields
from nnexp.tracking.outbox import artifact_files, sync
from nnexp.tracking.store import OUTBOX

RUN_ID = "0123456789abcdef0123456789abcdef"


def outbox(folder: Path, **fields) -> Path:
    """A valid outbox in ``folder`` for a store that does not exist, with ``fields`` replaced."""
    (folder / "config.yaml").write_text("seed: 0\n")
    contents = {
        "tracking_uri": f"sqlite:///{folder / 'nowhere' / 'mlflow.db'}",
        "run_id": RUN_ID,
        "status": "FINISHED",
        "metrics": [["train_loss", 0.5, 1700000000000, 1]],
        "tags": {"resumed": "true"},
        "artifacts": [[str(folder / "config.yaml"), None]],
        **fields,
    }
    path = folder / OUTBOX
    path.write_text(json.dumps(contents))
    return path


def refusal(folder: Path) -> str:
    with pytest.raises(NnexpError) as raised:
        sync(folder)
    message = str(raised.value)
    assert "\n" not in message
    assert (folder / OUTBOX).is_file(), "a refused outbox is kept"
    assert not (folder / "nowhere").exists(), "no store is created"
    return message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"run_id": "../../etc"}, "run_id must be an MLflow run id (32 hex digits), found '../../etc'"),
        ({"metrics": [["../../x", 1.0, 0, 1]]}, "metrics[0] key must be a metric name of letters, digits and _-. :/"),
        ({"status": "RUNNING"}, "status must be one of FINISHED, FAILED, KILLED, found 'RUNNING'"),
        ({"metrics": [["loss", float("inf"), 1, 1]]}, "metrics[0] value must be a finite number or NaN, found inf"),
        ({"metrics": [["loss", 0.5, 1, True]]}, "metrics[0] step must be an integer 0..9223372036854775807, found"),
        # MLflow refused these, and nnexp sync took the refusal for a store that does not answer, again and again:
        ({"metrics": [["loss", 0.5, 1, 2**63]]}, "metrics[0] step must be an integer 0..9223372036854775807"),
        ({"metrics": [["l" * 251, 0.5, 1, 1]]}, "metrics[0] key must be at most 250 characters"),
        ({"tags": {"a\nb": "x"}}, "tags.'a\\nb' must be a tag key of letters, digits and _-. :/"),
        ({"tags": {"k" * 300: "x"}}, f"tags.{'k' * 40}… must be at most 250 characters, found 300"),
        ({"tags": {"note": "v" * 8001}}, "tags.note must be at most 8000 characters, found 8001"),
        ({"metrics": [["loss", 0.5]]}, "metrics[0] must be [key, value, timestamp, step], found ['loss', 0.5]"),
        ({"metrics": {}}, "metrics must be a list of [key, value, timestamp, step], found {}"),
        ({"tags": {"epochs": 3}}, "tags.epochs must be a string, found 3"),
        ({"tags": {"mlflow.parentRunId": RUN_ID}}, "tags.mlflow.parentRunId must be a tag of nnexp's, not one of"),
        ({"tags": {"output_dir": "/tmp"}}, "tags.output_dir must be "),
        ({"artifacts": [["/etc/passwd", None]]}, "artifacts[0] must be a file inside "),
        ({"artifacts": [["../outside.txt", None]]}, "artifacts[0] must be a file inside "),
        ({"artifacts": [["config.yaml", "../../x"]]}, "artifacts[0] artifact path must be relative, without .., found"),
        ({"artifacts": [["config.yaml", "/abs"]]}, "artifacts[0] artifact path must be relative, without .., found"),
        ({"artifacts": [["gone.txt", None]]}, "artifacts[0] must be a file that exists, found"),
        ({"artifacts": [["config.yaml"]]}, "artifacts[0] must be [path, artifact_path], found ['config.yaml']"),
        ({"tracking_uri": None}, "tracking_uri must be a string, found None"),
        # The checkpoint reader refused these values, and an outbox sent them as the run's record:
        ({"metrics": [["train_loss", -4.0, 1, 8]]}, "metrics[0] value must be a finite number >= 0 or NaN, found -4.0"),
        ({"metrics": [["val_accuracy", 7.3, 1, 8]]}, "metrics[0] value must be a finite number >= 0 and <= 1 or NaN"),
        ({"metrics": [["best_val_accuracy", 1.5, 1, 8]]}, "metrics[0] value must be a finite number >= 0 and <= 1"),
        ({"metrics": [["system/epoch_seconds", -100.0, 1, 8]]}, "metrics[0] value must be a finite number >= 0 and"),
        ({"metrics": [["system/learning_rate", 0.0, 1, 8]]}, "metrics[0] value must be a rate > 0, found 0.0"),
        (
            {"metrics": [["train_loss", 0.5, 1, 8], ["train_loss", 0.25, 2, 8]]},
            "metrics[1] repeats train_loss at step 8, as metrics[0] does",
        ),
    ],
)
def test_a_crafted_outbox_field_is_named_and_nothing_is_sent(tmp_path, fields, expected):
    path = outbox(tmp_path, **fields)
    assert refusal(tmp_path).startswith(f"{path}: {expected}")


def test_an_outbox_that_is_a_list_or_lacks_a_field(tmp_path):
    path = tmp_path / OUTBOX
    path.write_text("[]")
    assert refusal(tmp_path) == f"{path}: the outbox must be an object, found []"
    outbox(tmp_path)
    path.write_text(json.dumps({key: value for key, value in json.loads(path.read_text()).items() if key != "run_id"}))
    assert refusal(tmp_path) == f"{path}: run_id is missing"


def test_symbolic_links_out_of_the_folder_are_refused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("not the run's")
    (folder / "link.txt").symlink_to(secret)
    path = outbox(folder, artifacts=[["link.txt", None]])
    expected = f"{path}: artifacts[0] must be a file inside {folder.resolve()}, found '{folder / 'link.txt'}'"
    assert refusal(folder) == expected
    plots = folder / "plots"
    plots.mkdir()
    (plots / "curve.png").write_bytes(b"png")
    (plots / "stolen.txt").symlink_to(secret)
    outbox(folder, artifacts=[[str(plots), "plots"]])
    assert "artifacts[0] must be a folder whose files are inside" in refusal(folder)
    (plots / "stolen.txt").unlink()
    model = folder / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "weights.npz").symlink_to(secret)
    outbox(folder, artifacts=[])
    assert refusal(folder).startswith(f"{path}: model must be a folder whose files are inside")


def test_a_folder_artifact_is_sent_file_by_file_without_partial_files(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "sub").mkdir(parents=True)
    for name in ("checkpoint.json", "checkpoint-e000001-b00000000.npz", ".checkpoint.0f0f0f0f.partial.json", "sub/x"):
        (checkpoints / name).write_text("x")
    found = artifact_files(Fields(tmp_path / OUTBOX), "artifacts[0]", checkpoints, tmp_path, "checkpoint")
    assert found == [
        (str(checkpoints.resolve() / "checkpoint-e000001-b00000000.npz"), "checkpoint"),
        (str(checkpoints.resolve() / "checkpoint.json"), "checkpoint"),
        (str(checkpoints.resolve() / "sub" / "x"), "checkpoint/sub"),
    ]


def nnexp_sync(project, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nnexp", "sync", str(folder)],
        cwd=project.root,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_crafted_outbox_sends_nothing_to_the_run_it_names_or_to_another(project, tmp_path):
    result = project.run("trainer.epochs=1")
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    client = MlflowClient(tracking_uri=project.store_uri)
    run_id, folder = run.info.run_id, Path(run.data.tags["output_dir"])
    before = sorted(entry.path for entry in client.list_artifacts(run_id))

    path = outbox(folder, tracking_uri=project.store_uri, run_id=run_id, artifacts=[["/etc/passwd", None]])
    synced = nnexp_sync(project, folder)
    assert (synced.returncode, synced.stderr.strip()) == (
        1,
        f"error: {path}: artifacts[0] must be a file inside {folder.resolve()}, found '/etc/passwd'",
    )

    other = tmp_path / "other_run"
    other.mkdir()
    path = outbox(other, tracking_uri=project.store_uri, run_id=run_id, status="FAILED")
    synced = nnexp_sync(project, other)
    assert (synced.returncode, synced.stderr.strip()) == (
        1,
        f"error: {path}: run_id {run_id} is the run of {folder.resolve()}, not of {other.resolve()}",
    )
    path = outbox(folder, tracking_uri=project.store_uri, run_id=run_id, status="KILLED", artifacts=[])
    synced = nnexp_sync(project, folder)  # a stale outbox of its own folder: the run was closed since
    assert (synced.returncode, synced.stderr.strip()) == (
        1,
        f"error: {path}: run {run_id} is already FINISHED, closed since this outbox was written; nothing to send "
        "(remove the outbox)",
    )
    path = outbox(other, tracking_uri=project.store_uri)
    synced = nnexp_sync(project, other)
    assert (synced.returncode, synced.stderr.strip()) == (
        1,
        f"error: {path}: run_id {RUN_ID} is no run in {project.store_uri}",
    )
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED"
    assert "resumed" not in after.data.tags
    assert [m.value for m in client.get_metric_history(run_id, "train_loss")] == [run.data.metrics["train_loss"]]
    assert sorted(entry.path for entry in client.list_artifacts(run_id)) == before


def test_files_nested_thousands_deep_are_one_line_naming_the_file(tmp_path):
    from nnexp.job import checkpoint
    from nnexp.network_files import NetworkSpec

    deep = "[" * 200_000 + "]" * 200_000  # Python's JSON parser recurses, and would raise RecursionError
    (tmp_path / "mlflow_outbox.json").write_text(deep)
    (tmp_path / "checkpoint.json").write_text(deep)
    with pytest.raises(NnexpError, match=r"mlflow_outbox.json: not a readable outbox: maximum recursion depth"):
        sync(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(NnexpError, match=r"checkpoint.json: not a readable checkpoint manifest: maximum recursion"):
        checkpoint.load(tmp_path)
    with pytest.raises(NnexpError, match=r"^network.json: not an nnexp network description: maximum recursion"):
        NetworkSpec.from_json(deep, "network.json")


def test_an_outbox_for_a_run_deleted_in_mlflow_says_so(tmp_path):
    """MLflow refused every request for it, which nnexp sync reported as a store that does not answer."""
    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.client.delete_run(run_id)
    path = outbox(tmp_path, tracking_uri=uri, run_id=run_id)
    with pytest.raises(NnexpError) as refused:
        sync(tmp_path)
    restore = f"mlflow runs restore --run-id {run_id}"
    assert str(refused.value) == f"{path}: run {run_id} is deleted in {uri}; restore it first with: {restore}"
    assert path.is_file()


def run_of_epochs(tmp_path: Path, epochs: int) -> tuple[MlflowClient, str, str, Path]:
    """A new store in ``tmp_path`` with one RUNNING run of ``trainer.epochs=epochs`` and its folder; returns the
    client, the store's URI, the run id and the folder."""
    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    folder = tmp_path / "run"
    folder.mkdir()
    run_id = tracker.client.create_run(tracker.experiment_id, tags={"output_dir": str(folder)}).info.run_id
    tracker.client.log_param(run_id, "trainer.epochs", str(epochs))
    return tracker.client, uri, run_id, folder


def keep_model(folder: Path) -> None:
    """What a run that finished training keeps in its folder: ``model.npz`` and its MLflow model."""
    from test_serving import inputs, trained_like

    from nnexp.network_files import describe
    from nnexp.serving import save_model

    network, loss = trained_like("cross_entropy")
    network.save(folder / "model.npz")
    save_model(folder / "model", network, describe(network, loss, list("abcd")), inputs())


def killed_mid_training(tmp_path: Path, *outbox_metrics: list, model: bool = False) -> tuple[MlflowClient, str, Path]:
    """A run of trainer.epochs=5 whose store holds epochs 1 and 2, and whose outbox says FINISHED with
    ``outbox_metrics`` (and in its folder what a finished run keeps, when ``model``); returns the client, run id
    and folder."""
    client, uri, run_id, folder = run_of_epochs(tmp_path, 5)
    for epoch in (1, 2):
        client.log_metric(run_id, "train_loss", 0.5, step=epoch)
        client.log_metric(run_id, "train_accuracy", 0.75, step=epoch)
    if model:
        keep_model(folder)
    outbox(folder, tracking_uri=uri, run_id=run_id, metrics=[list(row) for row in outbox_metrics])
    return client, run_id, folder


EPOCH_3 = ["train_loss", 0.4, 1700000000000, 3]
TESTED_AT_3 = ["test_accuracy", 0.9, 1700000000000, 3]


def epoch(step: int) -> tuple[list, ...]:
    """The rows a run logs every epoch (here, those the fixtures' store holds for epochs 1 and 2)."""
    return [*EPOCH_3[:3], step], ["train_accuracy", 0.8, 1700000000000, step]


def evaluated(step: int) -> tuple[list, ...]:
    """The rows a run logs once trained, at its last epoch."""
    return ["test_loss", 0.3, 1700000000000, step], [*TESTED_AT_3[:3], step]



@pytest.mark.parametrize(
    ("metrics", "model", "why"),
    [
        ((EPOCH_3,), False, "{folder} holds no model.npz and its last epoch logged is 3 of trainer.epochs=5"),
        ((EPOCH_3,), True, "no test metrics are logged and its last epoch logged is 3 of trainer.epochs=5"),
        (
            (*epoch(3), *evaluated(3)),
            True,
            "its last epoch logged is 3 of trainer.epochs=5, and no early stopping ended it",
        ),
        ((EPOCH_3, *evaluated(3)), True, "train_accuracy is logged at no epoch 3 of the 3 it trained"),
    ],
    ids=["no-model", "no-test-metrics", "short-of-the-epochs", "an-epoch-without-accuracy"],
)
def test_an_outbox_claiming_finished_for_a_run_killed_mid_training_closes_it_killed(tmp_path, metrics, model, why):
    """It was closed FINISHED: a run stopped at epoch 3 of 5, with no model, recorded as a finished one."""
    client, run_id, folder = killed_mid_training(tmp_path, *metrics, model=model)
    path = folder / OUTBOX
    with pytest.raises(NnexpError) as raised:
        sync(folder)
    reason = f"{path}: status FINISHED, but {why.format(folder=folder.resolve())}"
    logged = ", the model" if model else ""  # a run killed while its store was away keeps what it saved
    assert str(raised.value).startswith(f"{reason}; sent {len(metrics)} metric values, 1 tags, 1 artifacts{logged} to ")
    assert str(raised.value).endswith(f" and closed run {run_id} KILLED")
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["failure_reason"]) == ("KILLED", reason)
    assert sorted(metric.step for metric in client.get_metric_history(run_id, "train_loss")) == [1, 2, 3]
    assert not path.exists()


@pytest.mark.parametrize(
    "metrics",
    [
        (*epoch(3), *evaluated(3), ["best_epoch", 2, 1700000000000, 3]),  # early stopping ended it at epoch 3
        (*epoch(3), *epoch(4), *epoch(5), *evaluated(5)),
    ],
    ids=["early-stopping", "all-epochs"],
)
def test_an_outbox_of_a_run_that_finished_training_closes_it_finished(tmp_path, metrics):
    client, run_id, folder = killed_mid_training(tmp_path, *metrics, model=True)
    assert sync(folder).endswith("status FINISHED")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags


def test_nnexp_sync_of_a_false_finished_is_one_line_and_exit_1(project, tmp_path):
    _, run_id, folder = killed_mid_training(tmp_path, EPOCH_3)
    synced = nnexp_sync(project, folder)
    assert synced.returncode == 1 and synced.stdout == ""
    [line] = synced.stderr.splitlines()
    assert line.startswith(f"error: {folder / OUTBOX}: status FINISHED, but {folder.resolve()} holds no model.npz")
    assert line.endswith(f"closed run {run_id} KILLED")


def dead_run_with_a_lost_artifact(tmp_path: Path) -> tuple[MlflowClient, str, Path]:
    """A RUNNING run whose process has ended, and an outbox in its folder naming an artifact deleted since."""
    from test_liveness import ended_pid

    from nnexp.tracking import liveness
    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    folder = tmp_path / "run"
    folder.mkdir()
    tags = {**liveness.process_tags(), liveness.PID: str(ended_pid()), "output_dir": str(folder)}
    run_id = tracker.client.create_run(tracker.experiment_id, tags=tags).info.run_id
    outbox(folder, tracking_uri=uri, run_id=run_id, artifacts=[["config.yaml", None], ["plot.png", None]])
    return tracker.client, run_id, folder


def test_an_outbox_refused_for_a_lost_artifact_still_marks_its_dead_run_killed(tmp_path):
    """The artifacts were checked before the run was looked at, and the dead run was left RUNNING."""
    from nnexp.tracking.liveness import REASON

    client, run_id, folder = dead_run_with_a_lost_artifact(tmp_path)
    with pytest.raises(NnexpError) as refused:
        sync(folder)
    assert str(refused.value) == (
        f"{folder / OUTBOX}: artifacts[1] must be a file that exists, found '{folder / 'plot.png'}'"
    )
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["failure_reason"]) == ("KILLED", REASON)
    assert run.data.metrics == {} and client.list_artifacts(run_id) == [] and "resumed" not in run.data.tags
    assert (folder / OUTBOX).is_file()


def test_nnexp_sync_of_a_dead_run_with_a_lost_artifact_is_one_line_and_the_run_killed(project, tmp_path):
    client, run_id, folder = dead_run_with_a_lost_artifact(tmp_path)
    synced = nnexp_sync(project, folder)
    assert (synced.returncode, synced.stdout) == (1, "")
    assert len(synced.stderr.splitlines()) == 2, synced.stderr
    [note, error] = synced.stderr.splitlines()
    assert note.startswith("run ") and f"({run_id}) marked KILLED: process " in note and note.endswith(" has ended")
    assert error == f"error: {folder / OUTBOX}: artifacts[1] must be a file that exists, found '{folder / 'plot.png'}'"
    assert client.get_run(run_id).info.status == "KILLED"


def finished_outbox(tmp_path: Path) -> tuple[MlflowClient, str, Path]:
    """A run of one epoch whose store was away when it finished: its outbox says FINISHED; returns the client, run
    id and the outbox's path."""
    client, uri, run_id, folder = run_of_epochs(tmp_path, 1)
    keep_model(folder)
    metrics = [*epoch(1), *evaluated(1)]
    return client, run_id, outbox(folder, tracking_uri=uri, run_id=run_id, metrics=metrics)


def read_only(path: Path) -> OSError:
    return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


def test_nnexp_sync_on_a_read_only_mount_keeps_the_outbox_as_it_was_and_says_so(tmp_path, monkeypatch, caplog):
    """The store and the run folder on one mount, read-only: the line was a running run's (a warning that training
    goes on, then "… the outbox cannot be kept either …; run … stays RUNNING (nnexp runs marks it KILLED once this
    process ends) …"), though nothing trained."""
    import sqlite3

    from nnexp import atomic
    from nnexp.tracking import tracked_run

    client, run_id, path = finished_outbox(tmp_path)
    kept = path.read_text()

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    def unwritable(target, *args, **kwargs):
        raise read_only(target)

    monkeypatch.setattr(MlflowClient, "log_batch", refuse)
    monkeypatch.setattr(atomic, "replacing", unwritable)
    monkeypatch.setattr(tracked_run, "END_PAUSE_SECONDS", 0.0)
    with pytest.raises(NnexpError) as refused:
        sync(path.parent)
    assert str(refused.value) == (
        f"tracking store sqlite:///{tmp_path / 'mlflow.db'} refused what was sent (attempt to write a readonly "
        f"database), and {path.parent} cannot be written (Read-only file system): the outbox is kept as it was; "
        f"send it again with: nnexp sync {path.parent} once both take writes"
    )
    assert "training goes on" not in caplog.text
    assert path.read_text() == kept
    assert client.get_run(run_id).info.status == "RUNNING"


def test_nnexp_sync_of_a_run_folder_mounted_read_only_sends_all_and_says_the_outbox_stays(tmp_path, monkeypatch):
    """The outbox could not be removed once all was sent: an OSError traceback, exit 1, the run FINISHED."""
    client, run_id, path = finished_outbox(tmp_path)
    unlink = Path.unlink

    def unlink_here(self, *args, **kwargs):
        if self == path:
            raise read_only(self)
        unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink_here)
    sent = sync(path.parent)
    assert sent.endswith(
        f"status FINISHED; {path} could not be removed (Read-only file system) and holds nothing more to send: "
        "remove it once its folder is writable"
    )
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("metrics", "tags", "expected"),
    [
        (
            [["train_loss", 123.0, 1700000000000, 1]],
            {},
            "metrics[0] value must be 0.5, the value run {run_id} records at step 1 (an outbox only adds to a run), "
            "found 123.0",
        ),
        (
            [EPOCH_3],
            {"dataset": "quadrants"},
            "tags.dataset must be 'moons', as run {run_id} records it (an outbox only adds to a run), "
            "found 'quadrants'",
        ),
    ],
    ids=["another-value-at-a-logged-step", "another-value-of-a-tag"],
)
def test_an_outbox_that_would_change_the_runs_record_sends_nothing(tmp_path, metrics, tags, expected):
    """Sent before: a second train_loss at step 1, and a moons run's dataset tag rewritten to quadrants."""
    client, run_id, folder = killed_mid_training(tmp_path, *metrics, model=True)
    client.set_tag(run_id, "dataset", "moons")
    outbox(folder, tracking_uri=client.tracking_uri, run_id=run_id, metrics=metrics, tags=tags)
    with pytest.raises(NnexpError) as refused:
        sync(folder)
    assert str(refused.value) == f"{folder / OUTBOX}: {expected.format(run_id=run_id)}"
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["dataset"] == "moons"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")] == [(1, 0.5), (2, 0.5)]
    assert (folder / OUTBOX).is_file()


def test_an_outbox_row_the_store_already_holds_is_not_sent_twice(tmp_path):
    rows = [["train_loss", 0.5, 1700000000000, 2], EPOCH_3]
    client, run_id, folder = killed_mid_training(tmp_path)
    outbox(folder, tracking_uri=client.tracking_uri, run_id=run_id, metrics=rows, status="KILLED")
    assert "sent 1 metric values" in sync(folder)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [1, 2, 3]


@pytest.mark.parametrize("status", ["KILLED", "FAILED"])
def test_a_failed_outbox_without_a_reason_keeps_the_reason_the_store_recorded(tmp_path, status):
    """Sync deleted the reason nnexp runs had given the dead run, and the run was KILLED without any."""
    from nnexp.tracking.liveness import REASON

    client, run_id, folder = dead_run_with_a_lost_artifact(tmp_path)
    outbox(folder, tracking_uri=client.tracking_uri, run_id=run_id, status=status, tags={})
    assert sync(folder).endswith(f"status {status}")
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["failure_reason"]) == (status, REASON)


def test_a_killed_outbox_without_a_reason_gives_the_run_one(tmp_path):
    from nnexp.tracking.liveness import REASON

    client, run_id, folder = killed_mid_training(tmp_path)
    outbox(folder, tracking_uri=client.tracking_uri, run_id=run_id, status="KILLED", metrics=[], tags={})
    sync(folder)
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["failure_reason"]) == ("KILLED", REASON)


T = 1700000000000


@pytest.mark.parametrize(
    ("rows", "val_size", "expected"),
    [
        ([["train_loss", 0.5, T, 0]], None, "metrics[0]: train_loss step must be an epoch 1..5 (trainer.epochs of run"),
        (
            [["train_loss", 0.5, T, 3], ["train_loss", 0.5, T, 10**12]],
            None,
            "metrics[1]: train_loss step must be an epoch 1..5 (trainer.epochs of run {run_id}), found 1000000000000",
        ),
        ([["val_loss", 0.3, T, 3]], "0.0", "metrics[0]: val_loss is logged only by a run with a validation split"),
        # No dataset.val_size: the store's epochs 1 and 2 came without validation metrics.
        ([["val_accuracy", 0.7, T, 3]], None, "metrics[0]: val_accuracy is logged only by a run with a validation"),
        (
            [*epoch(3), ["test_accuracy", 0.9, T, 0]],
            None,
            "metrics[2]: test_accuracy step must be 3, the last epoch of run {run_id} (its last train_loss step), "
            "where nnexp logs test_accuracy, found 0",
        ),
        ([["system/run_seconds", 4.0, T, 7]], None, "metrics[0]: system/run_seconds step must be 2, the last epoch"),
        (
            [["train_loss", 0.5, T, 4]],
            None,
            "metrics[0]: train_loss at epoch 4 follows no value at epoch 3, neither in the outbox nor in run {run_id}",
        ),
    ],
    ids=["step-0", "step-past-the-epochs", "val-without-split", "val-without-split-by-record", "test-not-at-last",
         "system-not-at-last", "gap"],
)
def test_an_outbox_step_the_run_never_logs_is_refused_and_nothing_sent(tmp_path, rows, val_size, expected):
    """Accepted before: train_loss at steps 0 and 10**12 of a 5-epoch run, val_loss of a run without validation."""
    client, run_id, folder = killed_mid_training(tmp_path)
    if val_size is not None:
        client.log_param(run_id, "dataset.val_size", val_size)
    path = outbox(folder, tracking_uri=client.tracking_uri, run_id=run_id, metrics=rows, status="KILLED")
    with pytest.raises(NnexpError) as refused:
        sync(folder)
    assert str(refused.value).startswith(f"{path}: {expected.format(run_id=run_id)}")
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and "resumed" not in run.data.tags
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [1, 2]
    assert set(run.data.metrics) == {"train_loss", "train_accuracy"} and path.is_file()


def test_the_steps_a_run_logs_are_taken(tmp_path):
    client, run_id, folder = killed_mid_training(tmp_path)
    client.log_param(run_id, "dataset.val_size", "0.2")
    client.log_metric(run_id, "val_loss", 0.4, step=1)
    rows = [*epoch(3), ["val_loss", 0.3, T, 3], ["system/epoch_seconds", 0.1, T, 3], ["best_epoch", 3, T, 3]]
    outbox(folder, tracking_uri=client.tracking_uri, run_id=run_id, metrics=rows, status="KILLED")
    assert "sent 5 metric values" in sync(folder)
    assert client.get_run(run_id).info.status == "KILLED"


def test_a_finished_outbox_of_a_folder_without_its_mlflow_model_closes_the_run_killed(tmp_path):
    """Closed FINISHED before, with model.npz copied in: a finished run that nnexp predict says logged no model."""
    client, run_id, folder = killed_mid_training(tmp_path, *epoch(3), *epoch(4), *epoch(5), *evaluated(5))
    keep_model(folder)
    shutil.rmtree(folder / "model")
    with pytest.raises(NnexpError) as raised:
        sync(folder)
    reason = f"{folder / OUTBOX}: status FINISHED, but {folder.resolve()} holds no model/MLmodel, run {run_id} logged"
    assert str(raised.value).startswith(f"{reason} no model, and its last epoch logged is 5 of trainer.epochs=5; ")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"].startswith(reason)


def test_a_finished_outbox_of_a_run_whose_model_is_logged_closes_it_finished(tmp_path):
    from nnexp.serving import upload_model

    client, run_id, folder = killed_mid_training(tmp_path, *epoch(3), *epoch(4), *epoch(5), *evaluated(5))
    keep_model(folder)
    upload_model(client, run_id, folder / "model", 5)
    shutil.rmtree(folder / "model")
    assert sync(folder).endswith("status FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_model_folder_nnexp_predict_would_refuse_is_not_sent(tmp_path):
    """Uploaded before: an MLmodel whose data is another run's model folder, refused by nnexp predict once logged."""
    client, run_id, folder = killed_mid_training(tmp_path, *epoch(3), *epoch(4), *epoch(5), *evaluated(5), model=True)
    other = tmp_path / "other" / "model" / "data" / "nnexp"
    meta = folder / "model" / "MLmodel"
    meta.write_text(meta.read_text().replace("data: data/nnexp", f"data: {other}"))
    with pytest.raises(NnexpError) as refused:
        sync(folder)
    assert str(refused.value) == (
        f"{meta}: flavors.python_function.data must be a relative path inside the model folder, found '{other}'"
    )
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and set(run.data.metrics) == {"train_loss", "train_accuracy"}
    assert client.list_artifacts(run_id) == [] and (folder / OUTBOX).is_file()


def test_nnexp_sync_of_a_crafted_finished_outbox_is_one_line_and_sends_nothing(project, tmp_path):
    """A run killed at epoch 2 of 5, model.npz copied in, an outbox saying FINISHED with epoch 5 and the test
    metrics: closed FINISHED before, with no logged model and epochs 3 and 4 missing from its history."""
    client, run_id, folder = killed_mid_training(tmp_path, *epoch(5), *evaluated(5))
    (folder / "model.npz").write_bytes(b"")
    synced = nnexp_sync(project, folder)
    assert (synced.returncode, synced.stdout) == (1, "")
    assert synced.stderr.splitlines() == [
        f"error: {folder / OUTBOX}: metrics[0]: train_loss at epoch 5 follows no value at epoch 3, neither in the "
        f"outbox nor in run {run_id}"
    ]
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and set(run.data.metrics) == {"train_loss", "train_accuracy"}
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [1, 2]
    assert (folder / OUTBOX).is_file()


def test_a_finished_outbox_of_a_run_without_trainer_epochs_is_still_checked_for_gaps(tmp_path):
    """A run without trainer.epochs has no bound on its steps; its history must still hold every epoch."""
    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    folder = tmp_path / "run"
    folder.mkdir()
    keep_model(folder)
    run_id = tracker.client.create_run(tracker.experiment_id, tags={"output_dir": str(folder)}).info.run_id
    outbox(folder, tracking_uri=uri, run_id=run_id, metrics=[*epoch(1), *epoch(10**12), *evaluated(10**12)])
    with pytest.raises(NnexpError, match=r"status FINISHED, but train_loss is logged at no epoch 2 of the 10+ it"):
        sync(folder)
    assert tracker.client.get_run(run_id).info.status == "KILLED"
