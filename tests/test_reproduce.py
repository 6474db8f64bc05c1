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
