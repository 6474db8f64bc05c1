"""``nnexp predict``: classify feature rows, digit images or IDX images with the MLflow model a run logged.

Prints one line per sample, ``<index>: <label> (p=<probability>)``, on standard output; a bad argument, file,
run or model gives one ``error: ...`` line on standard error instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnexp.datasets.csv_header import is_header
from nnexp.errors import DataError, NnexpError, report

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel
    from PIL.Image import Image

    from nnexp.serving import NetworkModel, NetworkSpec

USAGE = """\
usage: nnexp predict run=RUN_ID input=FILE [tracking.uri=URI] [probabilities=all] [scale=true]
       nnexp predict model=DIR input=FILE [probabilities=all] [scale=true]

Classify every sample in FILE with the MLflow model that run RUN_ID logged (looked up in tracking.uri, else
$MLFLOW_TRACKING_URI, else ./outputs/mlflow.db), or with the model saved in DIR. Prints one line per sample:
"<index>: <label> (p=<probability>)"; probabilities=all (or --all) adds every class's probability.

FILE is one of:
  a CSV file      one sample per row, the model's input features as they are; an optional header row
                  (a first row that is not all numbers) is skipped. scale=true treats the values as raw
                  pixels 0..255 of an image model and scales them as the run's dataset.scaling did.
  an image        PNG (or another format Pillow reads) of one digit, for an MNIST model: converted to
                  grayscale (an image with transparency uses its opacity as the ink), inverted if its border
                  is light (MNIST digits are white on black), padded to a square, resized to 28x28, then
                  scaled as the run's dataset.scaling did.
  an IDX file     IDX3 images (gzipped if the name ends in .gz), such as t10k-images-idx3-ubyte.gz, for an
                  MNIST model; scaled as the run's dataset.scaling did.
"""
KEYS = ("run", "model", "input", "tracking.uri", "probabilities", "scale")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM")


class UsageError(NnexpError):
    """The command line itself is wrong."""


@dataclass(frozen=True)
class Request:
    input: Path
    run: str | None = None
    model: Path | None = None
    uri: str | None = None
    all_probabilities: bool = False
    scale: bool = False


def parse(argv: list[str]) -> Request:
    """``key=value`` arguments (and ``--all``) into a :class:`Request`; raises :class:`UsageError`."""
    values: dict[str, str] = {}
    for argument in argv:
        if argument == "--all":
            values["probabilities"] = "all"
            continue
        key, equals, value = argument.partition("=")
        if not equals or key not in KEYS:
            raise UsageError(f"unknown argument {argument!r}; expected {'=, '.join(KEYS)}= or --all")
        if not value:
            raise UsageError(f"{key}= needs a value")
        values[key] = value
    if ("run" in values) == ("model" in values):
        raise UsageError("give either run=RUN_ID or model=DIR")
    if "input" not in values:
        raise UsageError("input=FILE is required: a CSV file of feature rows, an image or an IDX image file")
    if values.get("probabilities", "top") not in ("top", "all"):
        raise UsageError(f"probabilities= must be top or all, got {values['probabilities']!r}")
    if values.get("scale", "false") not in ("true", "false"):
        raise UsageError(f"scale= must be true or false, got {values['scale']!r}")
    if "tracking.uri" in values and "model" in values:
        raise UsageError("tracking.uri= applies to run=, not to model=")
    return Request(
        input=Path(values["input"]),
        run=values.get("run"),
        model=Path(values["model"]) if "model" in values else None,
        uri=values.get("tracking.uri"),
        all_probabilities=values.get("probabilities") == "all",
        scale=values.get("scale") == "true",
    )


def main(argv: list[str]) -> int:
    """Run ``nnexp predict ARGV``: 0 on success, 1 on a bad file, run or model, 2 on a bad command line."""
    if "-h" in argv or "--help" in argv:
        print(USAGE, end="")
        return 0
    try:
        request = parse(argv)
    except UsageError as exc:
        report(f"nnexp predict: {exc} (see nnexp predict --help)")
        return 2
    try:
        lines = predict(request)
    except NnexpError as exc:
        report(exc)
        return 1
    print("\n".join(lines))
    return 0


def predict(request: Request) -> list[str]:
    """The output lines for ``request``; raises :class:`NnexpError` on any bad input."""
    if not request.input.is_file():
        if request.input.is_dir():
            problem = "is a directory, not a file"
        else:
            problem = "is not a regular file" if request.input.exists() else "no such file"
        raise DataError(f"{request.input}: {problem}")
    import mlflow  # noqa: F401 - before quiet(): importing MLflow sets its logger's level

    with quiet("mlflow", "alembic"):
        pyfunc, model = load_model(request)
        x = read_input(request.input, model.spec, request.scale)
        check_fits(request.input, x, len(model.spec.class_names))
        frame = pyfunc.predict(x)
    names = model.spec.class_names
    lines = []
    for index, row in enumerate(frame.itertuples(index=False)):
        label, chances = row[0], row[1:]
        line = f"{index}: {label} (p={max(chances):.3f})"
        if request.all_probabilities:
            line += "  " + " ".join(f"{name}={chance:.3f}" for name, chance in zip(names, chances, strict=True))
        lines.append(line)
    return lines


#: Bytes one input row costs while it is classified, per feature or class: float64 copies of the row (the input,
#: its float cast, the network's layers in the worst case) and the table of probabilities and its lines.
BYTES_PER_VALUE = 8 * 4


def check_fits(path: Path, x: np.ndarray, n_classes: int) -> None:
    """Refuse, in one line, an input whose rows cannot all be classified at once in the memory available."""
    from nnexp.job.memory import available_bytes, format_bytes

    available = available_bytes()
    needed = len(x) * (x.shape[1] + n_classes) * BYTES_PER_VALUE
    if available is not None and needed > available:
        raise DataError(
            f"{path}: {len(x)} rows need about {format_bytes(needed)} to classify at once and "
            f"{format_bytes(available)} is available; split the file"
        )


def load_model(request: Request) -> tuple[PyFuncModel, NetworkModel]:
    """The pyfunc model of ``request.model`` or of the run ``request.run``, and the nnexp model inside it."""
    if request.model is not None:
        if not request.model.is_dir():
            raise DataError(f"{request.model}: no such model directory; expected a folder holding an MLmodel file")
        return load_directory(request.model, str(request.model))
    from nnexp.tracking.store import resolve_uri

    uri = resolve_uri(request.uri, Path.cwd())
    with tempfile.TemporaryDirectory() as scratch:  # the loaded model keeps nothing open in it
        return load_directory(download_run_model(request.run, uri, Path(scratch)), f"run {request.run}")


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Only errors from ``loggers`` while the block runs: MLflow logs INFO lines, and a warning per package whose
    installed version differs from the model's requirements."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def download_run_model(run_id: str, uri: str, destination: Path) -> Path:
    """Download the model the run logged (``runs:/<run id>/model``) into ``destination``; returns its folder."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from nnexp.serving import MODEL_NAME, logged_models
    from nnexp.tracking.liveness import reap
    from nnexp.tracking.store import existing_store, find_run, without_model

    client = existing_store(uri, "name the run's store with tracking.uri=...")
    [run], _ = reap(client, [find_run(client, run_id, f"run {run_id} not found in {uri}")])
    # Not download_artifacts("runs:/<id>/model"): MLflow resolves the run's logged model through the global
    # tracking URI, not the one passed, and would open (and create) ./mlflow.db.
    logged = logged_models(client, run)
    if not logged:
        raise NnexpError(f"run {run_id} in {uri} {without_model(client, run, MODEL_NAME)}")
    model = logged[-1]
    if str(model.status) != "READY":
        raise NnexpError(f"run {run_id}: its model {model.model_id} is {model.status}, not READY")
    try:
        path = download_artifacts(artifact_uri=model.artifact_location, dst_path=str(destination), tracking_uri=uri)
    except MlflowException as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NnexpError(f"run {run_id}: its model {model.model_id} cannot be downloaded: {reason}") from None
    return Path(path)


