"""The real CLI, run in a subprocess against a real MLflow store in a scratch project."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from mlflow import MlflowClient

from nnexp.config import MAX_TAG_KEY, MAX_TAG_VALUE

QUICK = ("trainer.epochs=3",)
#: The phases every finished run records as ``system/<phase>_seconds``.
PHASES = (
    "setup",
    "data",
    "data_digest",
    "mlflow_setup",
    "mlflow_logging",
    "training",
    "checkpoints",
    "evaluation",
    "model",
    "plots",
    "run",
)
#: The phases whose work overlaps others (a thread's), which also record ``system/<phase>_hidden_seconds``.
OVERLAPPED = ("data_digest", "mlflow_setup", "plots")


def test_version():
    import subprocess
    import sys

    from nnexp import __version__

    shown = subprocess.run([sys.executable, "-m", "nnexp", "--version"], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == f"nnexp {__version__}"


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for entry in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return found


#: The one per-epoch metric in MLflow's System metrics tab (a constant rate is not logged); the phases' totals are
#: the others.
EPOCH_TIME = "system/epoch_seconds"


def test_default_run_is_recorded_with_params_metrics_artifacts_and_tags(project):
    result = project.run(*QUICK)
    assert result.returncode == 0, result.stderr
    assert "test_accuracy=" in result.stdout and "; see it with: nnexp ui, then http://127.0.0.1:5000/" in result.stdout
    assert "warning" not in (result.stdout + result.stderr).lower()
    [run] = project.runs()
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["dataset.name"] == "moons"
    assert params["optimizer.name"] == "adam"
    assert params["model.hidden_sizes"] == "[64, 64]"
    assert params["trainer.epochs"] == "3"
    assert params["trainer.dtype"] == "float32"
    assert (params["trainer.engine"], run.data.tags["engine"]) == ("auto", "compiled")
    client = MlflowClient(tracking_uri=project.store_uri)
    for metric in ("train_loss", "train_accuracy", EPOCH_TIME):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2, 3]
    # MLflow's Model metrics tab shows the model's metrics alone; the rest is under system/, in its own tab.
    model_metrics = {key for key in run.data.metrics if not key.startswith("system/")}
    assert model_metrics == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert 0.5 < run.data.metrics["test_accuracy"] <= 1.0
    assert {
        "config.yaml",
        "model.npz",
        "confusion_matrix.csv",
        "plots/learning_curves.png",
        "plots/confusion_matrix.png",
        "plots/decision_boundary.png",
        "hydra/config.yaml",
        "hydra/overrides.yaml",
    } <= artifact_paths(client, run.info.run_id)
    tags = run.data.tags
    assert (tags["dataset"], tags["model"], tags["loss"], tags["optimizer"]) == (
        "moons",
        "mlp",
        "cross_entropy",
        "adam",
    )
    assert tags["source.dataset"] == "nnexp.datasets.moons"
    assert tags["source.activation"] == "nnexp.core.activations"
    assert tags["source.initializer"] == "nnexp.core.initializers"
    assert len(project.job_dirs()) == 1
    phases = {key: value for key, value in run.data.metrics.items() if key.startswith("system/") and key != EPOCH_TIME}
    overlapped = {f"system/{name}_hidden_seconds" for name in OVERLAPPED}
    assert set(phases) == {f"system/{name}_seconds" for name in PHASES} | overlapped
    counted_once = sum(phases.values()) - 2 * sum(phases[key] for key in overlapped) - phases["system/run_seconds"]
    assert counted_once <= phases["system/run_seconds"]


def test_presets_show_in_tags_and_validation_metrics_are_logged(project):
    result = project.run("model=deep_sigmoid", "dataset.val_size=0.2", "trainer.epochs=2")
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    assert run.data.tags["model"] == "deep_sigmoid"
    assert run.data.params["model.hidden_sizes"] == "[25, 50, 25]"
    assert {"val_loss", "val_accuracy"} <= set(run.data.metrics)


def test_same_seed_gives_identical_metrics_weights_and_data(project):
    histories = []
    for name in ("first", "second"):
        assert (
            project.run("seed=7", "model=two_layer", "trainer.epochs=2", f"hydra.run.dir=outputs/{name}").returncode
            == 0
        )
    client = MlflowClient(tracking_uri=project.store_uri)
    runs = project.runs()
    for run in runs:
        histories.append(
            {
                key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
                for key in run.data.metrics
                if not key.endswith("_seconds")  # wall times differ between identical runs
            }
        )
    assert histories[0] == histories[1]
    weights = []
    for name in ("first", "second"):
        with np.load(project.root / "outputs" / name / "model.npz", allow_pickle=False) as data:
            weights.append({key: data[key] for key in data.files})
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
    # The data's digest is recorded, and equal for equal data.
    digests = {run.data.tags["dataset_digest"] for run in runs}
    assert len(digests) == 1 and len(digests.pop()) == 64
    assert project.run("dataset.noise=0.3", "trainer.epochs=1").returncode == 0
    newest = project.runs()[0]
    assert newest.data.tags["dataset_digest"] != runs[0].data.tags["dataset_digest"]


def test_early_stopping_restores_the_best_epoch_and_logs_best_metrics(project):
    overrides = (
        "dataset.val_size=0.2",
        "early_stopping.patience=3",
        "trainer.epochs=300",
        "optimizer.learning_rate=0.05",
    )
    result = project.run(*overrides)
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    client = MlflowClient(tracking_uri=project.store_uri)
    val_loss = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
    best_epoch = int(run.data.metrics["best_epoch"])
    assert len(val_loss) == best_epoch + 3 < 300, "stopped three epochs after the best one"
    assert run.data.metrics["best_val_loss"] == pytest.approx(val_loss[best_epoch - 1])
    # The saved model is the best epoch's: evaluating it gives that epoch's validation loss.
    output_dir = project.root / run.data.tags["output_dir"]
    assert f"val_accuracy={val_accuracy_at(client, run, best_epoch):.4f}" in result.stdout + result.stderr
    assert (output_dir / "model.npz").is_file()


def val_accuracy_at(client: MlflowClient, run, epoch: int) -> float:
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    return next(m.value for m in history if m.step == epoch)


def test_early_stopping_needs_a_metric_the_run_logs(project):
    result = project.run("early_stopping.patience=3")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: early_stopping.monitor must be one of train_loss, train_accuracy for this run, got 'val_loss'; "
        "this run has no validation split: add one (dataset.val_size=0.2) or monitor a training metric"
    )
    assert project.job_dirs() == []
    assert not (project.root / "outputs").exists()  # not even a new, empty store


def test_checkpoints_can_be_turned_off(project):
    assert project.run("checkpoint.every=0", "trainer.epochs=2").returncode == 0
    [folder] = project.job_dirs()
    assert not (folder / "checkpoints").exists()


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [("moons_deep_sigmoid", ("trainer.epochs=2",)), ("quadrants", ("trainer.epochs=300",))],
)
def test_experiment_presets_run(project, preset, overrides):
    result = project.run(f"experiment={preset}", *overrides)
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    assert run.info.status == "FINISHED" and run.data.tags["experiment"] == preset
    assert "target_accuracy" in run.data.tags


def test_user_plugin_from_the_project_folder(project):
    result = project.run("dataset=circles", "model=two_layer", *QUICK)
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    assert run.data.tags["source.dataset"] == "file plugins/circles.py"


LEAKY = """
import numpy as np

