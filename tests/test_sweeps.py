"""Sweeps through the real CLI: one MLflow parent run per sweep, a child per job, and the summary on the parent."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from nnexp.errors import ConfigError
from nnexp.job import sweep
from nnexp.job.sweep import check_plugin_settings

QUICK = ("trainer.epochs=2", "dataset.n_samples=200")


def sweep_runs(project):
    """The project's single sweep parent and its children, children ordered by job number."""
    runs = project.runs()
    parents = [run for run in runs if run.data.tags.get("nnexp_command") == "sweep"]
    assert len(parents) == 1, [run.info.run_name for run in runs]
    parent = parents[0]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "every other run is a child of the sweep"
    return parent, sorted(children, key=lambda run: int(run.data.tags["job_num"]))


def artifact_paths(project, run_id: str, path: str | None = None) -> set[str]:
    client = MlflowClient(tracking_uri=project.store_uri)
    return {entry.path for entry in client.list_artifacts(run_id, path)}


def test_sweep_is_a_parent_run_with_one_named_child_per_job_and_a_summary(project):
    result = project.run("-m", "model=two_layer,deep_sigmoid", "optimizer.learning_rate=0.1,0.01", *QUICK)
    assert result.returncode == 0, result.stderr

    parent, children = sweep_runs(project)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("sweep model=two_layer,deep_sigmoid optimizer.learning_rate=0.1,0.01")
    assert parent.data.tags["sweep_overrides"] == " ".join(
        ["model=two_layer,deep_sigmoid", "optimizer.learning_rate=0.1,0.01", *QUICK]
    )
    sweep_dir = project.root / parent.data.tags["sweep_dir"]
    assert sweep_dir.is_dir() and sweep_dir.is_relative_to(project.root / "outputs" / "multirun")

    assert [run.data.tags["job_num"] for run in children] == ["0", "1", "2", "3"]
    # Named by the swept values alone, which MLflow's run list shows whole; the overrides stay in a tag.
    assert [run.info.run_name for run in children] == [
        "model=two_layer learning_rate=0.1",
        "model=two_layer learning_rate=0.01",
        "model=deep_sigmoid learning_rate=0.1",
        "model=deep_sigmoid learning_rate=0.01",
    ]
    assert children[1].data.tags["overrides"] == " ".join(
        ["model=two_layer", "optimizer.learning_rate=0.01", *QUICK]
    )
    for child in children:
        assert child.info.status == "FINISHED"
        # The parent is named in the job's own config, not inherited through MLFLOW_RUN_ID.
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert not any(key.startswith("tracking.") or key == "resume" for key in child.data.params)
        assert (
            len(MlflowClient(tracking_uri=project.store_uri).get_metric_history(child.info.run_id, "train_loss")) == 2
        )

    assert parent.data.metrics["jobs_total"] == 4
    assert parent.data.metrics["jobs_finished"] == 4
    assert parent.data.metrics["jobs_failed"] == 0
    best = max(children, key=lambda run: run.data.metrics["test_accuracy"])
    assert parent.data.metrics["best_test_accuracy"] == best.data.metrics["test_accuracy"]
    assert parent.data.params["best.model"] == best.data.tags["model"]
    assert parent.data.params["best.optimizer.learning_rate"] == best.data.params["optimizer.learning_rate"]
    assert parent.data.tags["best_run_id"] == best.info.run_id

    assert artifact_paths(project, parent.info.run_id, "summary") == {
        "summary/children.csv",
        "summary/children.md",
        "summary/comparison.png",
    }
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "summary" / "children.csv").read_text())))
    assert rows[0]["run_id"] == best.info.run_id
    accuracies = [float(row["test_accuracy"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert {"model", "optimizer.learning_rate"} <= set(rows[0])
    # The same table, in the terminal.
    assert f"sweep {parent.info.run_id}: 4 finished, 0 failed; ranked by test_accuracy" in result.stdout
    assert best.info.run_id in result.stdout
    # The table is the parent's description in MLflow's UI too, and the last line opens the children in the runs
    # table with the swept settings and the objective as columns, best first: MLflow 3.17 shows none by default.
    description = parent.data.tags["mlflow.note.content"]
    assert description.startswith("Ranked by `test_accuracy`, highest first.\n\n| run | status | model |")
    assert description.index(best.info.run_id) < min(
        description.index(run.info.run_id) for run in children if run is not best
    )
    experiment = MlflowClient(tracking_uri=project.store_uri).get_experiment(parent.info.experiment_id)
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{parent.info.run_id}"])
    assert view["searchFilter"] == f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`test_accuracy`", False)
    swept = ["tags.`model`", "params.`optimizer.learning_rate`", "metrics.`test_accuracy`"]
    assert view["selectedColumns"][:3] == swept
    page = (
        f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs"
        f"?viewStateShareKey={parent.info.run_id}&workflowType=machine_learning"
    )
    assert result.stdout.strip().splitlines()[-1] == f"sweep {parent.info.run_id}: see it with: nnexp ui, then {page}"


def test_seeds_are_summarised_as_mean_and_std_per_configuration(project):
    result = project.run("-m", "model=two_layer,deep_sigmoid", "seed=1,2", *QUICK)
    assert result.returncode == 0, result.stderr
    parent, children = sweep_runs(project)
    sweep_dir = project.root / parent.data.tags["sweep_dir"]
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "summary" / "configurations.csv").read_text())))
    assert [row["model"] for row in rows] and sorted(row["model"] for row in rows) == ["deep_sigmoid", "two_layer"]
    for row in rows:
        values = [run.data.metrics["test_accuracy"] for run in children if run.data.tags["model"] == row["model"]]
        mean = sum(values) / 2
        assert row["test_accuracy (mean ± std)"].startswith(f"{mean:.4f} ± ")
        assert row["seeds"] == "2"
    assert parent.data.metrics["best_mean_test_accuracy"] == pytest.approx(
        max(
            sum(run.data.metrics["test_accuracy"] for run in children if run.data.tags["model"] == m) / 2
            for m in ("two_layer", "deep_sigmoid")
        )
    )
    assert "summary/configurations.md" in artifact_paths(project, parent.info.run_id, "summary")
    assert "mean ± std over seeds" in result.stdout


