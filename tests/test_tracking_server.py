"""A sweep through the real CLI against a real ``mlflow server``, as a team shares one."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nnexp.errors import ConfigError
from nnexp.tracking.store import check_store

SWEEP = ("-m", "model=two_layer,deep_sigmoid", "trainer.epochs=2")
STARTUP_SECONDS = 90


@dataclass
class Server:
    uri: str
    artifacts: Path


def free_port() -> int:
    """A port nothing listens on now; the caller binds it soon after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL; the server's workers share its process group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # any worker left behind


def start_server(root: Path, port: int | None = None) -> tuple[Server, subprocess.Popen[bytes]]:
    """``mlflow server`` with a SQLite backend and a proxied artifact store in ``root``, once it answers."""
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{root / 'server.db'}"]
    command += ["--artifacts-destination", str(root / "artifacts")]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    log = root / "server.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return Server(uri, root / "artifacts"), process
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"mlflow server did not answer within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server shared by the tests that only read and write runs."""
    running, process = start_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield running
    finally:
        stop(process)


def run_sweep(project, uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nnexp", *SWEEP],
        cwd=project.root,
        env={**project.env(), "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sweep_records_parent_children_metrics_and_artifacts_on_the_server(project, server):
    result = run_sweep(project, server.uri)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("nnexp")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [run for run in runs if run.data.tags.get("nnexp_command") == "sweep"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and [run.info.status for run in children] == ["FINISHED"] * 2
    assert {run.data.tags["model"] for run in children} == {"two_layer", "deep_sigmoid"}
    for child in children:
        run_id = child.info.run_id
        assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
        listed = {entry.path: entry.is_dir for entry in client.list_artifacts(run_id)}
        assert listed.get("model.npz") is False and listed.get("config.yaml") is False and listed.get("plots")
    assert {entry.path for entry in client.list_artifacts(parent.info.run_id, "summary")} >= {
        "summary/children.csv",
        "summary/children.md",
        "summary/comparison.png",
    }
    assert client.get_run(parent.info.run_id).data.metrics["jobs_finished"] == 2
    # The run's line names its page on the server, and MLflow's own "View run" lines stay out of the way.
    for child in children:
        page = f"see it at {server.uri}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}"
        page += "?workflowType=machine_learning"  # else MLflow 3 opens the GenAI view
        assert page in result.stdout
    assert "View run" not in result.stdout
    # The sweep's view of its children is saved on the server, and its last line opens it there.
    assert f"mlflow.sharedViewState.{parent.info.run_id}" in client.get_experiment(experiment.experiment_id).tags
    view = f"runs?viewStateShareKey={parent.info.run_id}&workflowType=machine_learning"
    last = f"sweep {parent.info.run_id}: see it at {server.uri}/#/experiments/{experiment.experiment_id}/{view}"
    assert result.stdout.strip().splitlines()[-1] == last
    for run in [parent, *children]:  # proxied by the server into its --artifacts-destination
        scheme, _, location = run.info.artifact_uri.partition(":")
        assert scheme == "mlflow-artifacts", run.info.artifact_uri
        stored = server.artifacts / location.lstrip("/")
        expected = ["summary/children.csv"] if run is parent else ["model.npz", "plots/learning_curves.png"]
        assert all((stored / name).is_file() for name in expected), sorted(stored.rglob("*"))
    assert not (project.root / "outputs" / "mlartifacts").exists()
    assert not (project.root / "outputs" / "mlflow.db").exists()


def test_sweep_against_a_server_that_does_not_answer_fails_in_one_line(project):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_sweep(project, uri)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: tracking server {uri} is unreachable: "), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (project.root / "outputs").exists()  # no sweep folder, and no local store to fall back to


def test_a_server_that_is_not_mlflow_is_named_with_its_answer():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), NotFound) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{other.server_port}"
        with pytest.raises(ConfigError) as raised:
            check_store(uri)
        other.shutdown()
    assert str(raised.value) == (
        f"tracking server {uri} answered GET /health with 404 Not Found; is it an MLflow server?"
    )


def test_a_server_that_goes_away_mid_run_loses_nothing(project, tmp_path):
    """Training goes on without the store; what it missed is kept in the run's folder and sent by nnexp sync."""
    root = tmp_path / "server"
    root.mkdir()
    server, process = start_server(root)
    port = int(server.uri.rsplit(":", 1)[1])
    run = subprocess.Popen(
        [sys.executable, "-m", "nnexp", "trainer.epochs=12", "trainer.batch_size=1", "checkpoint.every=1"],
        cwd=project.root,
        env={**project.env(), "MLFLOW_TRACKING_URI": server.uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((project.root / "outputs").glob("*/*/checkpoints/*.json")):
            time.sleep(0.1)
        stop(process)  # the server goes away after the first epoch
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, stderr
    assert "does not answer" in stdout  # said when it happened; training went on
    [folder] = [path.parent for path in (project.root / "outputs").glob("*/*/mlflow_outbox.json")]
    assert (folder / "model.npz").is_file(), "training finished without the store"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking store {server.uri} stopped answering; run ")
    assert last.endswith(f"are kept in {folder / 'mlflow_outbox.json'}; send them with: nnexp sync {folder}")

    server, process = start_server(root, port)  # the store comes back
    try:
        synced = subprocess.run(
            [sys.executable, "-m", "nnexp", "sync", str(folder)],
            env=project.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert synced.returncode == 0, synced.stderr
        assert not (folder / "mlflow_outbox.json").exists()
        client = MlflowClient(tracking_uri=server.uri)
        [finished] = client.search_runs([client.get_experiment_by_name("nnexp").experiment_id])
        assert finished.info.status == "FINISHED"
        assert synced.stdout.startswith(f"run {finished.info.run_id}: sent ")
        assert [m.step for m in client.get_metric_history(finished.info.run_id, "train_loss")] == list(range(1, 13))
        assert "test_accuracy" in finished.data.metrics
        assert {"model.npz", "config.yaml"} <= {entry.path for entry in client.list_artifacts(finished.info.run_id)}
    finally:
        stop(process)
