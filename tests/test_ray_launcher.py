"""The optional Ray launcher (``pip install -e ".[ray]"``): a sweep through the real CLI with ray_local."""

from __future__ import annotations

import pytest
import yaml

SKIP = 'the ray extra is not installed: pip install -e ".[ray]"'
pytest.importorskip("ray", reason=SKIP)
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason=SKIP)

RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"


def test_ray_local_preset_composes_onto_the_ray_launcher(project):
    result = project.run("hydra/launcher=ray_local", "--cfg", "hydra", "-p", "hydra.launcher", "--resolve")
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout)
    assert launcher["_target_"] == RAY_LAUNCHER
    assert launcher["ray"]["init"]["include_dashboard"] is False
    assert launcher["ray"]["remote"] == {"num_cpus": 1}


def test_ray_sweep_is_a_parent_with_one_finished_child_per_job(project):
    result = project.run(
        "-m",
        "hydra/launcher=ray_local",
        "model=two_layer,deep_sigmoid",
        "optimizer.learning_rate=0.1,0.01",
        "trainer.epochs=2",
        "dataset.n_samples=200",
    )
    assert result.returncode == 0, result.stderr

    runs = project.runs()
    [parent] = [run for run in runs if run.data.tags.get("nnexp_command") == "sweep"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5
    assert parent.info.status == "FINISHED" and parent.data.tags["launcher"] == "ray_local"
    assert sorted(run.data.tags["job_num"] for run in children) == ["0", "1", "2", "3"]
    assert {run.info.status for run in children} == {"FINISHED"}
    assert {run.data.tags["dataset"] for run in children} == {"moons"}
    # Ray gives each job one core and sets OMP_NUM_THREADS to match, which OpenBLAS obeys.
    assert {run.data.tags["blas_threads"] for run in children} == {"1"}
    assert parent.data.metrics["jobs_finished"] == 4
    # The workers ran in the project directory: the job directories are under its outputs/.
    assert len(project.job_dirs()) == 4
