"""The network as an MLflow pyfunc model: no pickle, rebuilt from JSON and npz, predictions equal nnexp's own."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nnexp import ACTIVATIONS, DATASETS, LOSSES, MODELS, Activation, Layer, Sequential
from nnexp.core.activations import softmax
from nnexp.errors import DataError, NnexpError
from nnexp.network_files import SPEC_FILE, WEIGHTS_FILE, NetworkSpec, describe, load, probabilities
from nnexp.serving import DATA_DIR, EXAMPLE_ROWS, log_model, save_model

MODEL_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "input_example.json",
    "serving_input_example.json",
    f"data/{DATA_DIR}/{SPEC_FILE}",
    f"data/{DATA_DIR}/{WEIGHTS_FILE}",
}


def trained_like(loss_name: str, n_inputs: int = 3, n_classes: int = 4, dtype: type = np.float32, **mlp):
    """A network built by the MLP plugin, every parameter (biases too) set to random values as if trained."""
    rng = np.random.default_rng(7)
    loss = LOSSES.build({"name": loss_name})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [5], **mlp}).build(n_inputs, n_classes, loss, rng, dtype)
    for _, param, _ in network.parameters():
        param[...] = rng.standard_normal(param.shape)
    return network, loss


def expected_probabilities(network, loss, x: np.ndarray) -> np.ndarray:
    """nnexp's own forward pass and the loss's probabilities, normalised to sum 1 when they are outputs."""
    found = loss.probabilities(network.forward(x.astype(network.dtype))).astype(np.float64)
    return found / found.sum(axis=1, keepdims=True)


def inputs(n_rows: int = 6, n_features: int = 3) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n_rows, n_features))


def files_in(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


CASES = {
    "cross_entropy": ("cross_entropy", {"activation": "relu"}),
    "mse_sigmoid_input_bias_no_dense_bias": (
        "mse",
        {"activation": "tanh", "input_activation": "tanh", "use_bias": False},
    ),
    "mse_softmax_float64": ("mse", {"output_activation": "softmax", "dtype": np.float64}),
}


@pytest.mark.parametrize("case", CASES)
def test_loaded_model_predicts_nnexps_probabilities_and_labels(case, tmp_path):
    import mlflow.pyfunc

    loss_name, options = CASES[case]
    network, loss = trained_like(loss_name, **options)
    names = ["ant", "bee", "cat", "dog"]
    save_model(tmp_path / "model", network, describe(network, loss, names), inputs())
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    x = inputs()
    expected = expected_probabilities(network, loss, x)
    for given in (x, pd.DataFrame(x)):
        frame = model.predict(given)
        assert list(frame.columns) == ["label", *(f"probability_{name}" for name in names)]
        assert frame["label"].tolist() == [names[i] for i in expected.argmax(axis=1)]
        np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_loaded_model_takes_rows_of_any_numeric_dtype_lists_and_dataframes(tmp_path):
    import mlflow.pyfunc

    network, loss = trained_like("cross_entropy")  # a float32 model
    save_model(tmp_path / "model", network, describe(network, loss, ["a", "b", "c", "d"]), inputs())
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    x = np.round(inputs() * 3)
    expected = model.predict(x)
    for given in (
        x.astype(np.float32),
        x.astype(np.int64),
        x.astype(np.int8),
        x.tolist(),
        x.astype(int).tolist(),
        pd.DataFrame(x.astype(np.int32), columns=["f1", "f2", "f3"]),
    ):
        pd.testing.assert_frame_equal(model.predict(given), expected)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            np.zeros(3),
            r"^expected rows of 3 numbers \(an array, a list of rows or a DataFrame\), got an input of shape "
            r"\(3,\) \(one row is \[\[\.\.\.\]\]\)$",
        ),
        ([[1, 2, 3], [4, 5]], r"^expected rows of 3 numbers .*, got a list that is not: .*inhomogeneous"),
        ([["1", "2", "x"]], r"^expected rows of 3 numbers .*, got a list that is not: could not convert string"),
        (np.zeros((2, 4)), r"^expected rows of 3 numbers .*, got an input of shape \(2, 4\)$"),
    ],
)
def test_input_that_is_not_rows_of_numbers_is_one_line(tmp_path, given, message):
    import mlflow.pyfunc

    network, loss = trained_like("cross_entropy")
    save_model(tmp_path / "model", network, describe(network, loss, ["a", "b", "c", "d"]), inputs())
    with pytest.raises(DataError, match=message):
        mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(given)


def test_mlflow_models_predict_takes_integer_rows_from_json(tmp_path):
    network, loss = trained_like("cross_entropy")
    save_model(tmp_path / "model", network, describe(network, loss, ["a", "b", "c", "d"]), inputs())
    rows = [[1, 0, -2], [3, 1, 0]]
    (tmp_path / "input.json").write_text(json.dumps({"inputs": rows}))
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow_cli, "models", "predict", "-m", str(tmp_path / "model"), "-i", str(tmp_path / "input.json")]
    command += ["-t", "json", "--env-manager", "local", "-o", str(tmp_path / "output.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    predictions = json.loads((tmp_path / "output.json").read_text())["predictions"]
    expected = expected_probabilities(network, loss, np.array(rows, dtype=np.float64))
    assert [row["label"] for row in predictions] == ["abcd"[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose([[row[f"probability_{c}"] for c in "abcd"] for row in predictions], expected, rtol=1e-6)


def test_the_loaded_model_refuses_rows_that_are_not_finite(tmp_path):
    import mlflow.pyfunc

    network, loss = trained_like("cross_entropy")
    save_model(tmp_path / "model", network, describe(network, loss, ["a", "b", "c", "d"]), inputs())
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    x = inputs()
    x[2, 1] = np.nan
    for given in (x, pd.DataFrame(x)):  # counted from 1, as people count rows and columns
        with pytest.raises(DataError, match=r"^row 3, column 2: nan is not a finite number$"):
            model.predict(given)
    x[2, 1] = 1e300  # finite, but not in the model's float32
    with pytest.raises(DataError, match=r"^row 3, column 2: 1e\+300 is too large for float32$"):
        model.predict(x)


def test_cross_entropy_probabilities_are_the_softmax_of_the_logits(tmp_path):
    network, loss = trained_like("cross_entropy")
    save_model(tmp_path / "model", network, describe(network, loss, list("abcd")), inputs())
    rebuilt = load(tmp_path / "model" / "data" / DATA_DIR)
    x = inputs()
    logits = network.forward(x.astype(np.float32)).astype(np.float64)
    np.testing.assert_allclose(rebuilt.probabilities(x), softmax(logits), rtol=1e-6)


def test_saved_model_holds_no_pickle_and_loads_with_allow_pickle_false(tmp_path):
    network, loss = trained_like("cross_entropy")
    save_model(tmp_path / "model", network, describe(network, loss, list("abcd")), inputs())
    folder = tmp_path / "model"
    assert files_in(folder) == MODEL_FILES
    for path in folder.rglob("*"):
        assert path.suffix not in (".pkl", ".pickle", ".joblib", ".cloudpickle")
        if path.is_file() and path.suffix != ".npz":
            assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"
    with np.load(folder / "data" / DATA_DIR / WEIGHTS_FILE, allow_pickle=False) as weights:
        stored = {key: weights[key] for key in weights.files}
    assert all(array.dtype != object for array in stored.values())
    assert stored.keys() == network.state_dict().keys()
    for key, param in network.state_dict().items():
        np.testing.assert_array_equal(stored[key], param)
    flavors = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
    assert list(flavors) == ["python_function"]
    assert flavors["python_function"]["loader_module"] == "nnexp.serving"
    assert flavors["python_function"]["data"] == f"data/{DATA_DIR}"
    assert not {"python_model", "cloudpickle_version", "artifacts"} & set(flavors["python_function"])


def test_rebuilt_network_has_the_same_layers_and_weights(tmp_path):
    network, loss = trained_like("mse", input_activation="sigmoid", activation="relu")
    save_model(tmp_path / "model", network, describe(network, loss, list("abcd")), inputs())
    rebuilt = load(tmp_path / "model" / "data" / DATA_DIR).network
    assert [type(layer) for layer in rebuilt.layers] == [type(layer) for layer in network.layers]
    assert rebuilt.dtype == network.dtype
    for key, param in network.state_dict().items():
        np.testing.assert_array_equal(rebuilt.state_dict()[key], param)


def test_signature_and_input_example_are_saved(tmp_path):
    network, loss = trained_like("cross_entropy")
    x = inputs(n_rows=10)
    save_model(tmp_path / "model", network, describe(network, loss, list("abcd")), x)
    meta = yaml.safe_load((tmp_path / "model" / "MLmodel").read_text())
    assert meta["signature"]["inputs"] is None  # the model converts what MLflow's schema would refuse
    outputs = json.loads(meta["signature"]["outputs"])
    assert [(column["name"], column["type"]) for column in outputs] == [
        ("label", "string"),
        *((f"probability_{name}", "double") for name in "abcd"),
    ]
    assert meta["saved_input_example_info"]["artifact_path"] == "input_example.json"
    example = json.loads((tmp_path / "model" / "input_example.json").read_text())
    np.testing.assert_allclose(np.array(example), x[:EXAMPLE_ROWS])


def test_requirements_are_explicit_and_saving_needs_no_network_or_subprocess(tmp_path, monkeypatch):
    import mlflow

    from nnexp import __version__

    def refuse(*args, **kwargs):
        raise AssertionError("saving a model must not reach the network or start a process")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    network, loss = trained_like("cross_entropy")
    save_model(tmp_path / "model", network, describe(network, loss, list("abcd")), inputs())
    requirements = (tmp_path / "model" / "requirements.txt").read_text().splitlines()
    assert requirements == [f"mlflow=={mlflow.__version__}", f"nnexp=={__version__}", f"numpy=={np.__version__}"]


def test_the_model_folder_is_the_one_mlflows_save_model_writes(tmp_path):
    """nnexp writes MLflow's format itself, to skip save_model's scan of every installed distribution; if MLflow
    changes what its save_model writes, this says so."""
    import mlflow.pyfunc

    from nnexp.serving import pip_requirements, signature

    network, loss = trained_like("cross_entropy")
    spec = describe(network, loss, list("abcd"))
    save_model(tmp_path / "nnexp", network, spec, inputs())
    staging = tmp_path / "staging" / DATA_DIR
    staging.mkdir(parents=True)
    network.save(staging / WEIGHTS_FILE)
    (staging / SPEC_FILE).write_text(spec.to_json())
    mlflow.pyfunc.save_model(
        str(tmp_path / "mlflow"),
        loader_module="nnexp.serving",
        data_path=str(staging),
        signature=signature(spec),
        input_example=inputs()[:EXAMPLE_ROWS],
        pip_requirements=pip_requirements(),
        uv_project_path=str(staging),  # not the working directory's uv project, if it has one
    )
    ours, theirs = tmp_path / "nnexp", tmp_path / "mlflow"
    assert files_in(ours) == files_in(theirs) == MODEL_FILES
    for name in MODEL_FILES - {"MLmodel"}:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    mine, mlflows = (yaml.safe_load((folder / "MLmodel").read_text()) for folder in (ours, theirs))
    for meta in (mine, mlflows):
        del meta["utc_time_created"], meta["model_uuid"]
    assert mine == mlflows


def test_a_uv_project_in_the_working_directory_is_not_copied_into_the_model(tmp_path, monkeypatch):
    (tmp_path / "uv.lock").write_text("version = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    monkeypatch.chdir(tmp_path)
    network, loss = trained_like("cross_entropy")
    save_model(tmp_path / "model", network, describe(network, loss, list("abcd")), inputs())
    assert files_in(tmp_path / "model") == MODEL_FILES


def test_mnist_models_record_their_image_shape_and_pixel_scaling():
    network, loss = trained_like("cross_entropy", n_inputs=784, n_classes=10)
    dataset = DATASETS.build({"name": "mnist_idx", "scaling": "offset"})
    spec = describe(network, loss, [str(digit) for digit in range(10)], dataset)
    assert (spec.image_shape, spec.pixel_scaling, spec.n_features) == ([28, 28], "offset", 784)
    moons = describe(
        *trained_like("cross_entropy", n_inputs=2, n_classes=2), ["0", "1"], DATASETS.build({"name": "moons"})
    )
    assert (moons.image_shape, moons.pixel_scaling, moons.n_features) == (None, None, 2)


def test_spec_round_trips_through_json_and_rejects_other_formats():
    network, loss = trained_like("mse", input_activation="tanh")
    spec = describe(network, loss, list("abcd"))
    assert NetworkSpec.from_json(spec.to_json(), "network.json") == spec
    assert spec.probabilities == "normalize"
    assert [entry["type"] for entry in spec.layers] == [
        "bias",
        "activation",
        "dense",
        "activation",
        "dense",
        "activation",
    ]
    newer = json.loads(spec.to_json()) | {"format": 99}
    with pytest.raises(DataError, match=r"^some/network\.json: network format 99; this nnexp reads format 1$"):
        NetworkSpec.from_json(json.dumps(newer), "some/network.json")
    with pytest.raises(DataError, match=r"^some/network\.json: not an nnexp network description"):
        NetworkSpec.from_json("[1, 2]", "some/network.json")
    twice = json.loads(spec.to_json()) | {"class_names": ["a", "b", "a", "d"]}  # predict would print "a" for two
    with pytest.raises(DataError, match=r"class_names must be different names, one per class, found \['a', 'b', 'a'"):
        NetworkSpec.from_json(json.dumps(twice), "some/network.json")


def test_a_layer_nnexp_cannot_rebuild_is_named():
    class Doubling(Layer):
        def forward(self, x):
            return 2 * x

    network, loss = trained_like("cross_entropy")
    with pytest.raises(NnexpError, match=r"layer .*Doubling cannot be saved in an MLflow model"):
        describe(Sequential([*network.layers, Doubling()]), loss, list("abcd"))


def test_class_names_must_match_the_outputs():
    network, loss = trained_like("cross_entropy")
    with pytest.raises(NnexpError, match="the network has 4 outputs but 2 class names are given"):
        describe(network, loss, ["a", "b"])


def test_an_activation_with_config_fields_keeps_them(tmp_path, restore_registries):
    @ACTIVATIONS.register("leaky")
    class Leaky(Activation):
        def __init__(self, slope: float = 0.01) -> None:
            super().__init__()
            self.slope = slope

        def forward(self, x):
            return np.where(x > 0, x, self.slope * x)

    network, loss = trained_like("cross_entropy")
    network.layers[1] = Leaky(slope=0.5)
    spec = describe(network, loss, list("abcd"))
    assert spec.layers[1] == {"type": "activation", "name": "leaky", "config": {"slope": 0.5}}
    assert spec.build().layers[1].slope == 0.5


def test_normalised_probabilities_clip_negatives_and_share_an_all_zero_row():
    found = probabilities(np.array([[2.0, -1.0, 2.0], [0.0, 0.0, 0.0]]), "normalize")
    np.testing.assert_allclose(found, [[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3]])


def test_log_model_makes_a_logged_model_that_runs_uris_resolve(tmp_path):
    import mlflow.pyfunc
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    network, loss = trained_like("cross_entropy")
    with tracker.start_run("serving", {}) as run:
        run.log_params({"model.hidden_sizes": "[5]"})
        run.log_metrics({"train_loss": 0.5}, step=1)
        run.log_metrics({"train_loss": 0.25, "test_accuracy": 0.75}, step=2)  # still buffered: log_model flushes
        model_id = log_model(run, network, describe(network, loss, list("abcd")), inputs(), step=2)
    client = tracker.client
    logged = client.get_logged_model(model_id)
    assert (logged.name, str(logged.status), logged.source_run_id) == ("model", "READY", run.run_id)
    assert logged.params == {"model.hidden_sizes": "[5]"}
    assert {(m.key, m.value, m.step) for m in logged.metrics} == {("train_loss", 0.25, 2), ("test_accuracy", 0.75, 2)}
    outputs = client.get_run(run.run_id).outputs.model_outputs
    assert [(output.model_id, output.step) for output in outputs] == [(model_id, 2)]
    assert len(client.get_metric_history(run.run_id, "test_accuracy")) == 1  # linked, not logged twice
    with _use_tracking_uri(uri):
        model = mlflow.pyfunc.load_model(f"runs:/{run.run_id}/model")
    assert model.metadata.run_id == run.run_id and model.metadata.model_id == model_id
    x = inputs()
    expected = expected_probabilities(network, loss, x)
    np.testing.assert_allclose(model.predict(x).iloc[:, 1:].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_log_model_keeps_a_local_copy_stamped_with_the_run_and_model_ids(tmp_path):
    import mlflow.pyfunc

    from nnexp.tracking.tracked_run import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")
    network, loss = trained_like("cross_entropy")
    copy = tmp_path / "job" / "model"
    with tracker.start_run("serving", {}) as run:
        first = log_model(run, network, describe(network, loss, list("abcd")), inputs(), directory=copy)
        second = log_model(run, network, describe(network, loss, list("abcd")), inputs(), directory=copy)  # resumed
    meta = yaml.safe_load((copy / "MLmodel").read_text())
    assert (meta["run_id"], meta["model_id"]) == (run.run_id, second) and first != second
    assert files_in(copy) == MODEL_FILES
    x = inputs()
    np.testing.assert_allclose(
        mlflow.pyfunc.load_model(str(copy)).predict(x).iloc[:, 1:].to_numpy(),
        expected_probabilities(network, loss, x),
        rtol=1e-5,
        atol=1e-6,
    )


def test_a_store_that_does_not_answer_leaves_the_model_saved_and_the_run_going(tmp_path, caplog):
    from mlflow.exceptions import MlflowException

    from nnexp.tracking.tracked_run import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnexp")
    network, loss = trained_like("cross_entropy")
    spec = describe(network, loss, list("abcd"))

    def refuse(*args, **kwargs):
        raise MlflowException("API request failed: connection refused")

    run = tracker.open_run("away", {})
    client = run.client
    original = client.log_model_artifacts
    client.log_model_artifacts = refuse
    try:
        assert log_model(run, network, spec, inputs(), directory=tmp_path / "first") is None
    finally:
        client.log_model_artifacts = original
    [failed] = client.search_logged_models(experiment_ids=[tracker.experiment_id])
    assert str(failed.status) == "FAILED"
    assert "its model could not be logged" in caplog.text and "connection refused" in caplog.text
    assert f"it is saved in {tmp_path / 'first'}" in caplog.text
    assert files_in(tmp_path / "first") == MODEL_FILES
    run.log_metrics({"test_accuracy": 0.5}, step=1)
    client.log_batch, original = refuse, client.log_batch
    try:
        assert log_model(run, network, spec, inputs(), step=1) is None  # the metrics cannot even be flushed
    finally:
        client.log_batch = original
    assert "(it does not answer)" in caplog.text
    run.end("FINISHED")


def test_a_resumed_run_logging_its_model_again_keeps_one(tmp_path):
    """A run killed after logging its model and then resumed logged a second READY model named "model"."""
    import mlflow.pyfunc
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    network, loss = trained_like("cross_entropy")
    spec = describe(network, loss, list("abcd"))
    with tracker.start_run("serving", {}) as run:
        first = log_model(run, network, spec, inputs(), step=1)
        second = log_model(run, network, spec, inputs(), step=1)
    client = tracker.client
    found = client.search_logged_models([tracker.experiment_id], filter_string=f"source_run_id = '{run.run_id}'")
    assert [model.model_id for model in found] == [second] and first != second
    with _use_tracking_uri(uri):
        assert mlflow.pyfunc.load_model(f"runs:/{run.run_id}/model").metadata.model_id == second


def test_a_run_resumed_twice_keeps_its_newest_model_and_predict_finds_it(tmp_path):
    """The run still lists the model its first resume deleted: the second resume then failed to log its model
    (and had deleted the first resume's), and ``nnexp predict run=`` ended in an MlflowException traceback."""
    from nnexp.serving import download_run_model, logged_models
    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    network, loss = trained_like("cross_entropy")
    spec = describe(network, loss, list("abcd"))
    with tracker.start_run("serving", {}) as run:
        ids = [log_model(run, network, spec, inputs(), step=1) for _ in range(3)]
    assert None not in ids
    client = tracker.client
    assert [model.model_id for model in logged_models(client, client.get_run(run.run_id))] == [ids[-1]]
    found = client.search_logged_models([tracker.experiment_id], filter_string=f"source_run_id = '{run.run_id}'")
    assert [model.model_id for model in found] == [ids[-1]]
    folder = download_run_model(run.run_id, uri, tmp_path / "download")
    assert load(folder / "data" / "nnexp").spec == spec
