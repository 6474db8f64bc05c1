"""One folder per run: runs and sweeps started in the same second never share an output folder."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from nnexp.errors import ConfigError
from nnexp.folders import SWEEP_DIR, claim

QUICK = ("trainer.epochs=2", "checkpoint.every=0")


def weights_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def assert_same_weights(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_claim_takes_the_next_free_name(tmp_path):
    wanted = tmp_path / "day" / "12-00-00"
    assert claim(str(wanted)) == str(wanted)
    assert claim(str(wanted)) == f"{wanted}_2"
    (tmp_path / "day" / "12-00-00_3").write_text("a file, not a run folder")
    assert claim(str(wanted)) == f"{wanted}_4"


def test_claim_names_a_file_that_blocks_the_folder(tmp_path):
    (tmp_path / "outputs").write_text("")
    with pytest.raises(ConfigError, match=r"cannot create the run folder .*outputs.*Not a directory"):
        claim(str(tmp_path / "outputs" / "day" / "12-00-00"))


def test_claim_of_a_sweep_s_folder_advises_hydra_sweep_dir(tmp_path, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ConfigError) as raised:
        claim(str(tmp_path / "multirun" / "day" / "12-00-00"), SWEEP_DIR)
    assert str(raised.value) == (
        f"cannot create the sweep folder {tmp_path / 'multirun' / 'day'}: Read-only file system (the file system is "
        "read-only; run from a writable folder or set hydra.sweep.dir)"
    )
    with pytest.raises(ConfigError, match=r"cannot create the run folder .* or set hydra\.run\.dir\)$"):
        claim(str(tmp_path / "day" / "12-00-00"))


def test_runs_started_together_keep_their_own_folder_config_weights_and_model(project):
    seeds = range(6)
    processes = [project.start(*QUICK, f"seed={seed}") for seed in seeds]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    client = MlflowClient(tracking_uri=project.store_uri)
    runs = project.runs()
    assert sorted(int(run.data.params["seed"]) for run in runs) == list(seeds)
    folders = {run.data.tags["output_dir"] for run in runs}
    assert len(folders) == len(seeds)
    mlflow.set_tracking_uri(project.store_uri)
    for run in runs:
        seed, folder = int(run.data.params["seed"]), Path(run.data.tags["output_dir"])
        assert yaml.safe_load((folder / "config.yaml").read_text())["seed"] == seed
        logged = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(folder.parent)))
        assert yaml.safe_load(logged.read_text())["seed"] == seed
        hydra_copy = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        assert hydra_copy["seed"] == seed
        kept = weights_of(folder / "model.npz")
        logged_npz = Path(client.download_artifacts(run.info.run_id, "model.npz", str(folder.parent / "dl")))
        assert_same_weights(kept, weights_of(logged_npz))
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").get_raw_model()
        assert_same_weights(kept, model.network.state_dict())


def test_sweeps_started_together_keep_their_own_folders(project):
    processes = [project.start("-m", *QUICK, f"seed={seed},{seed + 10}") for seed in (1, 2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    sweeps = sorted((project.root / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    seeds = [
        sorted(yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["seed"] for job in sweep.glob("[0-9]*"))
        for sweep in sweeps
    ]
    assert sorted(seeds) == [[1, 11], [2, 12]]


def test_a_run_folder_is_used_by_one_process_at_a_time(tmp_path):
    from nnexp.folders import FolderRefused, _held, use_run_folder

    folder = tmp_path / "run"
    use_run_folder(folder, resuming=True)
    try:
        with pytest.raises(FolderRefused, match="is in use by another nnexp process"):
            use_run_folder(folder, resuming=True)  # a second open file description: refused like another process
    finally:
        _held.pop().close()


def test_a_resumed_run_folder_loses_the_partial_files_a_killed_process_left(tmp_path):
    """Killed while model.npz was written: the partial file stayed after the resume finished the run."""
    from nnexp.folders import _held, use_run_folder

    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    partials = [folder / ".model.c1a3209a.partial.npz", folder / "checkpoints" / ".checkpoint-e2.0123abcd.partial.npz"]
    for path in partials:
        path.write_bytes(b"half")
    (folder / "model.npz").write_bytes(b"weights")
    use_run_folder(folder, resuming=True)
    _held.pop().close()
    assert not any(path.exists() for path in partials)
    assert (folder / "model.npz").exists()


def test_a_folder_that_holds_a_run_is_refused_unless_resuming(tmp_path):
    from nnexp.folders import FolderRefused, _held, use_run_folder

    folder = tmp_path / "fixed"
    (folder / ".hydra").mkdir(parents=True)
    (folder / "model.npz").write_bytes(b"weights")
    with pytest.raises(FolderRefused, match=r"fixed already holds a run \(\.hydra, model\.npz\); choose another"):
        use_run_folder(folder, resuming=False)
    use_run_folder(folder, resuming=True)
    _held.pop().close()
    (folder / "model.npz").unlink()  # what a run that failed at setup leaves is no run
    use_run_folder(folder, resuming=False)
    _held.pop().close()
    (folder / ".hydra").rmdir()
    (folder / "checkpoints").mkdir()  # a run killed while training, with hydra.output_subdir=null
    with pytest.raises(FolderRefused, match=r"already holds a run \(checkpoints\)"):
        use_run_folder(folder, resuming=False)


def test_a_failed_run_removes_the_folders_it_created_and_no_more(tmp_path, monkeypatch):
    from nnexp.folders import _held, discard_job_dir, use_run_folder

    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    outside = tmp_path / "elsewhere"
    (outside / "x").mkdir(parents=True)
    (outside / "x" / "kept").write_text("the user's")
    folder = outside / "x" / "a" / "b" / "c"
    use_run_folder(folder, resuming=False)
    _held.pop().close()
    (folder / ".hydra").mkdir()
    discard_job_dir(folder)
    assert sorted(path.name for path in (outside / "x").iterdir()) == ["kept"]


def test_a_fixed_folder_that_holds_a_run_is_refused_and_left_as_it_was(project):
    assert project.run(*QUICK, "hydra.run.dir=fixed", "seed=1").returncode == 0
    folder = project.root / "fixed"
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    for overrides in (("seed=2",), ("optimizer.learning_rate=-1",)):
        result = project.run(*QUICK, "hydra.run.dir=fixed", *overrides)
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors and errors[0].startswith("error: hydra.run.dir=fixed already holds a run ("), result.stderr
        assert "Traceback" not in result.stderr
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
    assert len(project.runs()) == 1


@pytest.mark.parametrize("folder", ["''", "."])
def test_the_folder_nnexp_runs_from_is_no_run_folder(project, folder):
    before = sorted(path.name for path in project.root.iterdir())
    result = project.run(f"hydra.run.dir={folder}", *QUICK)
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "error: hydra.run.dir='.' is the folder nnexp runs from; a run needs a folder of its own, such as outputs/NAME",
    )
    assert sorted(path.name for path in project.root.iterdir()) == before  # no config.yaml, checkpoints, .hydra
    assert project.runs() == []


def test_a_sweep_folder_that_holds_an_earlier_sweep_is_refused(tmp_path):
    from nnexp.folders import FolderRefused, _held, use_sweep_folder

    sweep = tmp_path / "X"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / "model.npz").write_bytes(b"weights")
    with pytest.raises(FolderRefused, match=r"^hydra\.sweep\.dir=.*X already holds a sweep \(jobs 0\); choose another"):
        use_sweep_folder(sweep)
    (sweep / "0" / "model.npz").unlink()
    (sweep / "multirun.yaml").write_text("hydra: {}")
    with pytest.raises(FolderRefused, match=r"X already holds a sweep; choose another folder"):
        use_sweep_folder(sweep)
    (sweep / "multirun.yaml").unlink()
    use_sweep_folder(sweep)  # what a job that failed at setup leaves is no sweep
    try:
        with pytest.raises(FolderRefused, match=r"sweep folder .*X is in use by another nnexp process"):
            use_sweep_folder(sweep)
    finally:
        _held.pop().close()


@pytest.mark.parametrize("filename", ["/tmp/x.log", "x.log", "${hydra.runtime.output_dir}/../x.log"])
def test_a_log_file_outside_the_run_folder_is_refused(filename):
    from omegaconf import OmegaConf

    from nnexp.folders import FolderRefused, check_hydra_paths

    config = OmegaConf.create({"hydra": {"job_logging": {"handlers": {"file": {"filename": filename}}}}})
    with pytest.raises(FolderRefused, match=r"^hydra\.job_logging\.handlers\.file\.filename=.*: a run's log files go"):
        check_hydra_paths(config)
    config.hydra.job_logging.handlers.file.filename = "${hydra.runtime.output_dir}/${hydra.job.name}.log"
    check_hydra_paths(config)


def test_run_and_sweep_folders_given_with_dot_dot_are_normalised():
    from nnexp.folders import normalised_folders

    assert normalised_folders(["hydra.run.dir=outputs/2026/../x", "hydra.sweep.dir=a/./b/../c", "seed=1"]) == [
        "hydra.run.dir=outputs/x",
        "hydra.sweep.dir=a/c",
        "seed=1",
    ]
    assert normalised_folders(["hydra.run.dir='a/../b'"]) == ["hydra.run.dir='a/../b'"]


def test_folders_left_at_setup_by_a_dead_process_are_removed_and_no_others(tmp_path):
    import json
    import subprocess

    from nnexp.folders import FOLDER_LOCK, OPENED, _held, discard_orphan_folders, use_run_folder
    from nnexp.tracking import liveness

    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = {**liveness.where_this_process_lives(), liveness.PID: str(ended.pid), liveness.PID_STARTED: ""}
    day = tmp_path / "outputs" / "2026-01-01"
    for name, record, extra in [
        ("orphan", dead, None),
        ("opened", {**dead, OPENED: True}, None),  # its MLflow run was being opened: the folder is the run's
        ("trained", dead, "model.npz"),
        ("unreadable", None, None),
    ]:
        (day / name / ".hydra").mkdir(parents=True)
        (day / name / "nnexp.log").write_text("")
        (day / name / FOLDER_LOCK).write_text(json.dumps(record) if record else "")
        if extra:
            (day / name / extra).write_bytes(b"weights")
    use_run_folder(day / "live", resuming=False)  # this process, alive
    try:
        removed = discard_orphan_folders(tmp_path)
    finally:
        _held.pop().close()
    why = f"process {ended.pid} on {dead[liveness.HOST]} has ended"
    assert [(orphan.folder.name, orphan.why, orphan.kept, orphan.opened) for orphan in removed] == [
        ("orphan", why, [], False)
    ]
    assert sorted(path.name for path in day.iterdir()) == ["live", "opened", "trained", "unreadable"]


#: A log line as Hydra's job logging writes it.
LOGGED = "[2026-01-01 12:00:00,123][nnexp][INFO] - resuming run 1\n"


@pytest.mark.parametrize(
    ("mine", "kept"),
    [
        ({".hydra/notes.txt": "the user's"}, [".hydra/notes.txt"]),  # was removed with the folder
        ({".hydra/drafts/a.yaml": "x: 1"}, [".hydra/drafts/a.yaml"]),
        ({"nnexp.log": LOGGED + "my own note\n"}, ["nnexp.log"]),
        ({".hydra/config.yaml": "seed: 1\n", "nnexp.log": LOGGED}, []),  # all nnexp's: removed
    ],
)
def test_a_leftover_holding_a_file_nnexp_did_not_write_is_kept_and_said(tmp_path, mine, kept):
    import json
    import subprocess

    from nnexp.folders import FOLDER_LOCK, discard_orphan_folders
    from nnexp.tracking import liveness

    ended = subprocess.Popen(["true"])
    ended.wait()
    folder = tmp_path / "outputs" / "2026-01-01" / "12-00-00"
    (folder / ".hydra").mkdir(parents=True)
    dead = {**liveness.where_this_process_lives(), liveness.PID: str(ended.pid), liveness.PID_STARTED: ""}
    (folder / FOLDER_LOCK).write_text(json.dumps(dead))
    for name, text in mine.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    [orphan] = discard_orphan_folders(tmp_path)
    assert (orphan.folder, orphan.kept) == (folder, kept)
    assert folder.exists() == bool(kept)
    if kept:
        assert all((folder / name).read_text() == text for name, text in mine.items())


def test_a_failed_job_s_folder_holding_a_user_s_file_in_hydra_is_kept(tmp_path, monkeypatch):
    from nnexp.folders import discard_job_dir

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "outputs" / "2026-01-01" / "12-00-00"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (folder / ".hydra" / "mine.txt").write_text("the user's")
    discard_job_dir(folder)
    assert (folder / ".hydra" / "mine.txt").read_text() == "the user's"
    (folder / ".hydra" / "mine.txt").unlink()
    discard_job_dir(folder)
    assert not (tmp_path / "outputs").exists()


def test_a_link_in_a_leftover_is_kept_and_what_it_points_to_untouched(tmp_path, monkeypatch):
    from nnexp.folders import discard_job_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("the user's")
    folder = tmp_path / "outputs" / "run"
    folder.mkdir(parents=True)
    (folder / ".hydra").symlink_to(tmp_path / "data")
    discard_job_dir(folder)
    assert (folder / ".hydra" / "keep.txt").read_text() == "the user's"
def test_outputs_as_a_symbolic_link_to_nothing_is_named_as_one(tmp_path):
    """It read "File exists (a file stands where a folder is expected)", and there was no file."""
    outputs = tmp_path / "outputs"
    outputs.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError) as refused:
        claim(str(outputs / "2026-11-26" / "08-00-00"))
    assert str(refused.value) == (
        f"cannot create the run folder {outputs}: File exists ({outputs} is a symbolic link to {tmp_path / 'gone'}, "
        "which does not exist; create that or remove the link)"
    )
    assert sorted(tmp_path.iterdir()) == [outputs]


@pytest.mark.parametrize("where", ["outputs", "outputs/mlartifacts/x", "outputs/2026-11-26"])
def test_a_run_folder_among_other_records_is_refused(tmp_path, monkeypatch, where):
    """``hydra.run.dir=outputs`` wrote a run's checkpoints, model and plots beside the store's database; a date folder,
    among other runs' folders; one inside ``mlartifacts``, into MLflow's own files."""
    from nnexp.folders import FolderRefused, use_run_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "mlartifacts").mkdir(parents=True)
    (tmp_path / "outputs" / "mlflow.db").write_bytes(b"")
    (tmp_path / "outputs" / "2026-11-26" / "09-00-00").mkdir(parents=True)
    (tmp_path / "outputs" / "2026-11-26" / "09-00-00" / ".nnexp.lock").write_text("{}")
    with pytest.raises(FolderRefused, match=f"^hydra.run.dir={where} holds other records "):
        use_run_folder(Path(where), resuming=False)
    assert not (tmp_path / "outputs" / "mlartifacts" / "x").exists()
    use_run_folder(Path("outputs/2026-11-26/09-00-01"), resuming=False)


@pytest.mark.parametrize("inside", ["model/b", "checkpoints/b", "b/c"])
def test_a_run_folder_inside_another_runs_folder_is_refused_and_not_created(tmp_path, monkeypatch, inside):
    """``hydra.run.dir=outputs/a/model/b`` FINISHED a run inside run a's MLflow model folder, which a's sync and
    logging send as a's own."""
    from nnexp.folders import FolderRefused, use_run_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "a" / "model").mkdir(parents=True)
    (tmp_path / "outputs" / "a" / ".nnexp.lock").write_text("{}")
    expected = f"hydra.run.dir=outputs/a/{inside} lies inside the folder of another run or sweep ({tmp_path}/outputs/a)"
    with pytest.raises(FolderRefused) as refused:
        use_run_folder(Path("outputs/a") / inside, resuming=False)
    assert str(refused.value).startswith(expected)
    assert not (tmp_path / "outputs" / "a" / inside).exists()