from nnexp import ACTIVATIONS
from nnexp.core.activations import Activation


@ACTIVATIONS.register("leaky")
class Leaky(Activation):
    def forward(self, x):
        self._x = x
        return np.where(x > 0, x, 0.1 * x)

    def backward(self, grad_out, input_grad=True):
        return np.where(self._x > 0, grad_out, 0.1 * grad_out)
"""


def test_a_plugin_activation_trains_with_numpy_and_refuses_the_compiled_engine(project):
    (project.root / "plugins" / "leaky.py").write_text(LEAKY)
    result = project.run("model.activation=leaky", "trainer.epochs=1")
    assert result.returncode == 0, result.stderr
    assert "engine: numpy (activation leaky from file plugins/leaky.py has no kernel)" in result.stdout + result.stderr
    [run] = project.runs()
    assert (run.data.params["trainer.engine"], run.data.tags["engine"]) == ("auto", "numpy")
    assert run.data.tags["source.activation"] == "file plugins/leaky.py"

    refused = project.run("model.activation=leaky", "trainer.engine=compiled", "trainer.epochs=1")
    assert (refused.returncode, refused.stderr.strip()) == (
        1,
        "error: trainer.engine=compiled cannot train this run: activation leaky from file plugins/leaky.py has no "
        "kernel; use trainer.engine=auto",
    )
    assert len(project.runs()) == 1, "a refused config records no run"


def test_help_lists_every_group_and_option(project):
    result = project.run("--help")
    assert result.returncode == 0
    for line in (
        "dataset: circles, mnist_csv, mnist_idx, moons, quadrants",
        "model: deep_sigmoid, mlp, two_layer",
        "loss: cross_entropy, mse",
    ):
        assert line in result.stdout
    assert "optimizer: adam, momentum, rmsprop, sgd" in result.stdout
    assert "schedule: constant, cosine, step" in result.stdout


def test_hydra_help_is_hydras_own_whatever_app_overrides_are_given(project):
    """Hydra's help composes Hydra's config alone: ``dataset=quadrants --hydra-help`` was refused with "Could not
    override 'dataset'. No match in the defaults list." """
    plain = project.run("--hydra-help")
    given = project.run("-m", "dataset=quadrants,moons", "trainer.epochs=2", "resume=x", "--hydra-help")
    assert (given.returncode, given.stderr) == (0, "")
    assert given.stdout == plain.stdout and given.stdout.startswith("Hydra (")
    assert not (project.root / "outputs").exists()


