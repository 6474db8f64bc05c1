"""The run opened in a thread while the job trains: what is sent meanwhile arrives in order, a failure stops
training with its own error, and the record is the one a run had before the overlap."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from test_cli import artifact_paths

from nnexp.core.activations import Tanh
from nnexp.core.layers import Dense
from nnexp.core.losses import LOSSES
from nnexp.core.network import Sequential
from nnexp.core.optimizers import SGD
from nnexp.core.training import Examples, Stopped, Trainer
from nnexp.errors import ConfigError
from nnexp.job.phases import Phases
from nnexp.tracking.opening import OpeningRun, ending


class FakeRun:
    """Records what it is sent, as the real run would receive it."""

    run_id = "r1"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, method: str):
        return lambda *args: self.calls.append((method, args))


def opened_when(gate: threading.Event, run: FakeRun):
    def opener():
        gate.wait(10)
        return None, run

    return opener


def test_calls_before_the_run_is_open_arrive_in_order_with_the_time_they_were_sent():
    gate, run = threading.Event(), FakeRun()
    opening = OpeningRun()
    opening.open(opened_when(gate, run))
    opening.log_params({"seed": 1})
    sent = int(time.time() * 1000)
    opening.log_metrics({"train_loss": 0.5}, step=1)
    opening.set_tags({"engine": "numpy"})
    assert run.calls == []
    time.sleep(0.05)
    opened = int(time.time() * 1000)
    gate.set()
    assert opening.wait() is run
    opening.log_metrics({"train_loss": 0.4}, step=2)
    methods = [method for method, _ in run.calls]
    assert methods == ["log_params", "log_metrics", "set_tags", "log_metrics"]
    (metrics, step, timestamp) = run.calls[1][1]
    assert (metrics, step) == ({"train_loss": 0.5}, 1) and sent <= timestamp < opened
    assert opening.run_id == "r1"


def test_a_failed_opening_stops_training_and_every_call_raises_its_error():
    rng = np.random.default_rng(0)
    trainer = Trainer(100_000, 4, True)
    opening = OpeningRun()
    opening.on_failure = lambda: trainer.request_stop("the tracking store failed", 1)

    def refuse():
        time.sleep(0.2)  # training is under way
        raise ConfigError("tracking store sqlite:///x cannot be used: no")

    opening.open(refuse)
    network = Sequential([Dense(2, 4, rng, dtype=np.float64), Tanh(), Dense(4, 2, rng, dtype=np.float64)])
    loss = LOSSES.build({"name": "cross_entropy"})
    labels = np.arange(24) % 2
    examples = Examples(rng.normal(size=(24, 2)), loss.encode(labels, 2, np.float64), labels)
    with pytest.raises(Stopped) as stopped:
        trainer.fit(network, loss, SGD(learning_rate=0.1), examples, rng)
    assert len(stopped.value.state.history["train_loss"]) < 100_000
    for call in (opening.check, opening.wait, lambda: opening.log_metrics({"a": 1.0}, 1)):
        with pytest.raises(ConfigError, match="cannot be used: no"):
            call()


def test_ending_gives_the_opening_error_whatever_stopped_the_job():
    opening = OpeningRun()
    opening.open(lambda: (_ for _ in ()).throw(ConfigError("tracking store x cannot be used: gone")))
    with pytest.raises(ConfigError, match="gone"), ending(opening):
        raise KeyboardInterrupt


def test_ending_finishes_the_run_once_open_and_delivers_the_queue_first():
    run = FakeRun()
    opening = OpeningRun()
    opening.open(lambda: (None, run))
    with ending(opening):
        opening.log_params({"seed": 1})
    assert [method for method, _ in run.calls][-2:] == ["log_params", "end"]


def test_cancelled_opening_opens_nothing():
    opening = OpeningRun()
    opening.cancel()
    opening.thread.join(10)
    assert not opening.thread.is_alive() and opening.tracker is None and opening.error is None


def test_overlapped_phase_records_its_work_and_the_part_nobody_waited_for():
    phases = Phases()
    with phases("plots"):
        time.sleep(0.05)
    phases.overlapped("plots", 1.0)
    metrics = phases.metrics()
    assert metrics["system/plots_seconds"] == pytest.approx(1.0)
    assert metrics["system/plots_hidden_seconds"] == pytest.approx(1.0 - phases.seconds["plots"])


#: What the default run (3 epochs) recorded before its MLflow setup and plots overlapped other work (tag values
#: and the run's own ids aside), plus the ``*_hidden_seconds`` metrics that say how much was overlapped, and the
#: data digest's own phase (its seconds were part of ``system/data_seconds`` before).
EXPECTED_TAGS = {
    "blas_threads", "dataset", "dataset_digest", "engine", "loss", "model", "nnexp.heartbeat", "nnexp.host",
    "nnexp.pid", "nnexp.pid_space", "nnexp.pid_started", "nnexp_version", "objective", "objective_direction",
    "optimizer", "output_dir", "overrides", "schedule", "source.activation", "source.dataset", "source.initializer",
    "source.loss", "source.model", "source.optimizer", "source.schedule", "mlflow.runName",
}  # fmt: skip
EXPECTED_PARAMS = {
    "checkpoint.every", "checkpoint.seconds", "dataset.n_samples", "dataset.name", "dataset.noise",
    "dataset.random_state", "dataset.split_random_state", "dataset.test_size", "dataset.val_size",
    "early_stopping.direction", "early_stopping.min_delta", "early_stopping.monitor", "early_stopping.patience",
    "early_stopping.restore_best_weights", "loss.name", "model.activation", "model.hidden_sizes", "model.initializer",
    "model.input_activation", "model.name", "model.output_activation", "model.use_bias", "objective.direction",
    "objective.metric", "optimizer.beta_1", "optimizer.beta_2", "optimizer.epsilon", "optimizer.learning_rate",
    "optimizer.name", "optimizer.weight_decay", "schedule.name", "seed", "trainer.batch_size", "trainer.dtype",
    "trainer.engine", "trainer.epochs", "trainer.shuffle",
}  # fmt: skip
EPOCHS = [1, 2, 3]
EXPECTED_STEPS = {
    "system/epoch_seconds": EPOCHS, "train_accuracy": EPOCHS, "train_loss": EPOCHS,
    "test_accuracy": [3], "test_loss": [3], "system/checkpoints_seconds": [3], "system/data_seconds": [3],
    "system/evaluation_seconds": [3], "system/mlflow_logging_seconds": [3], "system/mlflow_setup_seconds": [3],
    "system/model_seconds": [3], "system/plots_seconds": [3], "system/run_seconds": [3], "system/setup_seconds": [3],
    "system/training_seconds": [3], "system/mlflow_setup_hidden_seconds": [3], "system/plots_hidden_seconds": [3],
    "system/data_digest_seconds": [3], "system/data_digest_hidden_seconds": [3],
}  # fmt: skip
EXPECTED_ARTIFACTS = {
    "checkpoint/checkpoint-e000003-b00000000.npz", "checkpoint/checkpoint.json", "config.yaml",
    "confusion_matrix.csv", "hydra/config.yaml", "hydra/hydra.yaml", "hydra/overrides.yaml", "model.npz",
    "plots/confusion_matrix.png", "plots/decision_boundary.png", "plots/learning_curves.png",
}  # fmt: skip


def test_overlapped_run_records_the_same_params_metrics_tags_and_artifacts(project):
    result = project.run("trainer.epochs=3")
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    client = MlflowClient(tracking_uri=project.store_uri)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert set(run.data.params) == EXPECTED_PARAMS
    assert set(run.data.tags) == EXPECTED_TAGS
    steps = {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
    assert steps == EXPECTED_STEPS
    assert artifact_paths(client, run_id) == EXPECTED_ARTIFACTS
    assert client.search_logged_models([run.info.experiment_id])  # the MLflow model too
    checkpoint = (Path(run.data.tags["output_dir"]) / "checkpoints" / "checkpoint.json").read_text()
    assert run_id in checkpoint  # written after the run was opened in its thread


def test_a_store_that_fails_while_training_stops_it_with_one_line_and_no_folder(project):
    with socket.socket() as silent:  # accepts connections, never answers: found out only after a timeout
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = project.run("trainer.epochs=1000000", f"tracking.uri={uri}", timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: tracking server {uri} ") and result.stderr.count("\n") == 1, result.stderr
    assert not (project.root / "outputs").exists()


#: A plugin that holds the run's opening for a few seconds and says when it starts: a stop can land in it.
SLOW_OPENING = '''
import pathlib
import time

from nnexp.tracking.tracked_run import Tracker

opened = Tracker.open_run


def open_run(self, *args, **kwargs):
    pathlib.Path("opening").touch()
    time.sleep(3)
    return opened(self, *args, **kwargs)


Tracker.open_run = open_run
'''


def test_a_stop_while_the_run_opens_keeps_a_checkpoint_and_the_run_killed(project):
    (project.root / "plugins" / "slow_opening.py").write_text(SLOW_OPENING)
    process = project.start("trainer.epochs=1000000")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (project.root / "opening").exists():
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    [run] = project.runs()
    assert process.returncode == 130
    lines = stderr.strip().splitlines()  # progress lines, shown once the run is open, then one error line
    line = lines[-1]
    assert [error for error in lines if error.startswith("error:")] == [line], stderr
    assert line.startswith("error: interrupted (SIGINT)") and "; checkpoint in " in line, stderr
    assert line.endswith(f"resume with: python -m nnexp resume={run.info.run_id}; MLflow run {run.info.run_id} is "
                         "marked KILLED")  # fmt: skip
    assert run.info.status == "KILLED"
    assert (Path(run.data.tags["output_dir"]) / "checkpoints" / "checkpoint.json").is_file()
