"""``nnexp reproduce``: presets run as children of one parent run, and the table says which reach their figure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nnexp.job.reproduction import UNSTABLE_GAP, UNSTABLE_NOTE, Preset, child_failure, table, unstable
from nnexp.tracking.liveness import PID, REASON

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


@pytest.mark.parametrize(
    ("signum", "status", "line"),
    [
        (signal.SIGTERM, 143, "error: terminated (SIGTERM); MLflow run "),
        # Ignored before: a shell starts a background job with SIGINT ignored, and the child went on training.
        (signal.SIGINT, 130, "error: interrupted (SIGINT); MLflow run "),
    ],
)
def test_a_stop_signal_to_the_parent_alone_stops_the_child_and_marks_both_runs_killed(project, signum, status, line):
    ignoring = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 - as `nnexp reproduce &` in a script
    process = start_training(project, preexec_fn=ignoring)
    process.send_signal(signum)  # to the parent's pid only, not its process group
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    assert stderr.strip().splitlines()[-1].startswith(line)
    assert sorted(run.info.status for run in project.runs()) == ["KILLED", "KILLED"]


def test_kill_9_of_the_parent_stops_the_child_which_ends_killed_with_the_resume_hint(project):
    """The child trained on as an orphan and FINISHED under a parent run marked KILLED."""
    process = start_training(project)
    process.kill()
    process.communicate(timeout=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        [child] = [run for run in project.runs() if run.info.run_name != "reproduce"]
        if child.info.status != "RUNNING":
            break
        time.sleep(0.5)
    assert child.info.status == "KILLED"
    assert "; resume with: python -m nnexp resume=" in child.data.tags["failure_reason"]


def test_a_child_killed_by_a_signal_is_named_so_and_its_run_marked_killed_before_reproduce_exits(project):
    """The reason was the child's last progress line, and its run stayed RUNNING until another command looked."""
    process = start_training(project)
    [child] = [run for run in project.runs() if run.info.run_name != "reproduce"]
    os.kill(int(child.data.tags[PID]), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    line = (
        "error: moons_deep_sigmoid with seed=0: the run's process was killed by SIGKILL; "
        f"run {child.info.run_id} marked KILLED ({REASON})"
    )
    assert (process.returncode, stderr.strip().splitlines()[-1]) == (1, line), stderr
    assert "marked KILLED" not in stderr.strip().splitlines()[-2]
    runs = {run.info.run_name: run for run in project.runs()}
    assert runs["reproduce"].info.status == "FAILED"
    assert runs["reproduce"].data.tags["failure_reason"] == line.removeprefix("error: ")
    assert runs["moons_deep_sigmoid-seed0"].info.status == "KILLED"
    assert runs["moons_deep_sigmoid-seed0"].data.tags["failure_reason"] == REASON


@pytest.mark.parametrize(
    ("returncode", "stderr", "expected"),
    [
        (-9, "quadrants-seed0 epoch 10/100 loss=0.1\n", "the run's process was killed by SIGKILL"),
        (1, "error: x is wrong\nquadrants-seed0 epoch 10/100 loss=0.1\n", "x is wrong"),
        (1, "quadrants-seed0 epoch 10/100 loss=0.1\n", "the run's process exited with status 1 and no error line"),
    ],
)
def test_only_a_signal_or_an_error_line_is_a_childs_reason(returncode, stderr, expected):
    assert child_failure(returncode, stderr) == expected


def start_training(project, preexec_fn=None) -> subprocess.Popen[str]:
    """``nnexp reproduce`` of one preset and seed, returned once its child trains, past any kernel compilation,
    which no signal interrupts; ``preexec_fn`` as ``subprocess.Popen`` takes it."""
    # Enough epochs that the child is still training when the test stops it, however slow the machine.
    command = [sys.executable, "-m", "nnexp", "reproduce", "--only", "moons_deep_sigmoid", "--seeds", "0"]
    command.append("trainer.epochs=1000000")
    process = subprocess.Popen(
        command,
        cwd=project.root,
        env=project.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )
    deadline = time.monotonic() + 120
    # The child's folder first: reading the store while the parent creates it can break the creation.
    while time.monotonic() < deadline and not project.job_dirs():
        time.sleep(0.5)
    while time.monotonic() < deadline and not any(
        run.info.run_name != "reproduce" and "train_loss" in run.data.metrics for run in project.runs()
    ):
        time.sleep(0.5)
    return process


def results(report: str) -> dict[str, str]:
    """Each preset's result column."""
    rows = [line for line in report.splitlines()[2:] if line.startswith("| ")]
    return {row.split(" | ")[0].strip("| "): row.rsplit(" | ", 1)[1].rstrip(" |") for row in rows}


def test_a_mean_pulled_below_by_one_unstable_seed_is_a_miss_naming_it():
    presets = [Preset("tanh", 0.90, "val_accuracy", [0.9084, 0.9038, 0.7412], [4.0, 4.0, 4.0])]
    report = table(presets, [0, 1, 2])
    assert results(report) == {"tanh": "miss: seed 2 at 74.12% (the others 90.61%)"}
    assert "| 85.11% | 90.84% / 90.38% / 74.12% |" in report  # the mean and every seed stay in view
    assert report.endswith(UNSTABLE_NOTE)
    assert not presets[0].passed


def test_two_unstable_seeds_of_five_are_both_named():
    presets = [Preset("tanh", 0.90, "val_accuracy", [0.9084, 0.9038, 0.7412, 0.8974, 0.8264])]
    assert results(table(presets, [0, 1, 2, 3, 4])) == {
        "tanh": "miss: seeds 2, 4 at 74.12%, 82.64% (the others 90.32%)"
    }


def test_steady_seeds_give_plain_results_and_no_note():
    presets = [
        Preset("steady", 0.90, "val_accuracy", [0.9024, 0.9021, 0.9034]),
        Preset("short", 0.95, "val_accuracy", [0.9024, 0.9021, 0.9034]),
    ]
    report = table(presets, [0, 1, 2])
    assert results(report) == {"steady": "pass", "short": "FAIL"}
    assert UNSTABLE_NOTE not in report


def test_an_unstable_seed_is_named_even_when_the_mean_passes_or_the_others_fall_short_too():
    presets = [
        Preset("lucky", 0.90, "val_accuracy", [0.99, 0.99, 0.85]),
        Preset("poor", 0.90, "val_accuracy", [0.85, 0.85, 0.70]),
    ]
    assert results(table(presets, [3, 4, 5])) == {
        "lucky": "pass; unstable: seed 5 at 85.00% (the others 99.00%)",
        "poor": "FAIL; unstable: seed 5 at 70.00% (the others 85.00%)",
    }


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.90, 0.70], []),  # two seeds: which one is off cannot be told
        ([0.90, 0.80, 0.80], []),  # most seeds low: the preset falls short, not a seed
        ([0.90, 0.90, 0.871], []),  # within the gap
        ([0.90, 0.90, 0.869], [2]),
        ([0.70, 0.90, 0.91, 0.92], [0]),
        ([0.95, 0.90, 0.91, 0.92], []),  # a seed above the others is never unstable
    ],
)
def test_unstable_seeds_are_a_minority_more_than_the_gap_below_the_median_of_the_others(values, expected):
    assert UNSTABLE_GAP == 0.03
    assert unstable(values) == expected


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["optimizer.learning_rate=-1"], "error: quadrants: optimizer.learning_rate must be > 0, got -1.0"),
        (["--seeds", "0,-1"], "error: quadrants: seed must be >= 0, got -1"),
        (["--markdown", "/proc/table.md"], "error: --markdown /proc/table.md: cannot write /proc/table.md: "),
        (["--markdown", "."], "error: --markdown .: cannot write .: Is a directory"),
        (["--markdown", "/dev/full"], "error: --markdown /dev/full: cannot write /dev/full: No space left on device"),
    ],
)
def test_bad_values_stop_before_the_store_or_any_run_is_touched(project, args, line):
    result = reproduce(project, "--only", "quadrants", *args)
    assert result.returncode == 1 and result.stdout == ""
    [error] = result.stderr.splitlines()
    assert error.startswith(line), error
    assert not (project.root / "outputs").exists()


def test_a_report_that_cannot_be_written_is_one_line_naming_the_file(tmp_path):
    """Writing to /dev/full (ENOSPC on close) was a traceback after every run had ended."""
    from nnexp.errors import NnexpError
    from nnexp.job.reproduction import write_markdown

    with pytest.raises(NnexpError) as caught:
        write_markdown(Path("/dev/full"), "| a |\n")
    assert str(caught.value) == (
        "--markdown /dev/full: cannot write /dev/full: No space left on device (the disk is full; free some space); "
        "the table above is logged as the parent run's reproduce.md"
    )
    with pytest.raises(NnexpError, match=f"^--markdown {tmp_path}: cannot write {tmp_path}: Is a directory"):
        write_markdown(tmp_path, "| a |\n")
