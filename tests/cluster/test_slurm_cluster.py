"""Sweeps on a real single-node SLURM cluster (tests/cluster/slurm.sh) into an ``mlflow server`` on PostgreSQL:
the job array, its logs, its runs and artifacts, a cancelled job, and a job that outlives its time limit through
requeues."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

#: Small jobs: one core each (two run at once on a 2-core machine), little memory, a short moons training.
JOB = ("hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1")
QUICK = ("trainer.epochs=3", "dataset.n_samples=300")
EPOCH_METRICS = ("train_loss", "train_accuracy")


def start_sweep(project, slurm, server, *overrides: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nnexp", "-m", *JOB, f"tracking.uri={server.uri}", *overrides],
        cwd=project.root,
        env=slurm.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def queue(slurm) -> list[tuple[str, str, str]]:
    """(array job id, task id, state) of each job SLURM holds, array tasks one per line."""
    lines = slurm.run("squeue", "--array", "--noheader", "--format=%F %K %T").splitlines()
    return [tuple(line.split()) for line in lines]


def wait_for(sweep: subprocess.Popen[str], timeout: float = 400) -> tuple[str, str]:
    try:
        return sweep.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        sweep.kill()
        stdout, stderr = sweep.communicate()
        pytest.fail(f"the sweep did not end within {timeout} s:\n{stdout[-2000:]}\n{stderr[-3000:]}")


def sweep_runs(server) -> tuple:
    """The newest sweep's parent run and its children, by job number."""
    client = MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("nnexp")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(run for run in runs if run.data.tags.get("nnexp_command") == "sweep")
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, sorted(children, key=lambda run: int(run.data.tags["job_num"]))


def stored_artifacts(server, run) -> set[str]:
    """The files of ``run`` in the server's ``--artifacts-destination``, relative to the run's artifact root."""
    scheme, _, location = run.info.artifact_uri.partition(":")
    assert scheme == "mlflow-artifacts", run.info.artifact_uri
    root = server.artifacts / location.lstrip("/")
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def test_sweep_runs_as_a_job_array_into_the_postgres_server(project, slurm, pg_server, timings):
    started = time.monotonic()
    sweep = start_sweep(project, slurm, pg_server, "model=two_layer,deep_sigmoid", "seed=1,2,3", *QUICK)
    seen: set[tuple[str, str, str]] = set()
    while sweep.poll() is None and time.monotonic() - started < 400:
        seen.update(queue(slurm))
        time.sleep(0.5)
    _, stderr = wait_for(sweep)
    timings["sweep of 6 jobs (s)"] = time.monotonic() - started
    assert sweep.returncode == 0, stderr[-3000:]

    # One array of six tasks, up to two running at once (2 cores, one per job).
    assert len({array for array, _, _ in seen}) == 1, seen
    assert {task for _, task, _ in seen} == {str(task) for task in range(6)}, seen
    assert "RUNNING" in {state for _, _, state in seen}

    client, parent, children = sweep_runs(pg_server)
    assert parent.info.status == "FINISHED" and parent.data.tags["launcher"] == "slurm"
    assert [run.info.status for run in children] == ["FINISHED"] * 6
    assert [(run.data.tags["model"], run.data.params["seed"]) for run in children] == [
        (model, str(seed)) for model in ("two_layer", "deep_sigmoid") for seed in (1, 2, 3)
    ]
    assert parent.data.metrics["jobs_finished"] == 6 and parent.data.metrics["jobs_failed"] == 0
    for run in children:
        for name in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2, 3], name
        assert run.data.tags["blas_threads"] == "1", "cpus_per_task=1 reached the job's BLAS"
        stored = stored_artifacts(pg_server, run)
        assert {"model.npz", "config.yaml", "plots/learning_curves.png"} <= stored, sorted(stored)
        assert any(path.startswith("model/") for path in stored), sorted(stored)
    assert "summary/children.csv" in stored_artifacts(pg_server, parent)

    # Each job's stdout and stderr are kept under the sweep's folder, named by array job and task.
    sweep_dir = Path(parent.data.tags["sweep_dir"])
    [array] = {array for array, _, _ in seen}
    for task in range(6):
        logs = sorted(path.name for path in sweep_dir.rglob(f"{array}_{task}_*"))
        assert f"{array}_{task}_0_log.out" in logs and f"{array}_{task}_0_log.err" in logs, logs
    assert "test_accuracy=" in (sweep_dir / ".submitit" / f"{array}_0" / f"{array}_0_0_log.err").read_text()