def test_hydra_help_keeps_hydras_overrides_and_help_keeps_all():
    from nnexp.help_flags import hydra_help_arguments

    arguments = ["dataset=quadrants", "+hydra.hydra_help.template=own", "~hydra/launcher", "-m", "--hydra-help"]
    assert hydra_help_arguments(arguments) == arguments[1:]
    assert hydra_help_arguments(["dataset=quadrants", "--help", "--hydra-help"]) == [
        "dataset=quadrants",
        "--help",
        "--hydra-help",
    ]
    assert hydra_help_arguments(["hydrant=1", "--cfg", "job"]) == ["hydrant=1", "--cfg", "job"]


@pytest.mark.parametrize(
    ("arguments", "line"),
    [
        (("--config-dir", "no/such"), "error: --config-dir no/such: expected a folder of YAML configs; there is no"),
        (("-cd", "plugins/circles.py"), "error: --config-dir plugins/circles.py: expected a folder of YAML configs,"),
        (("-cd", ""), "error: --config-dir '': expected a folder of YAML configs, got an empty value"),
        (("--config-path", "conf"), "error: --config-path conf: expected a folder of YAML configs; there is no such"),
        (("--config-name", "nosuch"), "error: Cannot find primary config 'nosuch'. Check that it's in your config"),
    ],
)
def test_a_config_folder_or_name_that_is_not_one_is_one_line_and_writes_nothing(project, arguments, line):
    """An empty --config-dir ran on the working folder, and a relative --config-path said "Primary config directory
    not found." without naming it."""
    result = project.run("dataset=quadrants", "trainer.epochs=2", *arguments)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert not (project.root / "outputs").exists()


#: Runs nnexp's entry point in this process, then reports on stderr which costly libraries it imported.
IMPORT_PROBE = """
import json, runpy, sys
sys.argv = ["nnexp", *sys.argv[1:]]
try:
    runpy.run_module("nnexp", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"mlflow", "sklearn", "matplotlib", "numba"})
print(json.dumps(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("arguments", "shown"),
    [
        (("--help",), "== Configuration groups =="),
        (("dataset=mnist_idx", "--help"), "name: mnist_idx"),
        (("dataset=nope",), "error: dataset=nope is not an option"),
        (("trainer.epochs=-1",), "error: trainer.epochs must be >= 1, got -1"),
        (("optimizer.lr=0.1",), "error: optimizer.lr is not a known key"),
        (("trainer.engine=fast",), "error: trainer.engine expects one of auto, numpy, compiled, got 'fast'"),
    ],
)
def test_help_and_config_errors_import_no_mlflow_sklearn_or_matplotlib(project, arguments, shown):
    """They (and numba) cost seconds to import, and neither the help nor a rejected config needs them."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, *arguments],
        cwd=project.root,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown in result.stdout + result.stderr
    assert json.loads(result.stderr.splitlines()[-1]) == []