def test_a_sweep_job_resumed_in_its_folder_inside_the_sweeps_is_not_refused(tmp_path, monkeypatch):
    from nnexp.folders import _held, use_run_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sw" / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "sw" / ".nnexp.lock").write_text("{}")
    use_run_folder(Path("sw/0"), resuming=True)
    _held.pop().close()


def test_hydra_job_chdir_reads_relative_data_paths_from_where_nnexp_was_started(project, mnist_files):
    """Hydra moved the job into its folder: data/train.csv was looked for there, and a refused run's cleanup then
    removed the folder the process stood in (a FileNotFoundError traceback)."""
    mnist_files.write_csv_pair()
    data = ("dataset=mnist_csv", "dataset.train_path=mnist_train.csv", "dataset.test_path=mnist_test.csv")
    done = project.run(*data, "dataset.val_size=10", "trainer.epochs=1", "hydra.job.chdir=true", "hydra.run.dir=r")
    assert done.returncode == 0, done.stderr
    [run] = project.runs()
    assert run.info.status == "FINISHED"
    assert (project.root / "r" / "model.npz").is_file() and not (project.root / "r" / "outputs").exists()
    refused = project.run(*data, "seed=-1", "hydra.job.chdir=true")
    assert refused.stderr.splitlines() == ["error: seed must be >= 0, got -1"], refused.stderr
    assert project.job_dirs() == []