def test_failed_jobs_are_isolated_and_counted(project):
    # Job 1 has a bad value (found before training), job 2 diverges: an unbounded output under huge steps.
    result = project.run(
        "-m",
        "optimizer=sgd",
        "optimizer.learning_rate=0.1,-1,1e30",
        "loss=mse",
        "model.output_activation=identity",
        *QUICK,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 2 of 3 jobs failed; the table above and their MLflow runs give the reasons"
    )
    assert "error:" not in result.stdout, "a job's error goes to stderr, with the others"
    assert [line.split(":")[1] for line in result.stderr.splitlines() if line.startswith("error: job ")] == [
        " job 1 failed",
        " job 2 failed",
    ]
    parent, children = sweep_runs(project)
    assert [run.info.status for run in children] == ["FINISHED", "FAILED", "FAILED"]
    assert children[1].data.tags["failure_reason"] == "optimizer.learning_rate must be > 0, got -1.0"
    assert children[2].data.tags["failure_reason"].startswith("loss became NaN at epoch 1")
    assert children[1].data.params["optimizer.learning_rate"] == "-1.0"
    assert [run.info.run_name for run in children] == ["learning_rate=0.1", "learning_rate=-1.0", "learning_rate=1e+30"]
    assert "learning_rate" in result.stdout.split("ranked by")[1].splitlines()[1]  # the table keeps the swept column
    assert parent.info.status == "FINISHED"
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (1, 2)
    # The failed job before training leaves no job directory, the others keep theirs.
    assert len(project.job_dirs()) == 2


def test_bad_sweep_value_found_while_expanding_leaves_nothing(project):
    result = project.run("-m", "model=two_layer,nonexistent", *QUICK)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: model=nonexistent is not an option")
    assert not (project.root / "outputs").exists()  # nor the store the sweep created for its parent run


def test_a_sweep_that_expands_to_no_jobs_is_an_error_and_leaves_nothing(project):
    result = project.run("-m", "trainer.epochs=range(1,0)")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: the sweep has no jobs")
    assert not (project.root / "outputs").exists()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [  # optuna's "No trials are completed yet" after creating the parent run before
        (("hparams_search=moons_optuna", "hydra.sweeper.n_trials=-1"), "hydra.sweeper.n_trials must be >= 1, got -1"),
        # an Optuna study searching for the worst trials before
        (
            ("hparams_search=moons_optuna", "hydra.sweeper.direction=minimize"),
            "hydra.sweeper.direction=minimize contradicts objective.direction=maximize",
        ),
        # optuna's ValueError naming neither key nor file, after creating the parent run, before
        (
            ("hparams_search=moons_optuna", "hydra.sweeper.params={optimizer.learning_rate:'tag(log,interval(0,1))'}"),
            "hydra.sweeper.params.optimizer.learning_rate=tag(log,interval(0,1)): Optuna refuses it: The `low` value",
        ),
        # a FileNotFoundError naming no option, after creating the parent run, before
        (("seed=1,2", "hydra.sweep.dir=/proc/x"), "hydra.sweep.dir: cannot create /proc/x: No such file or directory"),
        # both jobs FINISHED in one folder before, the first run's record pointing at the second's files
        (
            ("seed=1,2", "hydra.sweep.subdir=same"),
            "hydra.sweep.subdir='same' names one folder for every job of the sweep; include ${hydra.job.num} "
            "(the default is ${hydra.job.num})",
        ),
        # both jobs FINISHED in one folder outside their sweep's (0/../.. and 1/../.. are one) before
        (
            ("seed=1,2", "hydra.sweep.subdir=${hydra.job.num}/../../out"),
            "hydra.sweep.subdir='${hydra.job.num}/../../out' leads out of the sweep's folder; name a folder inside "
            "it, such as ${hydra.job.num} (the default)",
        ),
        # the parent run was created with a name a PostgreSQL or MySQL store refuses
        (("seed=1,2", "tracking.run_name=" + "s" * 600), "tracking.run_name: an MLflow run name holds at most 250"),
        # each job FINISHED in a folder of its own outside the project before
        (
            ("seed=1,2", "hydra.sweep.subdir=/tmp/nnexp_job${hydra.job.num}"),
            "hydra.sweep.subdir='/tmp/nnexp_job${hydra.job.num}' leads out of the sweep's folder; name a folder",
        ),
    ],
)
def test_a_sweep_setting_hydras_plugins_fail_on_is_one_line_naming_it(project, arguments, expected):
    result = project.run("-m", *arguments, *QUICK)
    [line] = result.stderr.strip().splitlines()
    assert result.returncode == 1 and line.startswith(f"error: {expected}"), result.stderr
    assert not (project.root / "outputs").exists()