def load_directory(path: Path, what: str) -> tuple[PyFuncModel, NetworkModel]:
    """Load the MLflow model in ``path``, which must be one nnexp saved; ``what`` names it in errors."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from nnexp.plugins import load_plugins
    from nnexp.serving import check_model_folder

    if not (path / "MLmodel").is_file():
        raise DataError(f"{what}: not an MLflow model (no MLmodel file in {path})")
    check_model_folder(path, what)  # before MLflow reads it: its data path, and no code to import
    load_plugins(Path.cwd())  # a network may use an activation that a project plugin registers
    try:
        pyfunc = mlflow.pyfunc.load_model(str(path))
    except MlflowException as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{what}: the model cannot be loaded: {reason}") from None
    return pyfunc, pyfunc.get_raw_model()


def read_input(path: Path, spec: NetworkSpec, scale: bool) -> np.ndarray:
    """The rows to classify, ``(n, n_features)`` float64, from a CSV, image or IDX file."""
    with open(path, "rb") as file:
        head = file.read(8)
    if path.suffix.lower() in IMAGE_SUFFIXES or head.startswith(IMAGE_SIGNATURES):
        return scale_pixels(read_image(path, image_shape(path, spec, "an image")), spec)
    if _is_idx(path, head):
        return scale_pixels(read_idx(path, image_shape(path, spec, "an IDX image file")), spec)
    rows = read_csv(path)
    if rows.shape[1] != spec.n_features:
        hint = ""
        if spec.image_shape and rows.shape[1] == spec.n_features + 1:
            hint = "; a label column first, as in MNIST's CSV files? drop it"
        raise DataError(
            f"{path}: rows of {rows.shape[1]} values, but the model takes {spec.n_features} features per row{hint}"
        )
    if scale:
        image_shape(path, spec, "scale=true", "and scales nothing")
        if rows.size and (rows.min() < 0 or rows.max() > 255):
            raise DataError(f"{path}: scale=true expects raw pixel values 0..255, found {rows.min():g}..{rows.max():g}")
        return scale_pixels(rows, spec)
    return rows


def image_shape(
    path: Path, spec: NetworkSpec, what: str, hint: str = "so give a CSV file of feature rows"
) -> tuple[int, int]:
    """The model's image shape; raises if the model was not trained on images."""
    if not spec.image_shape:
        raise DataError(
            f"{path}: {what} needs a model trained on images such as MNIST; "
            f"this one takes {spec.n_features} features, {hint}"
        )
    rows, columns = spec.image_shape
    return rows, columns