def test_a_run_with_the_numpy_engine_never_imports_numba(project):
    """The compiled engine's kernels load in the background only when the engine may use them."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, "trainer.engine=numpy", "trainer.epochs=1"],
        cwd=project.root,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "epoch 1/1" in result.stderr
    # moons needs no scikit-learn, and matplotlib is the plotting process's
    assert json.loads(result.stderr.splitlines()[-1]) == ["mlflow"]


def test_learning_rate_schedule_is_applied_and_logged_per_epoch(project):
    result = project.run("schedule=step", "schedule.step_size=1", "schedule.gamma=0.5", "trainer.epochs=3")
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    assert run.data.tags["schedule"] == "step" and run.data.params["schedule.gamma"] == "0.5"
    rate = float(run.data.params["optimizer.learning_rate"])
    client = MlflowClient(tracking_uri=project.store_uri)
    history = client.get_metric_history(run.info.run_id, "system/learning_rate")
    assert [(m.step, m.value) for m in history] == [(1, rate), (2, rate / 2), (3, rate / 4)]
    assert f"lr={rate / 4:.3g}" in result.stderr  # the progress lines show the rate once it has changed


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optimizer=sgdd", "optimizer=sgdd is not an option; available: adam, momentum, rmsprop, sgd"),
        ("optimizer.lr=0.1", "optimizer.lr is not a known key"),
        ("~trainer", "trainer is part of every run's config and cannot be removed"),
        ("foo=1", "foo is not a known key"),
        ("optimizer.learning_rate=-1", "optimizer.learning_rate must be > 0, got -1.0"),
        ("optimizer.learning_rate=abc", "optimizer.learning_rate expects a number, got 'abc'"),
        ("trainer.batch_size=0", "trainer.batch_size must be >= 1"),
        ("trainer.epochs=0", "trainer.epochs must be >= 1, got 0"),
        ("model.hidden_sizes=[64,0]", "model.hidden_sizes must hold sizes >= 1, got [64, 0]"),
        ("model.hidden_sizes=", "model.hidden_sizes expects a list of integers"),
        ("model.activation=sigmod", "model.activation must be a registered activation"),
        ("trainer.dtype=float16", "trainer.dtype expects one of float32, float64, got 'float16'"),
        ("seed=abc", "seed expects an integer, got 'abc'"),
        ("model.output_activation=softmax", "model.output_activation must be null or identity with CrossEntropy"),
        ("experiment=nonexistent", "experiment=nonexistent is not an option; available: mnist_csv_rashid,"),
        ("model.hidden_sizes=[1,", "cannot parse override 'model.hidden_sizes=[1,'"),
        ("=5", "cannot parse override '=5': no key before '='"),
        ("seed=${oc.env:NNEXP_NOPE}", "seed: KeyError raised while resolving interpolation"),
        ("trainer.epochs=${trainer.nope}", "trainer.epochs: Interpolation key 'trainer.nope' not found"),
        ("checkpoint.every=-1", "checkpoint.every must be >= 0, got -1"),
        # 148 lines of Hydra's traceback before: OmegaConf.resolve names no key
        ("--cfg job --resolve seed=${oc.env:NNEXP_NOPE}", "seed: KeyError raised while resolving interpolation"),
        ("-c all --resolve seed=${oc.env:NNEXP_NOPE}", "seed: KeyError raised while resolving interpolation"),
        (  # recorded in another store, while the last line pointed to the project's
            "+hydra.job.env_set.MLFLOW_TRACKING_URI=sqlite:///elsewhere.db",
            "hydra.job.env_set.MLFLOW_TRACKING_URI: MLflow's settings are nnexp's to make, not the job's",
        ),
        ("resume=", "resume= needs a run id or a checkpoint folder"),
        ("tracking.parent_run_id=deadbeef", "tracking.parent_run_id=deadbeef names a run that must be in it"),
        ("+trainer.foo=1", "trainer.foo is not a known key; valid keys here: epochs, batch_size, shuffle, dtype"),
        ("+optimizer.bar=1", "optimizer.bar is not a known key; valid keys here: learning_rate,"),
        ("tracking.uri=file:///tmp/store", "tracking store file:///tmp/store is a plain directory"),
        ("tracking.uri=/tmp/store", "tracking store /tmp/store has no scheme: write sqlite:////tmp/store for an"),
        ("dataset=circles dataset.noise=-1", "dataset.noise must be >= 0, got -1.0"),
        ("schedule=step schedule.gamma=-1", "schedule.gamma must be in (0, 1], got -1.0"),
        ("optimizer.epsilon=inf", "optimizer.epsilon must be > 0 and finite, got inf"),
        ("dataset.random_state=-1", "dataset.random_state must be in [0, 4294967295] or null, got -1"),
        # Hints that name the fix for the usual slips:
        ("model.hidden_sizes=32,16", "for a list write 'model.hidden_sizes=[32,16]' (quoted for the shell)"),
        ("+experiment=quadrants", "experiment is a config group with a choice already: write experiment=quadrants"),
        ("++model=two_layer", "model is a config group with a choice already: write model=two_layer, without + or ++"),
        ("tags.note=x", "tags.note is not a known key; to add the tag, write +tags.note=..."),
        # Hydra's own files outside the run's folder, where every run overwrote them
        ("hydra.output_subdir=../../escaped", "hydra.output_subdir=../../escaped: must be a folder inside the run's"),
        ("hydra.job.name=../../evil", "hydra.job.name='../../evil': names the run's log file, <name>.log; write a"),
        # A tag nnexp records itself: the run list and resume read output_dir, comparisons the group choices.
        ("+tags.output_dir=/elsewhere", "tags.output_dir: nnexp records the tag output_dir itself; give yours another"),
        ("+tags.dataset=quadrants", "tags.dataset: nnexp records the tag dataset itself; give yours another name"),
        ("+tags.source.model=x", "tags.source: nnexp records the tag source itself; give yours another name"),
        ("model.activation.alpha=0.1", "model.activation names an activation (identity, relu, sigmoid, softmax, tanh)"),
        (  # Hydra's argparse usage block before, here and below
            "seed=1 --cfg job trainer.epochs=2",
            "error: trainer.epochs=2: overrides come together, not on both sides of a flag; "
            "write python -m nnexp seed=1 trainer.epochs=2 --cfg job",
        ),
        (
            "trainer.epochs=2 -m seed=1,2",
            "error: seed=1,2: overrides come together, not on both sides of a flag; "
            "write python -m nnexp trainer.epochs=2 seed=1,2 -m",
        ),
        ("seed=1 --bogus", "error: --bogus is not an option of python -m nnexp (see python -m nnexp --help)"),
        # tracebacks of Hydra's before
        ("--config-name nope", "error: Cannot find primary config 'nope'. Check that it's in your config search path."),
        ("--shell-completion", "error: Expecting one subcommand from ['install', 'uninstall', 'query'] to be set"),
        (  # a UserWarning of two lines, then Hydra's "File ... does not exist!"
            "--experimental-rerun outputs/x/.hydra/config.pickle",
            "error: --experimental-rerun: nnexp's runs keep no .hydra/config.pickle; run again with the overrides",
        ),
        ("--cfg jobs", "error: argument --cfg/-c: invalid choice: 'jobs' (choose from 'job', 'hydra', 'all') (see"),
        pytest.param(  # Hydra looked the key up as a file: "File name too long", naming a path inside Hydra
            f"+tags.{'k' * 300}=v",
            f"error: +tags.{'k' * 34}…: an MLflow tag key holds at most 250 characters, found 300",
            id="tag-key-of-300",
        ),
        pytest.param(
            f"+{'m' * 300}=3",
            f"error: +{'m' * 39}…: name too long for a file name (300 > 255 bytes)",
            id="key-of-300",
        ),
        pytest.param(  # an MLflow server would cut the value short
            f"+tags.a={'v' * 8001}",
            "error: tags.a: an MLflow tag value holds at most 8000 characters, found 8001",
            id="tag-value-of-8001",
        ),
        (  # FAILED "loss became NaN ... try a smaller optimizer.learning_rate": epsilon is 0 in float32
            "optimizer.epsilon=1e-50",
            "error: optimizer.epsilon=1e-50 is 0 in trainer.dtype=float32, whose smallest positive number is 1.4e-45",
        ),
        (  # RuntimeWarnings "overflow encountered in cast", then FAILED "loss became infinite"
            "loss=mse loss.target_low=-1e308 loss.target_high=1e308",
            "error: loss.target_low=-1e+308 is infinite in trainer.dtype=float32",
        ),
        (  # scikit-learn's words: "With n_samples=140, test_size=0.9999999 and train_size=None, the resulting ..."
            "dataset.val_size=0.9999999 dataset.n_samples=200",
            "error: dataset.val_size leaves no training sample: it holds out all 140 samples that test_size=0.3",
        ),
        (  # RuntimeWarnings, then FAILED "loss became NaN" blaming the learning rate
            "dataset.noise=1e300",
            "error: dataset moons: train split: feature 0 of sample 0 is -inf in trainer.dtype=float32 (",
        ),
        (  # printed raw: the escape sequence recoloured the terminal in progress lines, nnexp runs and compare
            "tracking.run_name='red\x1b[31m'",
            "error: tracking.run_name must be text without control characters (such as an escape), got 'red\\x1b[31m'",
        ),
        (  # FINISHED, its config.yaml recording the value, while patience was null
            "early_stopping.min_delta=-1 trainer.epochs=2",
            "error: early_stopping.min_delta must be >= 0, got -1.0",
        ),
        (  # a 60-line traceback: TypeError: '>=' not supported between instances of 'ListConfig' and 'int'
            "model.hidden_sizes=[[1,2]]",
            "error: model.hidden_sizes expects a list of integers, like [64, 32], got [[1, 2]]",
        ),
        (  # numpy's "array is too big" before the memory check
            "model.hidden_sizes=[10000000000]",
            "model.hidden_sizes=[10000000000] needs about 597.0 TiB (parameters, gradients, adam state, batch buffers)",
        ),
        (  # an OOM kill (exit 137) before the memory check
            "model.hidden_sizes=[100000000]",
            "model.hidden_sizes=[100000000] needs about 6.0 TiB (parameters, gradients, adam state, batch buffers)",
        ),
        (  # an OOM kill while make_moons generated the points
            "dataset.n_samples=2147483648",
            "dataset.n_samples=2147483648 needs about 128.0 GiB (generated arrays, split copies, float32 copies)",
        ),
    ],
)
def test_bad_input_is_one_line_with_no_run_and_no_output(project, override, named):
    result = project.run(*override.split())
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert project.job_dirs() == []
    assert all(run.info.status != "RUNNING" for run in project.runs())


def test_the_tag_limits_are_mlflows():
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_TAG_VAL_LENGTH

    assert (MAX_TAG_KEY, MAX_TAG_VALUE) == (MAX_ENTITY_KEY_LENGTH, MAX_TAG_VAL_LENGTH)


BAD_DATA = """
import numpy as np