@pytest.mark.parametrize(
    ("group", "option", "setting", "value", "expected"),
    [
        ("sweeper", "optuna", "n_trials", 0, "hydra.sweeper.n_trials must be >= 1, got 0"),
        ("sweeper", "optuna", "n_jobs", 0, "hydra.sweeper.n_jobs must be >= 1, got 0"),  # ZeroDivisionError before
        ("sweeper", "basic", "max_batch_size", 0, "hydra.sweeper.max_batch_size must be >= 1 or null, got 0"),
        ("launcher", "joblib", "n_jobs", 0, "hydra.launcher.n_jobs must be >= 1, or negative (all cores but"),
    ],
)
def test_sweeper_and_launcher_settings_are_checked_before_the_sweep(group, option, setting, value, expected):
    config = OmegaConf.create({"hydra": {"runtime": {"choices": {f"hydra/{group}": option}}, group: {setting: value}}})
    with pytest.raises(ConfigError) as raised:
        check_plugin_settings(config)
    assert str(raised.value).startswith(expected)
    config.hydra[group][setting] = -1 if option == "joblib" else None if setting == "max_batch_size" else 1
    check_plugin_settings(config)


def optuna_config(tmp_path, preset=None, sweeper=None, objective=None, hydra_overrides=(), task_overrides=()):
    """A launching config of an Optuna sweep, as Sweep.start gets it; ``preset`` (YAML text) is the chosen
    ``hparams_search`` option."""
    folder = tmp_path / "conf"
    (folder / "hparams_search").mkdir(parents=True, exist_ok=True)
    if preset is not None:
        (folder / "hparams_search" / "search.yaml").write_text(preset)
    return OmegaConf.create(
        {
            "objective": {"metric": "val_accuracy", "direction": None, **(objective or {})},
            "hydra": {
                "runtime": {
                    "choices": {"hydra/sweeper": "optuna", "hparams_search": "search" if preset else None},
                    "config_sources": [{"path": str(folder), "schema": "file"}],
                },
                "overrides": {"hydra": list(hydra_overrides), "task": list(task_overrides)},
                "sweeper": {"direction": "maximize", "params": None, **(sweeper or {})},
            },
        }
    )


@pytest.mark.parametrize(
    ("sweeper", "objective", "expected"),
    [
        (
            {"direction": "minimize"},
            {},
            "hydra.sweeper.direction=minimize contradicts objective.direction=maximize "
            "(objective.metric=val_accuracy); set hydra.sweeper.direction=maximize",
        ),
        (
            {"direction": ["maximize", "minimize"]},
            {},
            "hydra.sweeper.direction=[maximize, minimize] asks for 2 objectives; each job returns one",
        ),
        (
            {"direction": "maximize"},
            {"metric": "val_loss"},
            "hydra.sweeper.direction=maximize contradicts objective.direction=minimize (objective.metric=val_loss)",
        ),
    ],
)
def test_an_optuna_direction_against_the_objective_is_refused(tmp_path, sweeper, objective, expected):
    with pytest.raises(ConfigError) as raised:
        sweep.check_optuna_direction(optuna_config(tmp_path, sweeper=sweeper, objective=objective))
    assert str(raised.value).startswith(expected)
    sweep.check_optuna_direction(optuna_config(tmp_path, sweeper={"direction": ["maximize"]}))


def test_an_optuna_direction_set_by_a_preset_is_named_by_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = "# @package _global_\nhydra:\n  sweeper:\n    direction: minimize\n"
    with pytest.raises(ConfigError) as raised:
        sweep.check_optuna_direction(optuna_config(tmp_path, preset, sweeper={"direction": "minimize"}))
    assert str(raised.value).startswith("conf/hparams_search/search.yaml: hydra.sweeper.direction=minimize contra")
    typed = ["hydra.sweeper.direction=minimize"]
    given = optuna_config(tmp_path, preset, {"direction": "minimize"}, hydra_overrides=typed)
    with pytest.raises(ConfigError, match=r"^hydra\.sweeper\.direction=minimize contradicts"):  # the command line's
        sweep.check_optuna_direction(given)


def test_an_objective_direction_against_its_metric_is_named_by_its_preset(tmp_path, monkeypatch):
    from nnexp.job.build import Objective

    monkeypatch.chdir(tmp_path)
    preset = "# @package _global_\nobjective:\n  direction: minimize\n"
    config = optuna_config(tmp_path, preset, objective={"direction": "minimize"})
    with pytest.raises(ConfigError) as raised:
        Objective.of(config)
    assert str(raised.value) == (
        "conf/hparams_search/search.yaml: objective.direction=minimize contradicts objective.metric=val_accuracy "
        "(an accuracy, better higher); leave objective.direction out (null) to rank by the metric's own direction"
    )