def scale_pixels(pixels: np.ndarray, spec: NetworkSpec) -> np.ndarray:
    """Raw pixel rows 0..255 scaled as the model's training data was (``dataset.scaling``)."""
    from nnexp.datasets.mnist import Scaling

    return Scaling(spec.pixel_scaling).apply(pixels).astype(np.float64)


def _is_idx(path: Path, head: bytes) -> bool:
    from nnexp.datasets.mnist import GZIP_MAGIC, IMAGE_MAGIC, LABEL_MAGIC

    return head.startswith(GZIP_MAGIC) or int.from_bytes(head[:4], "big") in (IMAGE_MAGIC, LABEL_MAGIC)


def read_idx(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The images of an IDX3 file as ``(n, rows * columns)`` raw pixels, checked against the model's shape."""
    from nnexp.datasets.mnist import read_idx_images

    images = read_idx_images(path)
    if images.shape[1:] != shape:
        raise DataError(
            f"{path}: images of {images.shape[1]}x{images.shape[2]} pixels, but the model takes {shape[0]}x{shape[1]}"
        )
    if not len(images):
        raise DataError(f"{path}: holds no images")
    return images.reshape(len(images), -1)


def read_image(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """One image as a ``(1, rows * columns)`` row of raw pixels, white digit on black as in MNIST.

    Grayscale; an image with transparency takes its opacity as the ink. If the pixels along the border are
    lighter than mid-grey on average (mean > 127), the image is a dark digit on a light background and is
    inverted. It is then padded with black to a square and resized to ``shape`` (area averaging when shrinking).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image that Pillow can read") from None
    except Image.DecompressionBombError as exc:  # Pillow's guard against a small file of billions of pixels
        raise DataError(f"{path}: too large for an image of one digit: {str(exc).split(',')[0]}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read as an image: {exc}") from None
    pixels = _ink(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:
        pixels = 255 - pixels
    height, width = pixels.shape
    side = max(height, width)
    square = np.zeros((side, side), np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = pixels
    rows, columns = shape
    resized = Image.fromarray(square)
    if (side, side) != (rows, columns):
        method = Image.Resampling.BOX if side > max(rows, columns) else Image.Resampling.BILINEAR
        resized = resized.resize((columns, rows), method)
    return np.asarray(resized, dtype=np.uint8).reshape(1, rows * columns)


def _ink(image: Image) -> np.ndarray:
    """Grayscale pixels ``(height, width)`` ``uint8``; the alpha channel instead, when some pixel is transparent."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"), dtype=np.uint8)[..., 3]
        if alpha.min() < 255:
            return alpha
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_csv(path: Path) -> np.ndarray:
    """Rows of comma-separated numbers as ``(n, columns)`` float64, below a header row of column names if any."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file, an image or an IDX file") from None
    lines = text.splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise DataError(f"{path}: empty file, expected rows of comma-separated numbers")
    if is_header(path, numbered[0][0], numbered[0][1].split(",")):
        numbered = numbered[1:]
        if not numbered:
            raise DataError(f"{path}: a header row and no data rows")
    body = "\n".join(line for _, line in numbered)
    try:
        rows = np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2, dtype=np.float64, comments=None)
    except ValueError:
        raise DataError(f"{path}: {_first_bad_row(numbered)}") from None
    bad = np.argwhere(~np.isfinite(rows))
    if len(bad):  # nan, inf, or a number too large for a float such as 1e400
        row, column = bad[0]
        number, line = numbered[row]
        cell = line.split(",")[column].strip()
        raise DataError(f"{path}: line {number}: column {column + 1} is {cell}, not a finite number")
    return rows


def _first_bad_row(numbered: list[tuple[int, str]]) -> str:
    """What is wrong with the first row that is not like the first data row, in words."""
    width = len(numbered[0][1].split(","))
    for number, line in numbered:
        cells = line.split(",")
        for column, cell in enumerate(cells, 1):
            try:
                float(cell)
            except ValueError:
                return f"line {number}, column {column}: {cell.strip()!r} is not a number"
        if len(cells) != width:
            return f"line {number}: {len(cells)} values, but line {numbered[0][0]} has {width}"
    return "not a CSV file of numbers"


if __name__ == "__main__":  # until ``nnexp predict`` dispatches here: python -m nnexp.commands.predict ...
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main(sys.argv[1:]))