from nnexp import DATASETS, Dataset, Splits


@DATASETS.register("bad_data")
class BadData(Dataset):
    def __init__(self, fault: str = "feature") -> None:
        self.fault = fault

    def load(self, rng):
        x, y = rng.normal(size=(40, 2)), np.arange(40) % 2
        names = ("a\\nb", "c") if self.fault == "newline" else ("a", "b")
        if self.fault == "feature":
            x[5, 1] = np.nan
        elif self.fault == "label":
            y[3] = 7
        return Splits(x[:30], y[:30], x[30:], y[30:], n_classes=int(y.max()) + 1, class_names=names)
"""


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ("feature", "dataset bad_data: train split: feature 1 of sample 5 is nan, not a finite number"),
        ("label", "dataset bad_data: 2 class names for n_classes=8"),
        # It split nnexp predict's output line in two.
        (
            "newline",
            "dataset bad_data: class name 'a\\nb' must be a string without control characters (such as a newline)",
        ),
    ],
)
def test_a_plugin_dataset_unfit_to_train_on_is_one_line_before_any_run(project, fault, named):
    (project.root / "plugins" / "bad_data.py").write_text(BAD_DATA)
    result = project.run("dataset=bad_data", f"dataset.fault={fault}", *QUICK)
    assert (result.returncode, result.stderr) == (1, f"error: {named}\n")
    assert project.job_dirs() == [] and not (project.root / "outputs" / "mlflow.db").exists()


WRONG_NUMBERS = """
import numpy as np

from nnexp import ACTIVATIONS, LOSSES, Activation
from nnexp.core.losses import MeanSquaredError


