"""``nnexp ui``: MLflow's UI on the project's store, and the addresses nnexp prints, in the Model training view."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request

VIEW = "?workflowType=machine_learning"


def test_a_runs_last_line_and_nnexp_ui_give_the_model_training_view(project):
    trained = project.run("trainer.epochs=1")
    assert trained.returncode == 0, trained.stderr
    [run] = project.runs()
    page = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}{VIEW}"
    assert trained.stdout.strip().splitlines()[-1].endswith(f"; see it with: nnexp ui, then {page}")

    ui, port = project.start_ui()
    try:
        first = ui.stdout.readline().strip()
        assert first == (
            f"open http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}{VIEW} (Ctrl-C stops the UI)"
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)


def test_nnexp_ui_without_a_store_says_so_and_makes_none(project):
    result = project.run("ui")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: no MLflow store at ")
    assert not (project.root / "outputs").exists()


def test_nnexp_ui_on_a_port_in_use_says_so_before_giving_an_address(project):
    """mlflow ui logged "Address already in use" and exited 0, after nnexp had printed where to open it."""
    assert project.run("trainer.epochs=1").returncode == 0
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = project.run("ui", "--port", str(port))
    assert (result.returncode, result.stdout) == (1, "")
    refused = f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"
    assert result.stderr.strip() == refused


def test_nnexp_ui_sweep_opens_the_sweeps_children_in_its_saved_view(project):
    result = project.run("-m", "optimizer.learning_rate=0.1,0.01", "trainer.epochs=1", "dataset.n_samples=100")
    assert result.returncode == 0, result.stderr
    [parent] = [run for run in project.runs() if run.data.tags.get("nnexp_command") == "sweep"]
    ui, port = project.start_ui("--sweep", "last")
    try:
        first = ui.stdout.readline().strip()
    finally:
        # SIGKILL: `mlflow ui`, still starting, outlives a SIGTERM and goes on to start its workers.
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait(timeout=60)
    page = f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}/runs"
    view = f"?viewStateShareKey={parent.info.run_id}&workflowType=machine_learning"
    assert first == f"open {page}{view} (Ctrl-C stops the UI)"

    # A run that is no sweep (here a child of one) has no such view.
    child = next(run for run in project.runs() if run.info.run_id != parent.info.run_id)
    refused = project.run("ui", "--sweep", child.info.run_id)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.strip() == (
        f"error: --sweep {child.info.run_id}: experiment 'nnexp' has no view of run {child.info.run_id}'s children "
        "(a sweep saves one when it ends)"
    )