@pytest.mark.parametrize("arguments", [("--cfg=all", "--resolve"), ("-c", "hydra", "--resolve"), ("--info", "config")])
def test_a_command_line_that_only_shows_the_config_creates_no_folder(project, arguments):
    """``--cfg=all`` (one argument) was not seen as showing only, and its resolved run folder was created."""
    result = project.run(*arguments)
    assert result.returncode == 0, result.stderr
    assert not (project.root / "outputs").exists()


def test_claim_creates_the_folder_whatever_the_process_s_own_arguments(tmp_path, monkeypatch):
    """A process started with ``-c`` (pytest-xdist's workers are) is not showing a config."""
    monkeypatch.setattr(sys, "argv", ["python", "-c", "job"])
    assert claim(str(tmp_path / "day" / "12-00-00")) == str(tmp_path / "day" / "12-00-00")
    assert (tmp_path / "day" / "12-00-00").is_dir()


@pytest.mark.parametrize(
    ("mine", "shown"),
    [
        ({"model/notes.txt": "keep me"}, "model"),  # save_model_folder removed model/ and wrote the MLflow model
        ({"plots/figure.png": "my plot"}, "plots"),  # logged as the run's own plots
        ({"model/two_layer.yaml": "", "optimizer/momentum.yaml": "", "hydra/x.yaml": "", "experiment/a.yaml": ""},
         "experiment, hydra, model, ..."),  # hydra.run.dir=conf
        ({"nnexp.log": "the user's own log\n"}, "nnexp.log"),  # a name setup writes, holding no logger's line
    ],
)
def test_a_folder_holding_files_nnexp_did_not_write_is_refused_and_kept(tmp_path, mine, shown):
    from nnexp.folders import FolderRefused, _held, use_run_folder

    folder = tmp_path / "mine"
    for name, text in mine.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    with pytest.raises(FolderRefused) as refused:
        use_run_folder(folder, resuming=False)
    assert str(refused.value) == (
        f"hydra.run.dir={folder} holds files nnexp did not write ({shown}); a run needs a new or empty folder, "
        "such as outputs/NAME"
    )
    assert {name: (folder / name).read_text() for name in mine} == mine
    assert not (folder / ".nnexp.lock").exists()
    use_run_folder(folder, resuming=True)  # a resumed run goes on in its own folder
    _held.pop().close()


