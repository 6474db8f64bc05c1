"""Interrupt a real run with SIGINT or SIGTERM, resume it, and get the weights of a run never interrupted."""

from __future__ import annotations

import json
import re
import signal
import time

import numpy as np
import pytest
from mlflow import MlflowClient

from nnexp import LOSSES, MODELS, OPTIMIZERS, Callback, Examples, Trainer
from nnexp.core.training import Stopped
from nnexp.job import checkpoint
from nnexp.job.checkpoint import Checkpoint

# 14,000 training points: per-sample epochs long enough that a signal lands inside one, with the compiled engine.
RUN = (
    "trainer.epochs=25",
    "trainer.batch_size=1",
    "seed=3",
    "optimizer.learning_rate=0.003",
    "dataset.n_samples=20000",
    "checkpoint.every=1",  # the tests stop it once a few epochs are checkpointed
)


def weights(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def histories(project, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(tracking_uri=project.store_uri)
    run = client.get_run(run_id)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in run.data.metrics
        if not key.endswith("_seconds")  # wall times differ between identical runs
    }


def interrupt(project, signum: int, overrides=RUN):
    """Start a run, stop it with ``signum`` once it has checkpointed a few epochs; returns (process, stderr)."""
    process = project.start(*overrides)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        manifests = list((project.root / "outputs").glob("*/*/checkpoints/checkpoint.json"))
        if manifests and json.loads(manifests[0].read_text())["progress"]["epoch"] >= 3:
            break
        time.sleep(0.1)
    time.sleep(0.05)  # land somewhere inside an epoch
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    return process, stderr


@pytest.mark.parametrize(("signum", "by_run_id"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_interrupted_run_resumes_to_the_same_weights_bit_for_bit(project, signum, by_run_id):
    reference = project.run(*RUN, "hydra.run.dir=outputs/reference")
    assert reference.returncode == 0, reference.stderr
    [finished] = project.runs()
    assert finished.data.tags["engine"] == "compiled", "trainer.engine=auto trains the built-in MLP compiled"

    process, stderr = interrupt(project, signum)
    assert process.returncode == 128 + signum
    line = stderr.strip().splitlines()[-1]
    killed = next(run for run in project.runs() if run.info.run_id != finished.info.run_id)
    name = signal.Signals(signum).name
    assert line.startswith(f"error: interrupted ({name}) in epoch ")
    assert line.endswith(
        f"resume with: python -m nnexp resume={killed.info.run_id}; MLflow run {killed.info.run_id} is marked KILLED"
    )
    assert killed.info.status == "KILLED"
    logged_epochs = len(histories(project, killed.info.run_id)["train_loss"])
    assert logged_epochs >= 3, "every epoch finished before the signal keeps its metrics"
    output_dir = project.root / killed.data.tags["output_dir"]
    saved = checkpoint.load(output_dir / "checkpoints")
    assert saved.manifest["run_id"] == killed.info.run_id
    assert saved.manifest["progress"]["epoch"] == logged_epochs
    client = MlflowClient(tracking_uri=project.store_uri)
    assert "checkpoint/checkpoint.json" in {e.path for e in client.list_artifacts(killed.info.run_id, "checkpoint")}

    target = killed.info.run_id if by_run_id else str(output_dir / "checkpoints")
    resumed = project.run(f"resume={target}")
    assert resumed.returncode == 0, resumed.stderr
    epoch, batches = re.search(r"in epoch (\d+), after (\d+) of its batches", line).groups()
    where = f"in epoch {epoch} of 25, after {batches} of its batches"
    if batches == "0":
        where = f"at the start of epoch {epoch} of 25"
    manifest = (output_dir / "checkpoints" / "checkpoint.json").relative_to(project.root)
    assert f"resuming run {killed.info.run_id} {where} ({manifest})" in resumed.stderr.splitlines()
    assert f"run {killed.info.run_id};" in resumed.stdout + resumed.stderr

    continued = client.get_run(killed.info.run_id)
    assert continued.info.status == "FINISHED"
    again = project.run(f"resume={killed.info.run_id}")
    assert (again.returncode, again.stderr.strip()) == (
        1,
        f"error: run {killed.info.run_id} is FINISHED; there is nothing to resume",
    )
    assert len(project.runs()) == 2, "resume continues the same MLflow run"
    expected = weights(project.root / "outputs" / "reference" / "model.npz")
    got = weights(output_dir / "model.npz")
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert histories(project, killed.info.run_id) == histories(project, finished.info.run_id)


@pytest.mark.parametrize(
    ("epoch", "batch", "where"),
    [
        (11, 0, "at the start of epoch 12 of 20"),
        (411, 654, "in epoch 412 of 500, after 654 of its batches"),
        (20, 0, "after its last epoch (20), to evaluate and log it"),
    ],
)
def test_a_resumed_run_says_where_it_picks_up_and_from_which_file(tmp_path, epoch, batch, where):
    epochs = 500 if batch else 20
    manifest = tmp_path / "outputs" / "run" / "checkpoints" / "checkpoint.json"
    loaded = Checkpoint(manifest, {"run_id": "ab" * 16, "progress": {"epoch": epoch, "batch": batch}}, {})
    expected = f"resuming run {'ab' * 16} {where} (outputs/run/checkpoints/checkpoint.json)"
    assert loaded.resuming(epochs, tmp_path) == expected
    assert loaded.resuming(epochs, tmp_path / "elsewhere").endswith(f"({manifest})"), "outside cwd: the whole path"


def test_a_second_ctrl_c_exits_at_once_and_keeps_the_last_good_checkpoint(project):
    process = project.start(*RUN)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((project.root / "outputs").glob("*/*/checkpoints/*.json")):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted")
    [run] = project.runs()
    assert run.info.status == "KILLED"
    [folder] = list((project.root / "outputs").glob("*/*/checkpoints"))
    saved = checkpoint.load(folder)  # the manifest and the arrays it names agree
    assert sorted(path.name for path in folder.glob("*.npz")) == [saved.manifest["weights"]]
    assert not list(folder.glob(".*partial*"))


def test_resume_refuses_other_overrides_and_unknown_targets(project):
    extra = project.run("resume=0123456789abcdef0123456789abcdef", "trainer.epochs=5")
    assert (extra.returncode, extra.stderr.strip()) == (
        1,
        "error: resume continues a run with its own config; remove trainer.epochs=5 (only tracking.uri= may be given)",
    )
    assert project.run(*RUN[:1], "trainer.epochs=1").returncode == 0  # creates the store
    unknown = project.run("resume=0123456789abcdef0123456789abcdef")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().startswith(
        "error: resume=0123456789abcdef0123456789abcdef: no such checkpoint folder, and no such run in sqlite:///"
    )


def test_resume_notices_a_preset_that_changed(project):
    process, _ = interrupt(project, signal.SIGINT, ("model=two_layer", *RUN))
    assert process.returncode == 130
    preset = project.root / "conf" / "model" / "two_layer.yaml"
    preset.write_text(preset.read_text().replace("hidden_sizes: [50]", "hidden_sizes: [60]"))
    [killed] = project.runs()
    result = project.run(f"resume={killed.info.run_id}")
    assert result.returncode == 1
    assert "the config no longer composes to the run's (model.hidden_sizes)" in result.stderr
    assert MlflowClient(tracking_uri=project.store_uri).get_run(killed.info.run_id).info.status == "KILLED"


class StopAfterEpoch(Callback):
    """Asks to stop when epoch ``epoch`` ends: the stop takes effect before the next epoch's first batch."""

    def __init__(self, trainer: Trainer, epoch: int) -> None:
        self.trainer, self.epoch = trainer, epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch == self.epoch:
            self.trainer.request_stop("stop", 143)


def test_a_stop_before_an_epochs_first_batch_resumes_with_that_epochs_shuffle(tmp_path):
    """The epoch's shuffle is drawn before its first batch: the checkpoint must keep the state it was drawn from."""
    data = np.random.default_rng(5)
    x = data.standard_normal((40, 3)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)
    loss = LOSSES.build({"name": "cross_entropy"})
    train = Examples(x, loss.encode(labels, 2, np.float32), labels)

    def setup():
        rng = np.random.default_rng(1)
        network = MODELS.build({"name": "mlp", "hidden_sizes": [4]}).build(3, 2, loss, rng, np.float32)
        return network, OPTIMIZERS.build({"name": "sgd", "learning_rate": 0.1}), rng, Trainer(3, 8, True)

    network, optimizer, rng, trainer = setup()
    trainer.fit(network, loss, optimizer, train, rng)
    expected = network.state_dict()

    network, optimizer, rng, trainer = setup()
    with pytest.raises(Stopped) as stopped:
        trainer.fit(network, loss, optimizer, train, rng, callbacks=[StopAfterEpoch(trainer, 1)])
    assert (stopped.value.state.epoch, stopped.value.state.batch) == (1, 0)
    config = "trainer:\n  epochs: 3\n"
    identity = {"run_id": "0" * 32, "config": config, "overrides": [], "output_dir": str(tmp_path)}
    state = stopped.value.state
    checkpoint.save(
        tmp_path,
        identity=identity,
        network=network,
        optimizer=optimizer,
        rng=rng,
        state=state,
        callbacks={},
        stopped=True,
    )
    network, optimizer, rng, trainer = setup()
    resumed = checkpoint.load(tmp_path).restore(network, optimizer, rng, {}, trainer, len(train))
    trainer.fit(network, loss, optimizer, train, rng, resume=resumed)
    for key, value in expected.items():
        np.testing.assert_array_equal(network.state_dict()[key], value, err_msg=key)


def test_an_empty_resume_value_is_refused(tmp_path):
    from nnexp.errors import ConfigError
    from nnexp.job.resume import hydra_arguments

    with pytest.raises(ConfigError, match=r"^resume= needs a run id or a checkpoint folder$"):
        hydra_arguments(["resume="], tmp_path)


def test_a_folder_where_the_checkpoint_manifest_belongs_is_refused_before_training(tmp_path):
    """Resumed from MLflow's copy, the run trained to its end, then could keep no checkpoint and ended FAILED."""
    from nnexp.errors import ConfigError
    from nnexp.job.resume import checkpoint_of_run
    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    run = tracker.client.create_run(tracker.experiment_id, tags={"output_dir": str(tmp_path / "run")})
    tracker.client.set_terminated(run.info.run_id, "KILLED")
    (tmp_path / "run" / "checkpoints" / checkpoint.MANIFEST).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"checkpoint\.json: not a file, where the run writes its checkpoint"):
        checkpoint_of_run(run.info.run_id, uri, tmp_path)


def test_a_run_with_no_checkpoint_to_resume_loses_the_partial_file_it_was_writing(tmp_path):
    """Killed while its first checkpoint was written: the run cannot go on, and the 13.7 MB partial file stayed."""
    from nnexp.errors import ConfigError
    from nnexp.job.resume import checkpoint_of_run
    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    run = tracker.client.create_run(tracker.experiment_id, tags={"output_dir": str(tmp_path / "run")})
    tracker.client.set_terminated(run.info.run_id, "KILLED")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / ".checkpoint-e000001-b00000000.d12b3339.partial.npz").write_bytes(b"half")
    (tmp_path / ".notes.0123abcd.partial.txt").write_text("the project's, beside the store")
    with pytest.raises(ConfigError, match=r"the run has no checkpoint, neither in .*/run/checkpoints nor in MLflow$"):
        checkpoint_of_run(run.info.run_id, uri, tmp_path)
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []
    assert (tmp_path / ".notes.0123abcd.partial.txt").exists()


#: Two epochs of a model large enough (9 MB of weights) that keeping and logging it takes a while after training.
BIG_MODEL = ("trainer.epochs=2", "model.hidden_sizes=[1500,1500]", "checkpoint.every=1")


def signal_while_the_model_is_logged(project, signum: int, times: int):
    """Start a run and send ``signum`` ``times`` once training is over and its model is being kept and logged."""
    process = project.start(*BIG_MODEL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((project.root / "outputs").glob("*/*/model.npz")):
        time.sleep(0.01)
    for _ in range(times):
        process.send_signal(signum)
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    return process, stderr.strip().splitlines()


def test_ctrl_c_after_training_ends_the_run_once_its_model_is_kept(project):
    """A stop asked for after training loses nothing trained: the run is FINISHED with its model, and says so."""
    process, lines = signal_while_the_model_is_logged(project, signal.SIGINT, 1)
    [run] = project.runs()
    assert process.returncode == 130
    assert lines[-1].startswith(
        f"error: interrupted (SIGINT) after training; the model is kept and MLflow run {run.info.run_id} is FINISHED"
    )
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert run.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=project.store_uri)
    [output] = client.get_run(run.info.run_id).outputs.model_outputs
    assert client.get_logged_model(output.model_id).status == "READY"


def test_a_second_sigterm_after_training_says_how_to_resume_and_resume_finishes_the_run(project):
    process, lines = signal_while_the_model_is_logged(project, signal.SIGTERM, 2)
    [run] = project.runs()
    run_id = run.info.run_id
    assert process.returncode == 143
    [line] = [line for line in lines if line.startswith("error:")]
    assert line.startswith("error: interrupted again (SIGTERM); the last complete checkpoint is in ")
    assert line.endswith(f"resume with: python -m nnexp resume={run_id}; MLflow run {run_id} is marked KILLED")
    assert run.info.status == "KILLED"
    # The plots were being drawn when the stops came: they are finished, not left half-written by the exit.
    plots = project.root / run.data.tags["output_dir"] / "plots"
    assert sorted(path.name for path in plots.iterdir()) == [
        "confusion_matrix.png",
        "decision_boundary.png",
        "learning_curves.png",
    ]
    resumed = project.run(f"resume={run_id}")
    assert resumed.returncode == 0, resumed.stderr
    assert MlflowClient(tracking_uri=project.store_uri).get_run(run_id).info.status == "FINISHED"


def test_a_run_whose_folder_was_moved_resumes_in_its_new_folder(project):
    process, _ = interrupt(project, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM
    [killed] = project.runs()
    old = project.root / killed.data.tags["output_dir"]
    moved = old.rename(project.root / "outputs" / "moved")

    resumed = project.run("resume=outputs/moved/checkpoints/")
    assert resumed.returncode == 0, resumed.stderr
    assert not old.exists(), "the old folder is not recreated: the run is not split across two folders"
    assert (moved / "model.npz").is_file() and (moved / "checkpoints" / "checkpoint.json").is_file()
    [finished] = project.runs()
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["output_dir"] == str(moved.resolve())
    assert checkpoint.load(moved / "checkpoints").manifest["output_dir"] == str(moved.resolve())


DRIFTING_DATA = """
from pathlib import Path

import numpy as np

from nnexp import DATASETS, Dataset, Splits


@DATASETS.register("drifting")
class Drifting(Dataset):
    def load(self, rng):
        x = rng.normal(size=(20000, 2)) + float(Path("drift.txt").read_text())
        y = (x[:, 0] > x[:, 1]).astype(np.int64)
        return Splits(x[:16000], y[:16000], x[16000:], y[16000:], n_classes=2)
"""


def test_a_resume_on_other_data_is_refused_in_one_line_and_leaves_the_run_and_its_checkpoint_as_they_were(project):
    """The digest is hashed in a thread while training starts; the run's reopening waits for it and refuses."""
    (project.root / "plugins" / "drifting.py").write_text(DRIFTING_DATA)
    (project.root / "drift.txt").write_text("0.0")
    process, _ = interrupt(project, signal.SIGTERM, ("dataset=drifting", *RUN[:4], "checkpoint.every=1"))
    assert process.returncode == 143
    [killed] = project.runs()
    folder = project.root / killed.data.tags["output_dir"] / "checkpoints"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    (project.root / "drift.txt").write_text("0.5")
    resumed = project.run(f"resume={killed.info.run_id}")
    assert resumed.returncode == 1
    assert resumed.stderr.count("\n") == 1 and resumed.stderr.startswith(
        f"error: run {killed.info.run_id} trained on other data than it is given now (dataset_digest "
    )
    [after] = project.runs()
    assert (after.info.status, after.data.tags["dataset_digest"]) == ("KILLED", killed.data.tags["dataset_digest"])
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