@LOSSES.register("neg_mse")
class NegativeMse(MeanSquaredError):
    def value_and_gradient(self, y_true, y_pred):
        value, grad = super().value_and_gradient(y_true, y_pred)
        return value - 10.0, grad


@ACTIVATIONS.register("nan_always")
class NanAlways(Activation):
    def forward(self, x):
        return x * np.nan

    def backward(self, grad_out, input_grad=True):
        return grad_out
"""


@pytest.mark.parametrize(
    ("override", "named"),
    [
        # FINISHED with loss -9.89, whose checkpoints and outbox were then refused as impossible
        ("loss=neg_mse", "loss neg_mse (plugins/wrong.py) returned -9."),
        # FAILED "loss became NaN at epoch 1, batch 1; try a smaller optimizer.learning_rate"
        ("model.activation=nan_always", "activation nan_always (plugins/wrong.py) returned an output holding NaN"),
    ],
)
def test_a_plugin_returning_a_negative_loss_or_nan_is_named_before_any_run(project, override, named):
    (project.root / "plugins" / "wrong.py").write_text(WRONG_NUMBERS)
    result = project.run(override, *QUICK)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {named}")
    assert project.job_dirs() == [] and not (project.root / "outputs" / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("preset", "text", "override", "named"),
    [
        (
            "model/mine.yaml",
            "name: mlp\nhidden_sizez: [8]\n",
            "model=mine",
            "conf/model/mine.yaml: model.hidden_sizez is not a known key; valid keys here: hidden_sizes, activation, ",
        ),
        (
            "experiment/broken.yaml",
            "model:\n  hidden_sizes: [1,\n",
            "experiment=broken",
            "conf/experiment/broken.yaml: not valid YAML: expected the node content, but found '<stream end>' (line 3)",
        ),
        (
            "experiment/deep.yaml",
            "# @package _global_\ntags:\n  a: " + "[" * 5000 + "]" * 5000 + "\n",
            "experiment=deep",
            "conf/experiment/deep.yaml: nested 5002 levels deep; Hydra composes presets nested fewer than 100",
        ),
        (  # looked for a checkpoint named by the preset's value and left outputs/DATE/TIME/.hydra behind
            "experiment/resumer.yaml",
            "# @package _global_\nresume: abc123\n",
            "experiment=resumer",
            "conf/experiment/resumer.yaml: resume is an option of the command line only, as in python -m nnexp "
            "resume=<run id>; remove it from the preset",
        ),
        (  # the line named the key but not the preset that set it
            "experiment/env.yaml",
            "# @package _global_\nseed: ${oc.env:NNEXP_ADV_SEED}\n",
            "experiment=env",
            "conf/experiment/env.yaml: seed: KeyError raised while resolving interpolation: ",
        ),
        (  # a "billion laughs": composing took gigabytes of memory and ignored SIGTERM
            "experiment/laughs.yaml",
            "# @package _global_\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True)),
            "experiment=laughs",
            "conf/experiment/laughs.yaml: line 5: its YAML aliases (here *c) copy more than 10000 values, which "
            "composing would build one by one; write the values out",
        ),
        (  # the line named the key but not the preset that set it, unlike a type error's
            "optimizer/myadam.yaml",
            "defaults: [adam, _self_]\nepsilon: -1\n",
            "optimizer=myadam",
            "conf/optimizer/myadam.yaml: optimizer.epsilon must be > 0, got -1.0\n",
        ),
    ],
    ids=["unknown-key", "not-yaml", "too-deep", "resume-in-a-preset", "unset-variable", "alias-bomb", "range"],
)
def test_a_mistake_in_a_user_preset_is_one_line_naming_the_file(project, preset, text, override, named):
    (project.root / "conf" / preset).write_text(text)
    result = project.run(override, *QUICK)
    assert result.returncode == 1 and result.stderr.startswith(f"error: {named}"), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (project.root / "outputs").exists()


def test_a_key_given_twice_takes_the_later_value_though_the_first_cannot_be_resolved(project):
    """Hydra says the later override wins; nnexp resolved the first one while reading the overrides for the
    checkpoint, a 50-line traceback and a FAILED run whose folder was removed."""
    given = ("seed=${oc.env:NNEXP_NOPE}", "seed=1", "trainer.epochs=${foo:bar}", "trainer.epochs=1")
    result = project.run(*given)
    assert result.returncode == 0, result.stderr
    (run,) = project.runs()
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == "1" and run.data.params["trainer.epochs"] == "1"
    assert run.data.tags["overrides"] == " ".join(given)
    (job,) = project.job_dirs()
    manifest = json.loads((job / "checkpoints" / "checkpoint.json").read_text())
    assert manifest["overrides"] == list(given)


def test_an_in_memory_store_is_refused_before_anything_is_written(project):
    before = sorted(project.root.iterdir())
    result = project.run("tracking.uri=sqlite:///:memory:", *QUICK)
    assert (result.returncode, result.stderr) == (
        1,
        "error: tracking store sqlite:///:memory: is an in-memory database that ends with the process; give a file, "
        "e.g. sqlite:///outputs/mlflow.db\n",
    )
    assert sorted(project.root.iterdir()) == before  # no outputs/, :memory:.lock or mlartifacts/


SLOW_DATA = """
import time
from pathlib import Path

