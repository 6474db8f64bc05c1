"""A model folder is data: ``nnexp predict model=DIR`` reads nothing outside it, imports no code it names, and checks
``network.json`` and the stored arrays before building anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnexp import LOSSES, MODELS
from nnexp.commands.predict import main
from nnexp.network_files import MAX_UNITS, describe
from nnexp.serving import save_model

POINTS = "0.5,-0.25\n-1.0,2.0\n"


def saved(folder: Path, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    loss = LOSSES.build({"name": "cross_entropy"})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [8]}).build(2, 2, loss, rng, np.float32)
    save_model(folder, network, describe(network, loss, ["left", "right"]), np.zeros((3, 2)))
    return folder


@pytest.fixture
def model(tmp_path, monkeypatch, restore_registries) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "points.csv").write_text(POINTS)
    return saved(tmp_path / "model")


def predict(model: Path, capsys) -> str:
    """``nnexp predict`` in this process: its one error line."""
    code = main([f"model={model}", f"input={model.parent / 'points.csv'}"])
    captured = capsys.readouterr()
    assert (code, captured.out) == (1, ""), captured.err
    [line] = captured.err.splitlines()
    return line


def edit_mlmodel(model: Path, change) -> Path:
    path = model / "MLmodel"
    meta = yaml.safe_load(path.read_text())
    change(meta["flavors"]["python_function"])
    path.write_text(yaml.safe_dump(meta))
    return path


def edit_network(model: Path, change) -> Path:
    path = model / "data" / "nnexp" / "network.json"
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))
    return path


def dense(spec: dict, index: int) -> dict:
    return [entry for entry in spec["layers"] if entry["type"] == "dense"][index]


def test_the_data_path_must_stay_inside_the_model_folder(model, tmp_path, capsys):
    other = saved(tmp_path / "other", seed=2)
    for data in (str(other / "data" / "nnexp"), "../other/data/nnexp"):
        path = edit_mlmodel(model, lambda flavor, data=data: flavor.update(data=data))
        assert predict(model, capsys) == (
            f"error: {path}: flavors.python_function.data must be a relative path inside the model folder, "
            f"found {data!r}"
        )
    (model / "data" / "link").symlink_to(other / "data" / "nnexp")
    edit_mlmodel(model, lambda flavor: flavor.update(data="data/link"))
    assert "found 'data/link'" in predict(model, capsys)


def test_a_model_naming_code_to_import_is_refused(model, capsys):
    (model / "code").mkdir()
    path = edit_mlmodel(model, lambda flavor: flavor.update(code="code"))
    assert predict(model, capsys) == (
        f"error: {path}: flavors.python_function.code must be null: nnexp models import no code, found 'code'"
    )


def test_an_mlmodel_that_is_no_mapping_or_no_yaml(model, capsys):
    path = model / "MLmodel"
    path.write_text("- a\n- list\n")
    assert predict(model, capsys) == f"error: {path}: MLmodel must be an object, found ['a', 'list']"
    path.write_text("flavors: [\n")
    assert predict(model, capsys) == f"error: {model}: {path} cannot be read: ParserError"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda spec: dense(spec, 0).update(n_outputs=10**9), f"layers[0].n_outputs must be an integer 1..{MAX_UNITS}"),
        (lambda spec: dense(spec, 1).update(n_inputs=7), "layers[2].n_inputs must be 8, the outputs of the layer"),
        (lambda spec: dense(spec, 0).update(bias="yes"), "layers[0].bias must be true or false, found 'yes'"),
        (lambda spec: dense(spec, 0).update(n_inputs=0), "layers[0].n_inputs must be an integer 1..16777216, found 0"),
        (lambda spec: spec["layers"].insert(0, {"type": "lambda"}), "layers[0].type must be one of dense, bias"),
        (lambda spec: spec["layers"][0].update(config={}), "layers[0] must be a dense layer of n_inputs, n_outputs"),
        (lambda spec: spec.update(class_names=["a", "b", "c"]), "class_names must be 2 names, one per output"),
        (lambda spec: spec.update(image_shape=[28, 28]), "image_shape must be rows and columns of the input images"),
        (lambda spec: spec.update(dtype="object"), "dtype must be one of float32, float64, found 'object'"),
        (lambda spec: spec.update(layers=[]), "layers must be a list of layers, found []"),
        (lambda spec: spec.update(extra=1), "the network description must be an object of layers, dtype"),
        (
            lambda spec: spec.update(class_names=["left\n1: right (p=1.000)", "right"]),
            "class_names[0] must be a name without control characters, found 'left\\n1: right (p=1.000)'",
        ),
        (lambda spec: spec.update(class_names=["left", "\x1b[2J"]), "class_names[1] must be a name without control"),
        # printed by nnexp predict in every line of its output
        (
            lambda spec: spec.update(class_names=["l" * 3_000_000, "right"]),
            "class_names[0] must be at most 250 characters, found 3000000",
        ),
        (
            lambda spec: spec["layers"].append({"type": "activation", "name": "softmax"}),
            "layers[3].name must be another activation than softmax, which probabilities: softmax applies to the "
            "outputs itself, found 'softmax'",
        ),
    ],
)
def test_a_crafted_network_description_is_named_in_one_line(model, capsys, change, expected):
    path = edit_network(model, change)
    assert predict(model, capsys).startswith(f"error: {path}: {expected}")


def test_layer_sizes_are_checked_against_the_stored_arrays_before_anything_is_allocated(model, capsys):
    def widen(spec: dict) -> None:
        dense(spec, 0)["n_outputs"] = dense(spec, 1)["n_inputs"] = MAX_UNITS

    edit_network(model, widen)
    weights = model / "data" / "nnexp" / "weights.npz"
    assert predict(model, capsys) == (
        f"error: {weights}: arrays dense0.bias (8,), dense0.weight (2, 8), dense1.weight (8, 2) do not match "
        f"{weights.parent / 'network.json'}, which needs dense0.bias ({MAX_UNITS},), dense0.weight (2, {MAX_UNITS}), "
        f"dense1.weight ({MAX_UNITS}, 2)"
    )


def test_weights_are_read_only_from_inside_the_model_folder(model, tmp_path, capsys):
    other = saved(tmp_path / "other", seed=2)
    weights = model / "data" / "nnexp" / "weights.npz"
    weights.unlink()
    weights.symlink_to(other / "data" / "nnexp" / "weights.npz")
    assert predict(model, capsys) == f"error: {weights}: leads out of the model folder {weights.parent}"
    weights.unlink()
    np.savez(weights, **{"dense0.weight": np.array([{"a": 1}], dtype=object)})
    assert predict(model, capsys) == (
        f"error: {weights}: array dense0.weight holds Python objects; nnexp saves numbers only"
    )


def rewrite_weights(model: Path, change) -> Path:
    weights = model / "data" / "nnexp" / "weights.npz"
    with np.load(weights) as data:
        arrays = dict(data)
    np.savez(weights, **change(arrays))
    return weights


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda a: a | {"dense0.weight": a["dense0.weight"] * np.nan}, "dense0.weight holds NaN or infinity, which no"),
        (lambda a: a | {"dense1.bias": np.full_like(a["dense1.bias"], np.inf)}, "dense1.bias holds NaN or infinity"),
        (lambda a: a | {"dense0.weight": a["dense0.weight"].astype(np.int64)}, "dense0.weight is int64, but network"),
        (lambda a: a | {"dense0.bias": a["dense0.bias"].astype(np.float64)}, "dense0.bias is float64, but network"),
    ],
)
def test_weights_must_be_finite_and_of_the_models_dtype(model, capsys, change, expected):
    """``nnexp predict`` printed ``p=nan`` for NaN weights, and predicted from int64 ones cast to float32, exit 0."""
    weights = rewrite_weights(model, change)
    assert predict(model, capsys).startswith(f"error: {weights}: {expected}")


def test_mlflows_own_loader_refuses_them_with_the_same_line(model):
    """``mlflow.pyfunc.load_model`` goes through the same loader, so through the same check."""
    import mlflow.pyfunc

    from nnexp.errors import DataError

    weights = rewrite_weights(model, lambda a: a | {"dense0.weight": a["dense0.weight"].astype(np.int64)})
    with pytest.raises(DataError) as raised:
        mlflow.pyfunc.load_model(str(model))
    assert str(raised.value) == f"{weights}: dense0.weight is int64, but network.json's dtype is float32"


def predict_points(model: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    """``nnexp predict`` of a few points with the model folder ``model``, as a user runs it."""
    (folder / "points.csv").write_text(POINTS)
    return subprocess.run(
        [sys.executable, "-m", "nnexp", "predict", f"model={model}", f"input={folder / 'points.csv'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_through_the_cli_nan_weights_are_one_line_and_no_prediction(tmp_path):
    model = saved(tmp_path / "model")
    weights = rewrite_weights(model, lambda a: a | {"dense0.weight": a["dense0.weight"] * np.nan})
    result = predict_points(model, tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == (
        f"error: {weights}: dense0.weight holds NaN or infinity, which no model of nnexp's does"
    )


def test_through_the_cli_an_absolute_data_path_is_one_line(tmp_path):
    model, other = saved(tmp_path / "model"), saved(tmp_path / "other", seed=2)
    path = edit_mlmodel(model, lambda flavor: flavor.update(data=str(other / "data" / "nnexp")))
    result = predict_points(model, tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == (
        f"error: {path}: flavors.python_function.data must be a relative path inside the model folder, "
        f"found '{other / 'data' / 'nnexp'}'"
    )