def test_an_interval_optuna_refuses_is_named_by_its_key_and_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {"optimizer.learning_rate": "tag(log, interval(0, 0.3))", "model.hidden_sizes": 'choice("[8]", "[32]")'}
    preset = "# @package _global_\n" + OmegaConf.to_yaml({"hydra": {"sweeper": {"params": params}}})
    with pytest.raises(ConfigError) as raised:
        sweep.check_optuna_search_space(optuna_config(tmp_path, preset, sweeper={"params": params}))
    assert str(raised.value) == (
        "conf/hparams_search/search.yaml: hydra.sweeper.params.optimizer.learning_rate=tag(log, interval(0, 0.3)): "
        "Optuna refuses it: The `low` value must be larger than 0 for a log distribution (low=0.0, high=0.3)."
    )
    given = optuna_config(tmp_path, task_overrides=["seed=1", "optimizer.learning_rate=tag(log,interval(-1,1))"])
    with pytest.raises(ConfigError, match=r"^optimizer\.learning_rate=tag\(log,interval\(-1,1\)\): Optuna refuses it"):
        sweep.check_optuna_search_space(given)
    params["optimizer.learning_rate"] = "tag(log, interval(0.001, 0.3))"
    sweep.check_optuna_search_space(optuna_config(tmp_path, sweeper={"params": params}, task_overrides=["seed=1"]))


def test_bad_sweep_value_in_a_project_with_runs_leaves_its_store(project):
    assert project.run(*QUICK).returncode == 0
    assert project.run("-m", "optimizer.learning_rate=0.01,-1,abc", *QUICK).returncode == 1
    assert [run.data.tags.get("nnexp_command") for run in project.runs()] == [None]


def test_unreachable_tracking_server_stops_a_sweep_before_any_job(project):
    result = project.run("-m", "model=two_layer,deep_sigmoid", "tracking.uri=http://127.0.0.1:9", *QUICK)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: tracking server http://127.0.0.1:9 is unreachable: [Errno 111] Connection refused"
    ]
    assert project.job_dirs() == []


def test_sigterm_kills_the_sweep_and_its_running_job(project):
    process = project.start("-m", "trainer.epochs=100000", "trainer.batch_size=1", "seed=1,2")
    deadline = time.monotonic() + 120
    # Wait for the first job's folder before polling the store, which the sweep may still be creating; then for the
    # job's run, so that the signal lands in training however slow the machine.
    while time.monotonic() < deadline and not project.job_dirs():
        time.sleep(0.2)
    while time.monotonic() < deadline and sum(run.info.status == "RUNNING" for run in project.runs()) < 2:
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    parent, children = sweep_runs(project)
    assert parent.info.status == "KILLED"
    assert [run.info.status for run in children] == ["KILLED"]


def running_joblib_sweep(project, seeds: str) -> subprocess.Popen[str]:
    """A joblib sweep of two workers over ``seeds``, once its parent run and two jobs' runs are RUNNING."""
    process = project.start(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.epochs=100000", seeds, "hydra.sweep.dir=sw"
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and sum(run.info.status == "RUNNING" for run in project.runs()) < 3:
        time.sleep(0.5)
    return process


def test_sigterm_stops_each_joblib_job_as_a_run_and_starts_no_other(project):
    """Joblib killed its workers: their runs were left to be marked KILLED without a checkpoint at the stop, and
    their folders kept; now each running job checkpoints and ends KILLED, and the third never starts."""
    process = running_joblib_sweep(project, "seed=1,2,3")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "error: terminated (SIGTERM)", stderr
    parent, children = sweep_runs(project)
    assert parent.info.status == "KILLED" and len(children) == 2
    assert ": 0 finished, 0 failed, 2 stopped; ranked by" in stdout
    for run in children:
        assert run.info.status == "KILLED" and "interrupted (SIGTERM)" in run.data.tags["failure_reason"]
        assert (Path(run.data.tags["output_dir"]) / "checkpoints" / "checkpoint.json").is_file()
    assert sorted(path.name for path in (project.root / "sw").iterdir()) == [
        ".nnexp.lock", "0", "1", "multirun.yaml", "summary"
    ]


@pytest.mark.parametrize("whole_group", [False, True], ids=["sweep_alone", "whole_group"])
def test_a_first_sigint_stops_each_joblib_job_as_a_run_and_starts_no_other(project, whole_group):
    """Ctrl-C to a joblib sweep left its jobs' runs RUNNING, their checkpoints up to 30 s old; now it stops them as
    SIGTERM does, whether it reaches the sweep alone or, as a terminal's Ctrl-C does, its workers too."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nnexp", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "trainer.epochs=100000", "seed=1,2,3", "hydra.sweep.dir=sw"],
        cwd=project.root, env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives a command
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and sum(run.info.status == "RUNNING" for run in project.runs()) < 3:
        time.sleep(0.5)
    sent = time.time()
    if whole_group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "error: interrupted (SIGINT)", stderr
    parent, children = sweep_runs(project)
    assert parent.info.status == "KILLED" and len(children) == 2
    assert ": 0 finished, 0 failed, 2 stopped; ranked by" in stdout
    for run in children:
        assert run.info.status == "KILLED", run.data.tags.get("failure_reason")
        reason = run.data.tags["failure_reason"]
        assert reason.startswith("interrupted (SIGINT) in epoch") and "; checkpoint in " in reason, reason
        assert (Path(run.data.tags["output_dir"]) / "checkpoints" / "checkpoint.json").stat().st_mtime >= sent
    assert sorted(path.name for path in (project.root / "sw").iterdir()) == [
        ".nnexp.lock", "0", "1", "multirun.yaml", "summary"
    ]


def loky_workers(pid: int) -> list[int]:
    """The ids of the joblib (loky) worker processes that process ``pid`` started."""
    workers = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"loky" in command:
            workers.append(int(entry.name))
    return workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's; reads /proc")
def test_kill_9_of_a_joblib_sweep_stops_its_workers_runs_as_a_hang_up_does(project):
    """The workers trained on as orphans, and their runs ended FINISHED under a parent marked KILLED."""
    process = running_joblib_sweep(project, "seed=1,2")
    workers = loky_workers(process.pid)  # and loky's resource trackers
    assert len(workers) >= 2
    process.kill()
    try:
        _, stderr = process.communicate(timeout=60)  # the workers hold the pipe open until they end
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}/cmdline").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if Path(f"/proc/{pid}/cmdline").exists()]
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # The jobs' progress lines, which a slow machine prints before the kill, are named by their overrides.
    others = [line for line in stderr.splitlines() if not line.startswith("trainer.epochs=100000 seed=")]
    assert len(others) == 2 and "Traceback" not in stderr, stderr
    for job in (0, 1):
        [line] = [line for line in others if line.startswith(f"error: job {job} of a sweep whose process ")]
        assert f"{process.pid} has ended: interrupted (SIGHUP) in epoch " in line, line
    listed = project.run("runs")
    assert listed.returncode == 0 and "RUNNING" not in listed.stdout, listed.stdout
    parent, children = sweep_runs(project)
    assert parent.info.status == "KILLED" and len(children) == 2
    for run in children:
        assert run.info.status == "KILLED", run.data.tags.get("failure_reason")
        assert run.data.tags["failure_reason"].startswith("interrupted (SIGHUP) in epoch ")
        assert (Path(run.data.tags["output_dir"]) / "checkpoints" / "checkpoint.json").is_file()


def test_a_terminals_ctrl_c_while_joblibs_workers_start_stops_the_sweep_cleanly(project):
    """A worker still importing died of the Ctrl-C: joblib ended the sweep with TerminatedWorkerError, exit 1."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nnexp", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "trainer.epochs=100000", "seed=1,2,3", "hydra.sweep.dir=sw"],
        cwd=project.root, env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not loky_workers(process.pid):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)  # the workers are starting: Python, then joblib, Hydra and nnexp to import
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "error: interrupted (SIGINT)", stderr
    runs = project.runs()
    assert {run.info.status for run in runs} == {"KILLED"}, [run.data.tags.get("failure_reason") for run in runs]