from nnexp import DATASETS, Dataset


@DATASETS.register("slow_data")
class SlowData(Dataset):
    def load(self, rng):
        Path("loading").touch()
        time.sleep(60)
"""


def test_ctrl_c_during_start_up_says_interrupted_in_one_line(project):
    (project.root / "plugins" / "slow_data.py").write_text(SLOW_DATA)
    process = project.start("dataset=slow_data", *QUICK)
    deadline = time.monotonic() + 60
    while not (project.root / "loading").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (128 + signal.SIGINT, "error: interrupted (SIGINT)\n")
    assert not (project.root / "outputs").exists()


#: A real SIGINT, sent by the process to itself as Python imports ``nnexp.core.network`` for the package: a Ctrl-C
#: in the half second the imports take, at a moment a test can name.
CTRL_C_AT_IMPORT = """
import importlib.abc, os, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "nnexp.core.network":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
"""


@pytest.mark.parametrize("command", [["-m", "nnexp", *QUICK], ["-c", "import nnexp"]])
def test_ctrl_c_while_nnexp_is_imported_is_one_line_for_the_command_only(project, tmp_path, command):
    """``python -m nnexp`` says ``interrupted`` (a traceback before); a program importing nnexp keeps its
    KeyboardInterrupt."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CTRL_C_AT_IMPORT)
    env = project.env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, *command], cwd=project.root, env=env, capture_output=True, text=True)
    if command[0] == "-m":
        assert (result.returncode, result.stdout, result.stderr) == (130, "", "error: interrupted (SIGINT)\n")
        assert not (project.root / "outputs").exists()
    else:
        assert result.returncode != 0 and result.stderr.rstrip().endswith("KeyboardInterrupt"), result.stderr


def test_experiment_outside_a_project_says_where_presets_live(project, tmp_path):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    project.root = empty
    result = project.run("experiment=quadrants")
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "error: experiment presets live in conf/experiment/ of the directory you run nnexp from; none found here"
    )
    result = project.run("model=two_layer")
    assert result.stderr.strip() == (
        "error: model=two_layer is not an option; available: mlp (presets are read from conf/model/ of the folder "
        "you run nnexp from, and there is none here)"
    )


def test_unreachable_tracking_server_fails_before_training(project):
    result = project.run("tracking.uri=http://127.0.0.1:9")
    assert result.returncode != 0
    assert result.stderr.startswith("error: tracking server http://127.0.0.1:9 is unreachable: ")
    assert result.stderr.count("\n") == 1 and project.job_dirs() == []


