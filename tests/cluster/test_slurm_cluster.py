"""Sweeps on a real single-node SLURM cluster (tests/cluster/slurm.sh) into an ``mlflow server`` on PostgreSQL:
the job array, its logs, its runs and artifacts, a cancelled job, and a job that outlives its time limit through
requeues."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

#: Small jobs: one core each (two run at once on a 2-core machine), little memory, a short moons training.
JOB = ("hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1")
QUICK = ("trainer.epochs=3", "dataset.n_samples=300")
EPOCH_METRICS = ("train_loss", "train_accuracy")
#: One cluster and one server for the session: under pytest-xdist (``--dist loadgroup``) all on one worker.
pytestmark = pytest.mark.xdist_group("cluster")


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
    assert "summary/children.csv" in stored_artifacts(pg_server, parent)
    # Each child's MLflow model (MLflow 3 keeps logged models beside the runs, under models/).
    models = client.search_logged_models(experiment_ids=[parent.info.experiment_id])
    assert {model.source_run_id for model in models} >= {run.info.run_id for run in children}
    for model in models:
        folder = pg_server.artifacts / model.artifact_location.partition(":")[2].lstrip("/")
        assert (folder / "MLmodel").is_file() and list(folder.rglob("*.npz")), sorted(folder.rglob("*"))

    # Each job's stdout and stderr are kept under the sweep's folder, named by array job and task.
    sweep_dir = Path(parent.data.tags["sweep_dir"])
    [array] = {array for array, _, _ in seen}
    for task in range(6):
        logs = sorted(path.name for path in sweep_dir.rglob(f"{array}_{task}_*"))
        assert f"{array}_{task}_0_log.out" in logs and f"{array}_{task}_0_log.err" in logs, logs
    assert "test_accuracy=" in (sweep_dir / ".submitit" / f"{array}_0" / f"{array}_0_0_log.out").read_text()


def wait_until(condition, sweep: subprocess.Popen[str], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if sweep.poll() is not None:
            pytest.fail(f"{what}: the sweep ended with {sweep.returncode}:\n{sweep.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        time.sleep(0.3)


def running_tasks(slurm) -> list[tuple[str, str]]:
    return [(array, task) for array, task, state in queue(slurm) if state == "RUNNING"]


def test_a_cancelled_job_is_a_killed_child_counted_by_the_summary(project, slurm, pg_server):
    # Job 1 trains long enough to be cancelled while it trains; the others are quick.
    sweep = start_sweep(
        project, slurm, pg_server, "trainer.epochs=3,400", "dataset.n_samples=300", "checkpoint.every=1"
    )
    job_dirs = project.root / "outputs" / "multirun"
    wait_until(lambda: list(job_dirs.glob("*/*/1/checkpoints/*.json")), sweep, 300, "job 1 did not start training")
    [(array, _)] = [(array, task) for array, task in running_tasks(slurm) if task == "1"]
    slurm.run("scancel", f"{array}_1")
    _, stderr = wait_for(sweep)
    assert sweep.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        "error: 1 of 2 jobs failed; the table above and their MLflow runs give the reasons"
    )
    _, parent, children = sweep_runs(pg_server)
    assert [run.info.status for run in children] == ["FINISHED", "KILLED"]
    reason = children[1].data.tags["failure_reason"]
    assert reason.startswith("interrupted (SIGTERM) in epoch ") and "; checkpoint in " in reason, reason
    assert parent.info.status == "FINISHED"
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (1, 1)


def job_process(slurm, job: str) -> int:
    """The pid of the Python process running job ``job`` on the node."""
    listed = slurm.run("scontrol", "listpids", job).splitlines()[1:]
    for pid in (line.split()[0] for line in listed):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if Path(command[0].decode()).name.startswith("python") and b"submitit.core._submit" in command:
                return int(pid)  # not srun, whose arguments name the same module
    pytest.fail(f"no Python process in job {job}: {listed}")


def test_a_job_killed_on_the_node_ends_the_sweep_instead_of_hanging_it(project, slurm, pg_server):
    quick = ("trainer.epochs=400", "dataset.n_samples=300", "seed=1", "checkpoint.every=1")
    sweep = start_sweep(project, slurm, pg_server, *quick)
    job_dirs = project.root / "outputs" / "multirun"
    try:
        started = lambda: list(job_dirs.glob("*/*/0/checkpoints/*.json"))  # noqa: E731
        wait_until(started, sweep, 300, "the job did not start training")
        [job] = slurm.run("squeue", "--noheader", "--states=RUNNING", "--format=%i").split()  # one job, no array
        os.kill(job_process(slurm, job), signal.SIGKILL)  # as the kernel's OOM killer would
        # No result file, and no accounting to ask: the launcher sees the job gone from squeue.
        _, stderr = wait_for(sweep, timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the sweep stopped: UncompletedJobError: Job {job} (task: 0) with path "), last
    client, parent, [child] = sweep_runs(pg_server)
    assert parent.info.status == "FAILED"
    looked = subprocess.run(
        [sys.executable, "-m", "nnexp", "runs"],
        cwd=project.root,
        env={**slurm.env, "MLFLOW_TRACKING_URI": pg_server.uri},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert looked.returncode == 0, looked.stderr
    assert client.get_run(child.info.run_id).info.status != "RUNNING"


def test_a_job_three_times_longer_than_its_time_limit_finishes_through_requeues(
    project, slurm, pg_server, tmp_path, timings
):
    """SLURM's time limit is at least a minute; this training needs about three on one core (the NumPy engine:
    the compiled one would finish these epochs within the limit)."""
    training = (
        f"trainer.epochs={EPOCHS_PAST_LIMIT}",
        "trainer.batch_size=1",
        "trainer.engine=numpy",
        "dataset.n_samples=20000",
        "seed=7",
    )
    # The same training without SLURM, uninterrupted, on the other core meanwhile.
    reference = subprocess.Popen(
        [sys.executable, "-m", "nnexp", *training, f"hydra.run.dir={tmp_path / 'reference'}"],
        cwd=project.root,
        env={**project.env(), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    limits = ("hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=20", "hydra.launcher.max_num_timeout=20")
    sweep = start_sweep(project, slurm, pg_server, *limits, *training)
    _, stderr = wait_for(sweep, timeout=1200)
    timings["time-limited job (s)"] = time.monotonic() - started
    assert sweep.returncode == 0, stderr[-3000:]
    assert reference.wait(timeout=900) == 0, reference.stderr.read()[-3000:]
    timings["the same training, uninterrupted (s)"] = reference_seconds(tmp_path / "reference")

    client, parent, [child] = sweep_runs(pg_server)
    assert (parent.info.status, child.info.status) == ("FINISHED", "FINISHED")
    assert child.data.tags["resumed"] == "true" and child.data.tags["failure_reason"] == ""
    for name in EPOCH_METRICS:  # every epoch logged once, across all the job's attempts
        assert [m.step for m in client.get_metric_history(child.info.run_id, name)] == list(
            range(1, EPOCHS_PAST_LIMIT + 1)
        ), name

    job_dir = Path(child.data.tags["output_dir"])
    assert job_dir == Path(parent.data.tags["sweep_dir"]) / "0"
    [stderr_log] = (Path(parent.data.tags["sweep_dir"]) / ".submitit").rglob("*_log.err")  # all attempts
    requeues = stderr_log.read_text().count("Caught signal SIGUSR2")
    stopped = stderr_log.with_suffix(".out").read_text().count("stopped: interrupted (SIGUSR2) in epoch ")
    timings["requeues"], timings["requeues after a checkpoint of that moment"] = requeues, stopped
    assert requeues >= 2, stderr_log.read_text()[-3000:]
    # A warning that comes before training started (SLURM may send it up to a minute early) requeues at once.
    assert 1 <= stopped <= requeues

    with np.load(job_dir / "model.npz") as resumed, np.load(tmp_path / "reference" / "model.npz") as uninterrupted:
        assert resumed.files == uninterrupted.files
        for key in resumed.files:
            assert np.array_equal(resumed[key], uninterrupted[key]), key
    assert "model.npz" in stored_artifacts(pg_server, child)


#: Per-sample epochs of 14,000 points that take about three minutes on one idle core with the NumPy engine.
EPOCHS_PAST_LIMIT = 270


def reference_seconds(folder: Path) -> float:
    """How long the uninterrupted run trained, from its log line ``... in 12.3 s; run ...``."""
    [line] = [line for line in (folder / "nnexp.log").read_text().splitlines() if "test_accuracy=" in line]
    return float(line.split(" in ")[1].split(" s;")[0])


def test_sixteen_jobs_log_at_once_into_the_postgres_server(project, slurm, pg_server, timings):
    seeds = ",".join(str(seed) for seed in range(16))
    sweep = start_sweep(
        project,
        slurm,
        pg_server,
        "hydra.launcher.partition=shared",  # 8 jobs per core: all 16 at once
        f"seed={seeds}",
        "trainer.epochs=20",
        "dataset.n_samples=300",
    )
    most = 0
    while sweep.poll() is None:
        most = max(most, len(running_tasks(slurm)))
        time.sleep(0.5)
    _, stderr = wait_for(sweep)
    assert sweep.returncode == 0, stderr[-3000:]
    timings["concurrent jobs at most"] = most
    assert most == 16

    client, parent, children = sweep_runs(pg_server)
    assert len(children) == 16 and {run.info.status for run in children} == {"FINISHED"}
    steps = {
        name: [m.step for run in children for m in client.get_metric_history(run.info.run_id, name)]
        for name in EPOCH_METRICS
    }
    timings["metric values logged"] = sum(len(values) for values in steps.values())
    for name, logged in steps.items():  # none lost, none twice
        assert sorted(logged) == sorted(list(range(1, 21)) * 16), name
    for run in children:
        assert {"model.npz", "config.yaml", "plots/learning_curves.png"} <= stored_artifacts(pg_server, run)
    assert parent.data.metrics["jobs_finished"] == 16