def test_a_job_stopped_by_a_signal_waits_for_the_sweeps_request_before_taking_it_as_its_own(tmp_path, monkeypatch):
    """A terminal's Ctrl-C reaches a job before the sweep has asked its jobs to stop: the job waits for that."""
    monkeypatch.setattr(sweep, "STOP_WAIT", 0.5)
    assert not sweep.stop_coming(tmp_path)
    threading.Timer(0.1, (tmp_path / sweep.STOP_MARKER).write_text, ("2",)).start()
    assert sweep.stop_coming(tmp_path)


def test_a_stop_while_the_summary_is_written_ends_the_parent_killed(tmp_path, monkeypatch):
    """A second Ctrl-C while the sweep summarised its jobs left the parent run RUNNING."""
    from types import SimpleNamespace

    from nnexp.errors import Interrupted

    ended = []
    parent = SimpleNamespace(end=lambda status, reason=None: ended.append((status, reason)))
    stopped = sweep.Sweep(tracker=None, parent=parent, directory=tmp_path, swept=[])

    def summarise(self):
        raise Interrupted("interrupted (SIGINT)", 130)

    monkeypatch.setattr(sweep.Sweep, "summarise", summarise)
    with pytest.raises(Interrupted):
        stopped.finish()
    assert ended == [("KILLED", "interrupted (SIGINT)")]


def test_a_stopped_sweep_removes_the_folders_of_jobs_that_never_ran(tmp_path, monkeypatch):
    """A second Ctrl-C ends joblib's workers at once: a job being set up left a folder of Hydra's files alone."""
    from types import SimpleNamespace

    from nnexp.errors import Interrupted

    parent = SimpleNamespace(end=lambda status, reason=None: None)
    stopped = sweep.Sweep(tracker=None, parent=parent, directory=tmp_path, swept=[])
    monkeypatch.setattr(sweep.Sweep, "summarise", lambda self: (1, 0))
    never_ran, ran = tmp_path / "0", tmp_path / "1"
    for job in (never_ran, ran):
        (job / ".hydra").mkdir(parents=True)
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (job / ".hydra" / name).write_text("{}\n")
        (job / "nnexp.log").write_text("")
    (ran / "model.npz").write_bytes(b"")
    assert stopped.abandon(Interrupted("interrupted (SIGINT)", 130)) == "interrupted (SIGINT)"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["1"]