def test_a_large_folder_is_refused_without_being_walked(tmp_path, monkeypatch):
    """``hydra.run.dir=/`` wrote a run into the file system's root; the check must not walk all of it either."""
    from nnexp import folders

    (tmp_path / "bin").mkdir()
    monkeypatch.setattr(folders.os, "walk", lambda *args, **kwargs: pytest.fail("walked"))
    with pytest.raises(folders.FolderRefused, match=r"holds files nnexp did not write \(bin\)"):
        folders.use_run_folder(tmp_path, resuming=False)


def test_a_user_s_folder_as_hydra_run_dir_is_refused_in_one_line_and_kept(project):
    mine = project.root / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "notes.txt").write_text("keep me\n")
    result = project.run(*QUICK, "hydra.run.dir=mine")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "error: hydra.run.dir=mine holds files nnexp did not write (model); a run needs a new or empty folder, "
        "such as outputs/NAME",
    )
    assert sorted(path.relative_to(mine).as_posix() for path in mine.rglob("*")) == ["model", "model/notes.txt"]
    assert (mine / "model" / "notes.txt").read_text() == "keep me\n"
    assert project.runs() == []


def fake_model(path: Path) -> None:
    (path / "data").mkdir(parents=True)
    (path / "MLmodel").write_text("new")