def test_a_database_store_that_refuses_connections_fails_in_one_line_before_training(project):
    pytest.importorskip("psycopg")  # the driver SQLAlchemy 2.1 loads for postgresql://
    with socket.socket() as held:  # bound, not listening: connections to it are refused (MLflow retried for 100 s)
        held.bind(("127.0.0.1", 0))
        uri = f"postgresql://u@127.0.0.1:{held.getsockname()[1]}/db"
        result = project.run(f"tracking.uri={uri}", "trainer.epochs=1", timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: tracking store {uri} cannot be used: connection failed: "), result.stderr
    assert result.stderr.count("\n") == 1 and project.job_dirs() == []


def test_data_command_without_network_fails_fast_in_one_line(project):
    with socket.socket() as probe:  # a port on this machine that nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    result = project.run("data", "mnist", "mnist", "--mirror", url, timeout=30)
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: cannot download train-images-idx3-ubyte.gz") and "connection refused" in last
    assert "t10k-labels-idx1-ubyte.gz into mnist by hand" in last
    assert project.job_dirs() == []


def test_divergence_fails_the_run_with_its_reason(project):
    result = project.run("optimizer=sgd", "optimizer.learning_rate=1e30", *QUICK)
    assert result.returncode != 0
    assert result.stderr.startswith("error: loss became") and "epoch 1" in result.stderr
    [run] = project.runs()
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("loss became")


def test_a_model_plugin_without_a_footprint_that_cannot_be_allocated_is_one_line(project):
    (project.root / "plugins" / "huge.py").write_text(
        "from nnexp import MODELS\n"
        "from nnexp.models.mlp import MLP\n\n\n"
        "@MODELS.register('huge')\n"
        "class Huge(MLP):\n"
        "    def footprint(self, n_inputs, n_outputs, loss):\n"
        "        return None\n"
    )
    result = project.run("model=huge", "model.hidden_sizes=[10000000000]")
    assert result.returncode == 1
    assert result.stderr.startswith("error: out of memory while building the network: Unable to allocate ")
    assert result.stderr.endswith("; use a smaller model\n") and result.stderr.count("\n") == 1
    assert project.job_dirs() == [] and project.runs() == []


SCHEDULE_PLUGIN = """
import numpy as np

from nnexp import SCHEDULES, Schedule


@SCHEDULES.register("my_sched")
class MySched(Schedule):
    def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
        if epoch < 3:
            return base_rate
        {at_epoch_3}
"""


@pytest.mark.parametrize(
    ("at_epoch_3", "reason"),
    [
        (
            "return -0.5",
            "schedule 'my_sched' (file plugins/my_sched.py) gave learning rate -0.5 at epoch 3; "
            "a rate must be finite and > 0",
        ),
        (
            "return np.ones((10**6, 10**7))",  # 80 TB: numpy's MemoryError, in the training phase
            "out of memory while training: Unable to allocate 72.8 TiB for an array with shape (1000000, 10000000) "
            "and data type float64; use a smaller model or trainer.batch_size, or free memory",
        ),
        (
            None,  # step's rate 0.5 * 1e-30 ** 2 is 0 in float32, the default dtype: the run trained on at rate 0
            f"schedule 'step' (nnexp.core.schedules) gave learning rate {0.5 * 1e-30**2!r} at epoch 3, "
            "which is 0.0 as the run's float32; a rate must be finite and > 0",
        ),
    ],
    ids=["negative_rate", "memory_error", "rate_0_in_float32"],
)
def test_a_failure_during_training_is_a_failed_run_with_its_reason_in_one_line(project, at_epoch_3, reason):
    if at_epoch_3 is None:
        schedule = ("schedule=step", "schedule.step_size=1", "schedule.gamma=1e-30", "optimizer.learning_rate=0.5")
    else:
        (project.root / "plugins" / "my_sched.py").write_text(SCHEDULE_PLUGIN.format(at_epoch_3=at_epoch_3))
        schedule = ("schedule=my_sched",)
    result = project.run(*schedule, "trainer.epochs=5")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"error: {reason}"
    assert "Traceback" not in result.stderr
    [run] = project.runs()
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == reason
    client = MlflowClient(tracking_uri=project.store_uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]


@pytest.mark.parametrize("signum", [signal.SIGTERM, getattr(signal, "SIGUSR1", signal.SIGTERM)], ids=["TERM", "USR1"])
def test_a_stop_signal_marks_the_run_killed_in_one_line(project, signum):
    """``kill -USR1`` ended a run as the shell's "User defined signal 1", exit 138, no checkpoint, run RUNNING."""
    # Lines wait for the run to open while training goes on: enough epochs that the first line is shown mid-run.
    process = project.start("experiment=moons_deep_sigmoid", "trainer.epochs=100000")
    first_progress = process.stderr.readline()
    assert re.search(r" epoch \d+/100000 ", first_progress), first_progress
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    [run] = project.runs()
    [line] = stderr.strip().splitlines()
    name = signal.Signals(signum).name
    assert line.startswith(f"error: interrupted ({name}) in epoch ")
    assert line.endswith(
        f"resume with: python -m nnexp resume={run.info.run_id}; MLflow run {run.info.run_id} is marked KILLED"
    )
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"].startswith(f"interrupted ({name}) in epoch")
    assert (project.root / run.data.tags["output_dir"] / "checkpoints" / "checkpoint.json").is_file()


def test_runs_started_together_share_a_new_store(project):
    """Two processes opening a new SQLite store at once would crash in MLflow's schema migrations."""
    processes = [project.start(*QUICK, f"hydra.run.dir=outputs/together{i}") for i in range(3)]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    assert [run.info.status for run in project.runs()] == ["FINISHED"] * 3


def test_phases_count_each_second_once(monkeypatch):
    """A phase entered inside another takes its time out of the outer one."""
    from nnexp.job import phases as module

    clock = iter(range(100))
    monkeypatch.setattr(module.time, "perf_counter", lambda: float(next(clock)))
    phases = module.Phases()  # the clock reads 0
    with phases("training"):  # 1
        with phases("checkpoints"):  # 2
            pass  # 3
        with phases("training"):  # 4
            pass  # 5
    # the outer phase ends at 6; metrics() reads 7, and 8 for the run's total
    assert phases.metrics() == {
        "system/training_seconds": 4.0,
        "system/checkpoints_seconds": 1.0,
        "system/run_seconds": 8.0,
    }


def test_git_state_names_the_commit_and_whether_the_tree_is_dirty(tmp_path):
    import subprocess

    from nnexp.tracking.store import git_state

    assert git_state(tmp_path) == {}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("one")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": "false"}
    (tmp_path / "notes.txt").write_text("an untracked file elsewhere changes no run")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": "false"}
    for folder in ("plugins", "conf/model"):  # an untracked plugin or preset does
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "mine.py").write_text("")
        assert git_state(tmp_path) == {"git_commit": head, "git_dirty": "true"}
        (tmp_path / folder / "mine.py").unlink()
    (tmp_path / "a.txt").write_text("two")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": "true"}


def test_a_run_is_named_by_its_preset_and_the_overrides_given(project):
    result = project.run("experiment=quadrants", "trainer.epochs=3", "optimizer.learning_rate=0.5", "+tags.note=x")
    assert result.returncode == 0, result.stderr
    assert project.run("trainer.epochs=1", f"tracking.uri={project.store_uri}").returncode == 0
    assert [run.info.run_name for run in project.runs()] == [
        "epochs=1",  # where it is recorded does not name it
        "quadrants epochs=3 learning_rate=0.5",
    ]
