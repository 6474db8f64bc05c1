"""``nnexp predict`` through the real CLI: CSV rows, digit images and IDX files, by model folder or by run id."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from nnexp import DATASETS, LOSSES, MODELS
from nnexp.__main__ import COMMANDS
from nnexp.datasets.mnist import Scaling
from nnexp.errors import DataError
from nnexp.inputs import read_csv
from nnexp.network_files import describe, load
from nnexp.serving import log_model, save_model

#: ``python -m nnexp predict`` once the CLI dispatches to it; the module itself until then.
COMMAND = ["-m", "nnexp", "predict"] if "predict" in COMMANDS else ["-m", "nnexp.commands.predict"]
DIGITS = [str(digit) for digit in range(10)]


def random_network(loss_name: str, n_inputs: int, n_classes: int, seed: int, dtype: type = np.float32):
    rng = np.random.default_rng(seed)
    loss = LOSSES.build({"name": loss_name})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [8]}).build(n_inputs, n_classes, loss, rng, dtype)
    for _, param, _ in network.parameters():
        param[...] = rng.standard_normal(param.shape)
    return network, loss


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two saved models: ``points`` takes 2 features (classes ``left``/``right``), ``digits`` MNIST images."""
    root = tmp_path_factory.mktemp("models")
    network, loss = random_network("cross_entropy", 2, 2, seed=1)
    save_model(root / "points", network, describe(network, loss, ["left", "right"]), np.zeros((3, 2)))
    network, loss = random_network("mse", 784, 10, seed=2)
    mnist = DATASETS.build({"name": "mnist_idx", "scaling": "offset"})
    save_model(root / "digits", network, describe(network, loss, DIGITS, mnist), np.zeros((3, 784)))
    return {"points": root / "points", "digits": root / "digits"}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    base["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return subprocess.run(
        [sys.executable, *COMMAND, *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def in_process(tmp_path, monkeypatch, capsys, restore_registries):
    """``nnexp predict`` called in this process, faster than a subprocess for the many error cases."""
    from nnexp.commands.predict import main

    monkeypatch.chdir(tmp_path)
    for key in [key for key in os.environ if key.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return call


def expected_lines(model_dir: Path, x: np.ndarray, all_probabilities: bool = False) -> list[str]:
    """What the CLI should print for rows ``x``, from the model loaded in this process."""
    model = load(model_dir / "data" / "nnexp")
    frame = model.predict(x)
    lines = []
    for index, row in enumerate(frame.itertuples(index=False)):
        line = f"{index}: {row[0]} (p={max(row[1:]):.3f})"
        if all_probabilities:
            line += "  " + " ".join(f"{n}={p:.3f}" for n, p in zip(model.spec.class_names, row[1:], strict=True))
        lines.append(line)
    return lines


def assert_prints(result: subprocess.CompletedProcess[str], lines: list[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == lines


def assert_error(result: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line


def digit_pixels() -> np.ndarray:
    """Three synthetic 28x28 digits, white (255) on black (0): a bar, a ring and a cross."""
    y, x = np.mgrid[:28, :28]
    bar = (abs(x - 14) < 2) & (abs(y - 14) < 10)
    ring = abs(np.hypot(x - 13.5, y - 13.5) - 8) < 2
    cross = (abs(x - y) < 2) | (abs(x + y - 27) < 2)
    return np.stack([bar, ring, cross]).astype(np.uint8) * 255


def scaled(pixels: np.ndarray) -> np.ndarray:
    return Scaling.offset.apply(pixels.reshape(len(pixels), -1)).astype(np.float64)


def idx_bytes(images: np.ndarray) -> bytes:
    return struct.pack(">4I", 0x00000803, *images.shape) + images.astype(np.uint8).tobytes()


POINTS = np.array([[0.5, -0.25], [-1.0, 2.0], [3.0, 0.0], [0.0, 0.125]])


def test_csv_rows_without_and_with_a_header(models, tmp_path, in_process):
    plain = tmp_path / "points.csv"
    plain.write_text("\n".join(",".join(str(v) for v in row) for row in POINTS) + "\n")
    header = tmp_path / "with_header.csv"
    header.write_text("x,y\r\n" + plain.read_text().replace("\n", "\r\n"))
    expected = expected_lines(models["points"], POINTS)
    assert len(set(line.split()[1] for line in expected)) == 2, "the test points should get both labels"
    assert_prints(cli(f"model={models['points']}", f"input={plain}", cwd=tmp_path), expected)
    assert_prints(in_process(f"model={models['points']}", f"input={header}"), expected)


def test_all_probabilities(models, tmp_path, in_process):
    path = tmp_path / "points.csv"
    path.write_text("0.5,-0.25\n-1,2\n")
    expected = expected_lines(models["points"], POINTS[:2], all_probabilities=True)
    assert all(" left=0." in line or " left=1." in line for line in expected)
    assert_prints(cli(f"model={models['points']}", f"input={path}", "--all", cwd=tmp_path), expected)
    assert_prints(in_process(f"model={models['points']}", f"input={path}", "probabilities=all"), expected)


def test_png_digits_white_on_black_dark_on_light_transparent_and_not_square(models, tmp_path, in_process):
    import matplotlib.pyplot as plt
    from PIL import Image

    bar, ring, cross = digit_pixels()
    plt.imsave(tmp_path / "white_on_black.png", bar, cmap="gray", vmin=0, vmax=255)  # RGBA, opaque
    Image.fromarray(255 - np.kron(ring, np.ones((2, 2), np.uint8))).save(tmp_path / "dark_on_light_56.png")
    ink = np.stack([np.zeros_like(cross), cross], axis=-1)  # black strokes whose opacity is the digit
    Image.fromarray(ink, mode="LA").save(tmp_path / "transparent.png")
    Image.fromarray(bar[7:21]).save(tmp_path / "wide.png")  # 28 wide, 14 high: padded with black above and below
    padded = np.zeros((28, 28), np.uint8)
    padded[7:21] = bar[7:21]
    for name, pixels in [
        ("white_on_black.png", bar),
        ("dark_on_light_56.png", ring),
        ("transparent.png", cross),
        ("wide.png", padded),
    ]:
        arguments = (f"model={models['digits']}", f"input={tmp_path / name}")
        result = cli(*arguments, cwd=tmp_path) if name == "dark_on_light_56.png" else in_process(*arguments)
        assert_prints(result, expected_lines(models["digits"], scaled(pixels[None])))


def test_idx_image_files_raw_and_gzipped(models, tmp_path, in_process):
    images = digit_pixels()
    raw = tmp_path / "digits-idx3-ubyte"
    raw.write_bytes(idx_bytes(images))
    zipped = tmp_path / "digits-idx3-ubyte.gz"
    zipped.write_bytes(gzip.compress(idx_bytes(images)))
    expected = expected_lines(models["digits"], scaled(images))
    assert len(expected) == 3
    assert_prints(cli(f"model={models['digits']}", f"input={raw}", cwd=tmp_path), expected)
    assert_prints(in_process(f"model={models['digits']}", f"input={zipped}"), expected)


def test_csv_of_raw_pixels_is_scaled_with_scale_true(models, tmp_path, in_process):
    images = digit_pixels().reshape(3, -1)
    path = tmp_path / "pixels.csv"
    path.write_text("\n".join(",".join(str(v) for v in row) for row in images) + "\n")
    expected = expected_lines(models["digits"], scaled(images))
    assert_prints(in_process(f"model={models['digits']}", f"input={path}", "scale=true"), expected)


def test_a_missing_file_gives_one_line_and_exit_status_1(models, tmp_path):
    result = cli(f"model={models['points']}", f"input={tmp_path / 'missing.csv'}", cwd=tmp_path)
    assert_error(result, f"error: {tmp_path / 'missing.csv'}: no such file")


def test_bad_files_give_one_line_naming_the_file_and_what_was_expected(models, tmp_path, in_process):
    """In this process: the same checks as through a subprocess, in a fraction of the time."""
    points, digits = f"model={models['points']}", f"model={models['digits']}"
    three = tmp_path / "three.csv"
    three.write_text("1,2,3\n4,5,6\n")
    assert_error(in_process(points, f"input={three}"), str(three), "rows of 3 values", "takes 2 features")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("x,y\n1,2\n3\n")
    assert_error(in_process(points, f"input={ragged}"), f"{ragged}: line 3: 1 values, but line 2 has 2")
    words = tmp_path / "words.csv"
    words.write_text("1,2\n3,four\n")
    assert_error(in_process(points, f"input={words}"), f"{words}: line 2, column 2: 'four' is not a number")
    hexadecimal = tmp_path / "hex.csv"  # taken for a header before: "a header row and no data rows"
    hexadecimal.write_text("1,0x10\n")
    assert_error(in_process(points, f"input={hexadecimal}"), f"{hexadecimal}: line 1, column 2: '0x10' is not a number")
    odd = tmp_path / "odd_header.csv"
    odd.write_text("x,#\n1,2\n")
    assert_error(
        in_process(points, f"input={odd}"), f"{odd}: line 1, column 2: '#' is neither a number nor a column name"
    )
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray(digit_pixels()[0]).save(image)
    assert_error(in_process(points, f"input={image}"), str(image), "takes 2 features", "CSV")
    two = tmp_path / "two.csv"
    two.write_text("1,2\n")
    assert_error(in_process(points, f"input={two}", "scale=true"), "scale=true needs a model trained on images")
    labelled = tmp_path / "mnist_test.csv"
    labelled.write_text(",".join(["7"] + ["0"] * 784) + "\n")
    assert_error(in_process(digits, f"input={labelled}"), "rows of 785 values", "drop it")
    small = tmp_path / "small-idx3-ubyte"
    small.write_bytes(idx_bytes(np.zeros((2, 20, 20), np.uint8)))
    assert_error(in_process(digits, f"input={small}"), str(small), "20x20", "takes 28x28")


def test_csv_cells_that_are_not_finite_numbers_are_named_by_line_and_column(models, tmp_path, in_process):
    points = f"model={models['points']}"
    for text, line in [("nan,0.1\n", "line 1: column 1 is nan"), ("x,y\n1,2\n3,inf\n", "line 3: column 2 is inf")]:
        path = tmp_path / "bad.csv"
        path.write_text(text)
        assert_error(in_process(points, f"input={path}"), f"{path}: {line}, not a finite number")
    huge = tmp_path / "huge.csv"
    huge.write_text("1e400,2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy RuntimeWarning on the way either
        assert_error(in_process(points, f"input={huge}"), f"{huge}: line 1: column 1 is 1e400, not a finite number")


def test_an_image_of_too_many_pixels_is_one_line(models, tmp_path, in_process, monkeypatch):
    """Pillow refuses an image of over twice MAX_IMAGE_PIXELS (a decompression bomb); lowered to keep the file small."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (100, 100)).save(bomb)
    result = in_process(f"model={models['digits']}", f"input={bomb}")
    assert_error(result, f"{bomb}: too large for an image of one digit: Image size (10000 pixels) exceeds limit")


def test_bad_models_and_command_lines(models, tmp_path, in_process):
    csv = tmp_path / "points.csv"
    csv.write_text("1,2\n")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert_error(in_process(f"model={empty}", f"input={csv}"), str(empty), "not an MLflow model")
    assert_error(in_process(f"model={tmp_path / 'nowhere'}", f"input={csv}"), "nowhere: no such model directory")
    assert_error(in_process(f"input={csv}"), "give either run=RUN_ID or model=DIR", code=2)
    assert_error(in_process(f"model={models['points']}"), "input=FILE is required", code=2)
    assert_error(in_process(f"model={models['points']}", f"input={csv}", "colour=red"), "colour=red", code=2)
    result = in_process("--help")
    assert result.returncode == 0 and "nnexp predict run=RUN_ID input=FILE" in result.stdout


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, str, str, str]:
    """A project folder whose default store ``outputs/mlflow.db`` holds a run with a model and one without."""
    from nnexp.tracking.tracked_run import Tracker

    project = tmp_path_factory.mktemp("project")
    uri = f"sqlite:///{project / 'outputs' / 'mlflow.db'}"
    tracker = Tracker(uri, "nnexp")
    network, loss = random_network("cross_entropy", 2, 2, seed=1)
    with tracker.start_run("with model", {}) as run:
        run.log_metrics({"test_accuracy": 0.5}, step=1)
        log_model(run, network, describe(network, loss, ["left", "right"]), POINTS, step=1)
    with tracker.start_run("without model", {}) as bare:
        pass
    return project, uri, run.run_id, bare.run_id


def test_run_id_by_tracking_uri_environment_or_default_store(store, models, tmp_path, in_process, monkeypatch):
    project, uri, run_id, _ = store
    path = tmp_path / "points.csv"
    path.write_text("\n".join(",".join(str(v) for v in row) for row in POINTS) + "\n")
    expected = expected_lines(models["points"], POINTS)  # the same network, saved by save_model
    assert_prints(cli(f"run={run_id}", f"input={path}", f"tracking.uri={uri}", cwd=tmp_path), expected)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert_prints(in_process(f"run={run_id}", f"input={path}"), expected)
    assert_prints(cli(f"run={run_id}", f"input={path}", cwd=project), expected)
    assert not (tmp_path / "mlflow.db").exists() and not (project / "mlflow.db").exists()


def test_unknown_runs_runs_without_a_model_and_missing_stores(store, tmp_path, in_process):
    project, _, _, bare_id = store
    path = tmp_path / "points.csv"
    path.write_text("1,2\n")
    uri = f"tracking.uri=sqlite:///{project / 'outputs' / 'mlflow.db'}"
    assert_error(in_process("run=0123456789abcdef", f"input={path}", uri), "run 0123456789abcdef not found in")
    missing = "is FINISHED and has no logged MLflow model 'model'"
    assert_error(cli(f"run={bare_id}", f"input={path}", cwd=project), f"run {bare_id}", missing)
    assert_error(in_process(f"run={bare_id}", f"input={path}"), "no MLflow store at", "tracking.uri=")
    assert not (tmp_path / "outputs").exists()


def test_a_trained_run_can_be_asked_for_predictions(project):
    result = project.run("trainer.epochs=2")
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    path = project.root / "points.csv"
    path.write_text("x,y\n0.0,0.5\n1.0,-0.5\n")
    result = cli(f"run={run.info.run_id}", f"input={path}", cwd=project.root)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["0:", "1:"]
    assert all(line.split(" ")[1] in ("0", "1") for line in lines)


def test_an_input_too_large_to_classify_at_once_is_refused_naming_the_memory(models, tmp_path, in_process, monkeypatch):
    monkeypatch.setattr("nnexp.job.memory.available_bytes", lambda: 100)
    points = tmp_path / "points.csv"
    points.write_text("\n".join(",".join(str(v) for v in row) for row in POINTS) + "\n")
    result = in_process(f"model={models['points']}", f"input={points}")
    assert_error(result, f"{points}: 4 rows need about", "is available; split the file")


@pytest.fixture
def logged_run(tmp_path) -> tuple[str, str, str, Path]:
    """A store whose one run logged a model: the store's URI, the run's id, the model's id and its artifacts."""
    from mlflow import MlflowClient

    from nnexp.serving import logged_models
    from nnexp.tracking.tracked_run import Tracker

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    network, loss = random_network("cross_entropy", 2, 2, seed=1)
    with Tracker(uri, "nnexp").start_run("moved", {}) as run:
        log_model(run, network, describe(network, loss, ["left", "right"]), POINTS, step=1)
    client = MlflowClient(uri)
    [model] = logged_models(client, client.get_run(run.run_id))
    return uri, run.run_id, model.model_id, Path(model.artifact_location.removeprefix("file://"))


def test_a_bad_model_of_a_run_is_named_by_the_run_and_its_artifact_path(logged_run, tmp_path, in_process):
    """The error named the temporary download, ``/tmp/tmpXXXX/artifacts/data/nnexp/network.json``, gone by then."""
    import json

    uri, run_id, _, artifacts = logged_run
    spec = artifacts / "data" / "nnexp" / "network.json"
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "class_names": ["a", "a"]}))
    path = tmp_path / "points.csv"
    path.write_text("1,2\n")
    result = in_process(f"run={run_id}", f"input={path}", f"tracking.uri={uri}")
    assert_error(
        result, f"error: run {run_id}: artifact model/data/nnexp/network.json: class_names must be different names"
    )
    assert "/tmp" not in result.stderr and str(tmp_path) not in result.stderr


def test_a_runs_model_whose_artifacts_moved_or_went_is_named_with_what_was_found(logged_run, tmp_path, in_process):
    """MLflow's reason was cut at its first line: "... cannot be downloaded: The following failures occurred while
    downloading one or more artifacts from file:///...:", which said nothing of what was wrong."""
    import shutil

    uri, run_id, model_id, artifacts = logged_run
    path = tmp_path / "points.csv"
    path.write_text("1,2\n")
    arguments = (f"run={run_id}", f"input={path}", f"tracking.uri={uri}")
    where = f"error: run {run_id}: artifact model (logged model {model_id}) at file://{artifacts}: found"
    shutil.move(artifacts, tmp_path / "elsewhere")
    assert_error(in_process(*arguments), f"{where} nothing: were the store's artifacts moved or deleted?")
    artifacts.write_text("")
    assert_error(in_process(*arguments), f"{where} a file, not a folder")
    artifacts.unlink()
    shutil.copytree(tmp_path / "elsewhere", artifacts)
    (artifacts / "data" / "nnexp" / "weights.npz").unlink()
    assert_error(
        in_process(*arguments),
        f"error: run {run_id}: artifact model/data/nnexp/weights.npz: not a readable .npz file: "
        "No such file or directory",
    )
    shutil.rmtree(artifacts)
    artifacts.mkdir()
    empty = f"run {run_id}: not an MLflow model (no MLmodel file in artifact model; it is empty)"
    assert_error(in_process(*arguments), empty)


def test_mlflows_list_of_failed_downloads_is_kept_on_one_line():
    from mlflow.exceptions import MlflowException

    from nnexp.serving import download_failure

    exc = MlflowException(
        "The following failures occurred while downloading one or more artifacts from s3://bucket/models/m-1:\n"
        "##### File MLmodel #####\nAccess Denied\n##### File data/nnexp/weights.npz #####\nAccess Denied"
    )
    assert download_failure(exc) == "MLmodel: Access Denied; data/nnexp/weights.npz: Access Denied"
    assert download_failure(MlflowException("Connection refused\nretry later")) == "Connection refused retry later"


def test_predict_of_a_run_whose_store_lost_its_artifacts_is_one_line_pointing_at_the_saved_copy(project):
    import shutil

    from mlflow import MlflowClient

    from nnexp.serving import logged_models

    result = project.run("trainer.epochs=2")
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    client = MlflowClient(project.store_uri)
    [model] = logged_models(client, run)
    artifacts = Path(model.artifact_location.removeprefix("file://"))
    shutil.move(artifacts, project.root / "moved")
    path = project.root / "points.csv"
    path.write_text("0.0,0.5\n")
    before = sorted(project.root.rglob("*"))
    result = cli(f"run={run.info.run_id}", f"input={path}", cwd=project.root)
    saved = Path(run.data.tags["output_dir"]) / "model"
    assert_error(
        result,
        f"error: run {run.info.run_id}: artifact model (logged model {model.model_id}) at {model.artifact_location}: "
        f"found nothing: were the store's artifacts moved or deleted?; its saved copy: nnexp predict model={saved}",
    )
    assert sorted(project.root.rglob("*")) == before
    assert [run.info.status for run in project.runs()] == ["FINISHED"]
    assert cli(f"model={saved}", f"input={path}", cwd=project.root).returncode == 0


def test_csv_values_too_large_for_the_models_dtype_are_named_by_file_line_and_column(models, tmp_path, in_process):
    """1e39 overflows float32: the message named neither the file nor its line ("row 2, column 2: 1e+39 is too large
    for float32")."""
    points = f"model={models['points']}"
    path = tmp_path / "large.csv"
    for cell in ("1e39", "-1e39"):
        path.write_text(f"x,y\n1,2\n3,{cell}\n")
        expected = f"error: {path}: line 3: column 2 is {cell}, too large for the model's float32 (at most ±3.403e+38)"
        assert_error(in_process(points, f"input={path}"), expected)
    path.write_text("3.4e38,-3.4e38\n")
    assert read_csv(path, np.dtype(np.float32), 2).tolist() == [[3.4e38, -3.4e38]]
    # Within float32, but too large for the weights: the model answered "0: left (p=nan)" with NumPy's warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = in_process(points, f"input={path}")
    assert_error(result, f"error: {path}: row 1: the network's outputs overflow float32; its values are too large")
    network, loss = random_network("cross_entropy", 2, 2, seed=1, dtype=np.float64)
    wide = tmp_path / "float64"
    save_model(wide, network, describe(network, loss, ["left", "right"]), np.zeros((3, 2)))
    path.write_text("1e39,2\n")
    assert in_process(f"model={wide}", f"input={path}").returncode == 0


def test_a_csv_too_large_for_the_model_is_one_line_from_the_cli(models, tmp_path):
    path = tmp_path / "large.csv"
    path.write_text("1e39,2\n")
    result = cli(f"model={models['points']}", f"input={path}", cwd=tmp_path)
    assert_error(result, f"error: {path}: line 1: column 1 is 1e39, too large for the model's float32")
    assert sorted(tmp_path.iterdir()) == [path]


def test_a_csv_line_far_longer_than_a_row_is_refused_before_it_is_parsed(tmp_path) -> None:
    """A line of 60 million cells was parsed whole (4.6 GB) before its width was checked against the model's."""
    import tracemalloc

    path = tmp_path / "wide.csv"
    path.write_text("1,2\n" + "1," * 2_000_000 + "1\n")
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            read_csv(path, np.dtype(np.float32), 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == (
        f"{path}: line 2 is longer than 1,152 bytes, more than a row of the model's 2 features takes; expected rows "
        "of comma-separated numbers"
    )
    assert peak < 2**20
    path.write_text("x,y\n" + "1,2\n" * 3)  # rows and a header well within the limit are read as before
    assert read_csv(path, np.dtype(np.float32), 2).tolist() == [[1.0, 2.0]] * 3


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        (f"1,2\n3,{'z' * 900}\n", f"line 2, column 2: {'z' * 40 + '…'!r} is not a number"),
        (f"1,2\n3,1{'0' * 900}\n", f"line 2: column 2 is 1{'0' * 39}…, not a finite number"),
        (f"{'#' * 900},y\n1,2\n", f"line 1, column 1: {'#' * 40 + '…'!r} is neither a number nor a column name"),
    ],
    ids=["word", "huge-number", "header-cell"],
)
def test_a_long_csv_cell_is_quoted_cut_short(tmp_path, rows, problem):
    """A cell of hundreds of characters was quoted whole in the one-line message."""
    path = tmp_path / "long.csv"
    path.write_text(rows)
    with pytest.raises(DataError) as caught:
        read_csv(path, np.dtype(np.float64), 2)
    assert str(caught.value) == f"{path}: {problem}"