def test_joblib_runs_jobs_in_parallel_processes_with_one_blas_thread_each(project):
    result = project.run(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=two_layer,deep_sigmoid",
        "dataset=moons,circles",
        *QUICK[:1],
    )
    assert result.returncode == 0, result.stderr
    parent, children = sweep_runs(project)
    assert parent.data.tags["launcher"] == "joblib"
    assert len(children) == 4 and {run.info.status for run in children} == {"FINISHED"}
    # The user's plugin (plugins/circles.py) is found in the worker processes too.
    assert {run.data.tags["dataset"] for run in children} == {"moons", "circles"}
    # Two workers share the cores instead of each using them all.
    assert all(int(run.data.tags["blas_threads"]) <= max(1, os.cpu_count() // 2) for run in children)
    assert parent.data.metrics["jobs_finished"] == 4
    # Each run says where it lives: the parent in the launching process, the jobs in the workers.
    assert parent.data.tags["nnexp.pid"] not in {run.data.tags["nnexp.pid"] for run in children}
    assert {run.data.tags["nnexp.host"] for run in (parent, *children)} == {socket.gethostname()}


def test_submitit_local_launcher(project):
    result = project.run("-m", "hydra/launcher=submitit_local", "model=two_layer,deep_sigmoid", *QUICK)
    assert result.returncode == 0, result.stderr
    parent, children = sweep_runs(project)
    assert parent.data.tags["launcher"] == "submitit_local"
    assert [run.info.status for run in children] == ["FINISHED", "FINISHED"]


def test_optuna_search_records_trials_as_children_and_the_best_params_on_the_parent(project):
    result = project.run("-m", "hparams_search=moons_optuna", "hydra.sweeper.n_trials=3", *QUICK)
    assert result.returncode == 0, result.stderr
    parent, children = sweep_runs(project)
    assert parent.data.tags["sweeper"] == "optuna"
    assert len(children) == 3
    assert {run.data.tags["objective"] for run in children} == {"val_accuracy"}
    best = max(children, key=lambda run: run.data.metrics["val_accuracy"])
    assert parent.data.params["best.optimizer.learning_rate"] == best.data.params["optimizer.learning_rate"]
    assert parent.data.metrics["best_val_accuracy"] == best.data.metrics["val_accuracy"]
    assert "Best value: " in result.stdout + result.stderr


def test_a_diverged_optuna_trial_does_not_crash_the_study(project):
    result = project.run(
        "-m",
        "hparams_search=moons_optuna",
        "hydra.sweeper.n_trials=3",
        "optimizer=sgd",
        "loss=mse",
        "model.output_activation=identity",
        "hydra.sweeper.params={optimizer.learning_rate:'choice(0.1,1e30)'}",
        "hydra.sweeper.sampler.seed=3",
        *QUICK,
    )
    _, children = sweep_runs(project)
    statuses = sorted(run.info.status for run in children)
    assert len(children) == 3 and "FINISHED" in statuses
    failed = [run for run in children if run.info.status == "FAILED"]
    assert failed, "the search space must contain a diverging trial"
    assert result.returncode == 1
    assert f"{len(failed)} of 3 jobs failed" in result.stderr
    assert "Best value: " in result.stdout + result.stderr  # the study ran to its end


def test_compare_prints_a_sweep_and_an_experiment(project):
    assert project.run("-m", "model=two_layer,deep_sigmoid", *QUICK).returncode == 0
    parent, children = sweep_runs(project)
    shown = compare(project, "--sweep", "last")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"{parent.info.run_name} ({parent.info.run_id}): 2 runs"
    header = lines[2].split()
    assert header[:3] == ["run", "status", "model"] and "test_accuracy" in header
    assert {child.info.run_id for child in children} <= set(shown.stdout.split())

    chosen = compare(
        project,
        "--sweep",
        parent.info.run_id,
        "--params",
        "optimizer.learning_rate",
        "--metrics",
        "test_loss",
        "--format",
        "csv",
    )
    rows = list(csv.DictReader(io.StringIO(chosen.stdout)))
    assert [row["optimizer.learning_rate"] for row in rows] == ["0.001", "0.001"]
    assert {row["run_id"] for row in rows} == {child.info.run_id for child in children}

    everything = compare(project, "--limit", "10")
    assert everything.returncode == 0 and parent.info.run_id in everything.stdout

    wrong = compare(project, "--sweep", "nosuchrun")
    assert (wrong.returncode, wrong.stderr.strip()) == (1, "error: --sweep nosuchrun: no such run")
    unknown = compare(project, "--sweep", "last", "--params", "optimizer.lr")
    assert (unknown.returncode, unknown.stderr.strip()) == (1, "error: --params: no run has optimizer.lr")
    unsorted = compare(project, "--sort", "nosuch")
    assert (unsorted.returncode, unsorted.stderr.strip()) == (1, "error: --sort: no run has the metric nosuch")


def test_compare_without_a_store_says_so(project):
    result = compare(project)
    store = project.root / "outputs" / "mlflow.db"
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: no MLflow store at {store}; run an experiment first, or name the store with --uri",
    )
    assert not store.exists()


def compare(project, *arguments):
    return project.run("compare", *arguments, timeout=120)


def open_parent(project):
    from nnexp.tracking.tracked_run import Tracker

    return Tracker(project.store_uri, "nnexp").open_run("parent", {})


def test_a_parent_run_that_does_not_exist_or_has_ended_is_refused_before_any_run(project, tmp_path):
    from nnexp.errors import ConfigError
    from nnexp.tracking.store import check_parent

    with pytest.raises(ConfigError, match=r"no MLflow store at .*tracking.parent_run_id=deadbeef names a run"):
        check_parent(f"sqlite:///{tmp_path / 'none.db'}", "deadbeef", resuming=False)
    parent = open_parent(project)
    check_parent(project.store_uri, parent.run_id, resuming=False)
    with pytest.raises(ConfigError, match=r"^tracking.parent_run_id=deadbeef: no such run in sqlite:///"):
        check_parent(project.store_uri, "deadbeef", resuming=False)
    parent.end("FINISHED")
    with pytest.raises(ConfigError, match="the run is FINISHED; a parent must be RUNNING"):
        check_parent(project.store_uri, parent.run_id, resuming=False)
    check_parent(project.store_uri, parent.run_id, resuming=True)  # a resumed job keeps the parent it had


def test_a_refused_resume_of_a_child_records_no_new_run(project):
    parent = open_parent(project)
    child = project.run("experiment=moons_deep_sigmoid", *QUICK, f"tracking.parent_run_id={parent.run_id}")
    assert child.returncode == 0, child.stderr
    (run,) = [run for run in project.runs() if run.info.run_id != parent.run_id]
    MlflowClient(tracking_uri=project.store_uri).set_terminated(run.info.run_id, "KILLED")
    preset = project.root / "conf" / "experiment" / "moons_deep_sigmoid.yaml"
    preset.write_text(preset.read_text().replace("learning_rate: 0.01", "learning_rate: 0.02"))
    result = project.run(f"resume={run.info.run_id}")
    assert result.returncode == 1 and "no longer composes" in result.stderr, result.stderr
    parent.end("FINISHED")
    assert len(project.runs()) == 2


def test_swept_keys_come_from_value_lists_ranges_choices_and_the_sweepers_search_space():
    from nnexp.job.sweep import short_keys, swept_keys

    overrides = ["dataset=moons", "model=a,b", "seed=range(3)", "+x.y=choice(1,2)", "trainer.epochs=5"]
    assert swept_keys(overrides, {"optimizer.learning_rate": "interval(0.001, 1)"}) == [
        "model",
        "seed",
        "x.y",
        "optimizer.learning_rate",
    ]
    assert short_keys(["model.activation", "optimizer.learning_rate", "a.rate", "b.rate"]) == {
        "model.activation": "activation",
        "optimizer.learning_rate": "learning_rate",
        "a.rate": "a.rate",
        "b.rate": "b.rate",
    }


def test_a_sweeps_description_keeps_the_best_rows_that_fit_in_a_tag():
    from nnexp.job.sweep import description
    from nnexp.tracking.tables import Ranking, Table

    table = Table(["run", "test_loss"], [[f"lr={index}", f"0.{index}"] for index in range(1, 5)])
    ranking = Ranking("test_loss", maximize=False)
    whole = description(table, ranking)
    assert whole == (
        "Ranked by `test_loss`, lowest first.\n\n| run | test_loss |\n|---|---|\n"
        "| lr=1 | 0.1 |\n| lr=2 | 0.2 |\n| lr=3 | 0.3 |\n| lr=4 | 0.4 |"
    )
    # One character short: the note about the rows left out takes the room of more than one row.
    assert description(table, ranking, limit=len(whole) - 1) == (
        "Ranked by `test_loss`, lowest first.\n\n| run | test_loss |\n|---|---|\n| lr=1 | 0.1 |"
        "\n\n3 more in `summary/children.md`."
    )


def test_each_job_of_a_sequential_sweep_records_what_a_single_run_records(project):
    from test_cli import artifact_paths as artifact_files
    from test_opening import EXPECTED_ARTIFACTS, EXPECTED_PARAMS, EXPECTED_STEPS, EXPECTED_TAGS

    result = project.run("-m", "seed=1,2", "trainer.epochs=3")
    assert result.returncode == 0, result.stderr
    _, children = sweep_runs(project)
    client = MlflowClient(tracking_uri=project.store_uri)
    for number, child in enumerate(children):
        run_id = child.info.run_id
        assert child.info.status == "FINISHED"
        assert set(child.data.params) == EXPECTED_PARAMS
        assert set(child.data.tags) == EXPECTED_TAGS | {"job_num", "mlflow.parentRunId"}
        steps = {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in child.data.metrics}
        assert steps == EXPECTED_STEPS
        assert artifact_files(client, run_id) == EXPECTED_ARTIFACTS
        [model] = client.search_logged_models([child.info.experiment_id], filter_string=f"source_run_id='{run_id}'")
        assert model.status == "READY"
        # Each job's config is its own, though Hydra composed it once for the sweeper's check and the launcher.
        job_dir = Path(child.data.tags["output_dir"])
        assert OmegaConf.load(job_dir / "config.yaml").seed == number + 1
        assert OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.num == number
        assert f"seed={number + 1}" in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")


def test_the_basic_launcher_gets_the_config_the_sweepers_check_composed_once_handed_out():
    from nnexp.job.sweep import compose_jobs_once

    class Loader:
        def __init__(self) -> None:
            self.composed = 0

        def load_sweep_config(self, master_config, sweep_overrides):
            self.composed += 1
            return OmegaConf.create({"overrides": list(sweep_overrides), "composition": self.composed})

    loader, master = Loader(), OmegaConf.create({})
    undo = compose_jobs_once(loader)
    checked = loader.load_sweep_config(master, ["seed=1"])
    checked.composition = "changed by whoever got it"
    launched = loader.load_sweep_config(master, ["seed=1"])
    assert loader.composed == 1
    assert launched is not checked and launched == {"overrides": ["seed=1"], "composition": 1}
    assert loader.load_sweep_config(master, ["seed=1"]).composition == 2  # each copy is handed out once
    assert loader.load_sweep_config(master, ["seed=2"]).overrides == ["seed=2"]
    assert loader.load_sweep_config(OmegaConf.create({}), ["seed=1"]).composition == 4  # another sweep's config
    undo()
    loader.load_sweep_config(master, ["seed=2"])
    assert loader.composed == 5  # Hydra's own composition again


def test_a_batch_larger_than_the_configs_kept_is_composed_again_beyond_them():
    from nnexp.job.sweep import compose_jobs_once

    class Loader:
        composed = 0

        def load_sweep_config(self, master_config, sweep_overrides):
            self.composed += 1
            return OmegaConf.create({"overrides": list(sweep_overrides)})

    loader, master = Loader(), OmegaConf.create({})
    compose_jobs_once(loader, limit=2)
    batch = [[f"seed={seed}"] for seed in range(3)]
    for overrides in batch * 2:  # the sweeper's check of the batch, then the launcher
        assert loader.load_sweep_config(master, overrides).overrides == overrides
    assert loader.composed == 4


def test_a_job_folder_is_claimed_by_one_job_and_never_one_holding_a_user_s_files(tmp_path):
    from nnexp.folders import FOLDER_LOCK, JobFolderError, _held, claim_job_folder

    folder = tmp_path / "sweep" / "e2"
    (folder / ".hydra").mkdir(parents=True)  # what Hydra writes before the job starts
    claim_job_folder(folder, "e${trainer.epochs}")
    _held.pop().close()
    with pytest.raises(JobFolderError) as refused:
        claim_job_folder(folder, "e${trainer.epochs}")
    assert str(refused.value) == (
        f"hydra.sweep.subdir='e${{trainer.epochs}}' gives this job the folder {folder}, which another job of the "
        "sweep has; make it differ between jobs, such as ${hydra.job.num} (the default)"
    )
    (folder / "checkpoints").mkdir()  # a requeued SLURM job resumes in the folder it took before
    claim_job_folder(folder, "e${trainer.epochs}", resuming=True)
    _held.pop().close()
    (folder / "checkpoints").rmdir()
    (folder / FOLDER_LOCK).unlink()
    (folder / "notes.txt").write_text("the user's")
    with pytest.raises(JobFolderError, match=r"which holds files nnexp did not write \(notes\.txt\)"):
        claim_job_folder(folder, "e${trainer.epochs}")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            ("seed=1,2", "hydra.sweep.subdir=e${trainer.epochs}"),
            "error: hydra.sweep.subdir='e${trainer.epochs}' gives jobs 0 (seed=1) and 1 (seed=2) one folder, e2; make "
            "it differ between jobs, such as ${hydra.job.num} (the default)",
        ),
        (
            ("seed=1,1", "hydra.sweep.subdir=s${seed}", "hydra/launcher=joblib"),
            "error: hydra.sweep.subdir='s${seed}' gives jobs 0 (trainer.epochs=2 dataset.n_samples=200 seed=1) and 1 "
            "(trainer.epochs=2 dataset.n_samples=200 seed=1) one folder, s1; make it differ between jobs, such as "
            "${hydra.job.num} (the default)",
        ),
    ],
)
def test_a_subdir_giving_two_jobs_one_folder_is_refused_before_any_job_runs(project, arguments, expected):
    """Both jobs ran and FINISHED in outputs/sd/e2, whose files were the second job's."""
    result = project.run("-m", *QUICK, *arguments, "hydra.sweep.dir=outputs/sd")
    assert (result.returncode, result.stderr.strip()) == (1, expected)
    assert not (project.root / "outputs").exists()