def test_a_model_folder_is_replaced_only_when_the_run_s_lock_says_nnexp_saved_it(tmp_path, monkeypatch):
    from nnexp import serving
    from nnexp.folders import MODEL_SAVED, _held, recorded, use_run_folder
    from nnexp.job.record import save_model_folder

    monkeypatch.setattr(serving, "save_model", lambda path, *args: fake_model(Path(path)))
    folder = tmp_path / "run"
    use_run_folder(folder, resuming=False)
    (folder / "model").mkdir()
    (folder / "model" / "notes.txt").write_text("keep me")  # written after the run's folder was checked
    with pytest.raises(OSError, match="holds files nnexp did not write, which are kept"):
        save_model_folder(None, None, None, folder / "model")
    assert [path.name for path in (folder / "model").iterdir()] == ["notes.txt"]
    (folder / "model" / "notes.txt").unlink()
    (folder / "model").rmdir()
    save_model_folder(None, None, None, folder / "model")
    assert recorded(folder)[MODEL_SAVED] is True
    _held.pop().close()
    use_run_folder(folder, resuming=True)  # the run resumed by a new process: its model folder is still its own
    try:
        assert recorded(folder)[MODEL_SAVED] is True
        (folder / "model" / "MLmodel").write_text("the earlier attempt's")
        save_model_folder(None, None, None, folder / "model")
        assert (folder / "model" / "MLmodel").read_text() == "new"
    finally:
        _held.pop().close()


def test_a_run_folder_name_too_long_for_the_file_system_is_left_to_the_one_line_error(tmp_path, monkeypatch):
    """Its OSError escaped Hydra's callback, printed as a UserWarning block before the one-line error."""
    from nnexp.folders import use_run_folder

    monkeypatch.chdir(tmp_path)
    for folder in ("outputs/" + "x" * 300, "outputs/" + "x" * 300 + "/a"):
        use_run_folder(Path(folder), resuming=False)
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_name_too_long_is_one_line(project):
    folder = "outputs/" + "x" * 300
    result = project.run(f"hydra.run.dir={folder}")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"error: cannot use {folder}: File name too long\n"
