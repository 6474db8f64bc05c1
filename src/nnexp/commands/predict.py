"""``nnexp predict``: classify feature rows, digit images or IDX images with the MLflow model a run logged.

Prints one line per sample, ``<index>: <label> (p=<probability>)``, on standard output; a bad argument, file,
run or model gives one ``error: ...`` line on standard error instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nnexp.errors import DataError, NnexpError, report
from nnexp.inputs import check_fits, read_input
from nnexp.serving import MODEL_NAME, download_run_model, load_directory, quiet

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

    from nnexp.network_files import NetworkModel

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
        try:
            frame = pyfunc.predict(x)
        except DataError as exc:  # the model knows rows, not the file they came from
            raise DataError(f"{request.input}: {exc}") from None
    names = model.spec.class_names
    lines = []
    for index, row in enumerate(frame.itertuples(index=False)):
        label, chances = row[0], row[1:]
        line = f"{index}: {label} (p={max(chances):.3f})"
        if request.all_probabilities:
            line += "  " + " ".join(f"{name}={chance:.3f}" for name, chance in zip(names, chances, strict=True))
        lines.append(line)
    return lines


def load_model(request: Request) -> tuple[PyFuncModel, NetworkModel]:
    """The pyfunc model of ``request.model`` or of the run ``request.run``, and the nnexp model inside it."""
    if request.model is not None:
        if not request.model.is_dir():
            raise DataError(f"{request.model}: no such model directory; expected a folder holding an MLmodel file")
        return load_directory(request.model, str(request.model))
    from nnexp.tracking.store import resolve_uri

    uri = resolve_uri(request.uri, Path.cwd())
    with tempfile.TemporaryDirectory() as scratch:  # the loaded model keeps nothing open in it
        folder = download_run_model(request.run, uri, Path(scratch))
        return load_directory(folder, f"run {request.run}", shown=f"artifact {MODEL_NAME}")


if __name__ == "__main__":  # until ``nnexp predict`` dispatches here: python -m nnexp.commands.predict ...
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main(sys.argv[1:]))