def test_an_optuna_trial_whose_folder_another_trial_has_fails_and_leaves_it_as_it_was(project):
    result = project.run(
        "-m", "hparams_search=moons_optuna", "hydra.sweeper.n_trials=2", "hydra.sweep.subdir=t${trainer.epochs}",
        "hydra.sweep.dir=outputs/sd", *QUICK,
    )
    assert result.returncode == 1
    assert "1 of 2 jobs failed" in result.stderr
    _, children = sweep_runs(project)
    [finished] = [run for run in children if run.info.status == "FINISHED"]
    [failed] = [run for run in children if run.info.status == "FAILED"]
    assert "gives this job the folder" in failed.data.tags["failure_reason"], failed.data.tags
    folder = project.root / "outputs" / "sd" / "t2"
    assert finished.data.tags["output_dir"] == str(folder)
    kept = OmegaConf.load(folder / "config.yaml")
    assert str(kept.optimizer.learning_rate) == finished.data.params["optimizer.learning_rate"]
    assert sorted(path.name for path in (project.root / "outputs" / "sd").iterdir() if path.is_dir()) == [
        "summary",
        "t2",
    ]


def test_a_job_lets_go_of_its_folder_s_lock_when_it_ends_and_the_folder_stays_taken(tmp_path):
    """A basic sweep runs every job in one process, which held a lock file open per job until it exited."""
    from hydra.types import RunMode

    from nnexp.folders import JobFolderError, _held, claim_job_folder
    from nnexp.job.run_folder import RunFolderCallback

    folder = tmp_path / "sweep" / "0"
    folder.mkdir(parents=True)
    claim_job_folder(folder, "${hydra.job.num}")
    held = len(_held)
    config = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "runtime": {"output_dir": str(folder)}}})
    RunFolderCallback().on_job_end(config, None)
    assert len(_held) == held - 1
    with pytest.raises(JobFolderError, match="which another job of the sweep has"):
        claim_job_folder(folder, "${hydra.job.num}")
