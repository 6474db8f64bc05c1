"""``nnexp reproduce``: presets run as children of one parent run, and the table says which reach their figure."""

from __future__ import annotations

import subprocess
import sys

from mlflow import MlflowClient

EASY = """\
# @package _global_
defaults:
  - override /dataset: moons
trainer:
  epochs: 2
tags:
  target_accuracy: {target}
"""


def reproduce(project, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nnexp", "reproduce", *args]
    return subprocess.run(command, cwd=project.root, env=project.env(), capture_output=True, text=True, timeout=300)


def test_reproduce_runs_children_under_one_parent_and_reports(project):
    (project.root / "conf" / "experiment" / "easy.yaml").write_text(EASY.format(target=0.5))
    (project.root / "conf" / "experiment" / "hard.yaml").write_text(EASY.format(target=1.0))
    result = reproduce(project, "--only", "easy,hard", "--seeds", "0,1", "trainer.batch_size=64")
    assert result.returncode == 1, result.stderr  # "hard" cannot reach 100% in two epochs
    rows = {line.split(" | ")[0].strip("| "): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert rows["easy"].endswith("| pass |") and rows["hard"].endswith("| FAIL |")
    client = MlflowClient(tracking_uri=project.store_uri)
    runs = project.runs()
    [parent] = [run for run in runs if run.info.run_name == "reproduce"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((run.data.tags["experiment"], run.data.params["seed"]) for run in children) == [
        ("easy", "0"),
        ("easy", "1"),
        ("hard", "0"),
        ("hard", "1"),
    ]
    assert all(run.data.params["trainer.batch_size"] == "64" for run in children)
    assert parent.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["reproduce.md"]


def test_reproduce_names_an_unknown_preset(project):
    result = reproduce(project, "--only", "nonexistent")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: no preset with a target_accuracy tag named nonexistent")


def test_a_bad_override_stops_before_any_run(project):
    result = reproduce(project, "--only", "quadrants", "optimizer.lr=1")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: quadrants: optimizer.lr is not a known key; "
        "valid keys here: learning_rate, momentum, nesterov, weight_decay"
    )
    assert project.runs() == []


def test_sigterm_stops_the_child_and_marks_both_runs_killed(project):
    import signal
    import time

    command = [sys.executable, "-m", "nnexp", "reproduce", "--only", "moons_deep_sigmoid", "--seeds", "0"]
    process = subprocess.Popen(
        command, cwd=project.root, env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(run.info.run_name != "reproduce" for run in project.runs()):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143
    assert stderr.strip().splitlines()[-1].startswith("error: terminated (SIGTERM); MLflow run ")
    assert sorted(run.info.status for run in project.runs()) == ["KILLED", "KILLED"]
