"""A trained network as an MLflow pyfunc model, with no pickle anywhere.

The model directory holds the weights as ``.npz`` (the format of :meth:`Sequential.save`, read back with
``allow_pickle=False``) and the layer structure as JSON; this module is the pyfunc ``loader_module`` that rebuilds
the network from them. MLflow's other route, ``python_model=``, would cloudpickle a ``PythonModel`` instance.

Load a logged model with ``mlflow.pyfunc.load_model("runs:/<run id>/model")``: its ``predict`` takes feature rows
(an array of any numeric dtype, a list of rows or a DataFrame) and returns a DataFrame with the ``label`` (a class
name) and one ``probability_<class name>`` column per class.

A little over 350 lines: the flavour's files, their checks, and the model's upload to MLflow and download from it
are one format, read and written in one place.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnexp.core.network import Sequential
from nnexp.errors import DataError, NnexpError
from nnexp.network_files import SPEC_FILE, WEIGHTS_FILE, load
from nnexp.schema import Fields, inside, read_text

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel, Run
    from mlflow.models.signature import ModelSignature
    from mlflow.pyfunc import PyFuncModel

    from nnexp.serving import NetworkModel, NetworkSpec
    from nnexp.tracking.tracked_run import TrackedRun

log = logging.getLogger(__name__)

#: The name of the logged model, and so the path in ``runs:/<run id>/model``.
MODEL_NAME = "model"
#: The folder under the model's ``data/`` that holds the two files below.
DATA_DIR = "nnexp"
#: Rows of the test inputs saved as the model's input example.
EXAMPLE_ROWS = 3
#: The files MLflow's model format names.
EXAMPLE_FILE = "input_example.json"
SERVING_EXAMPLE_FILE = "serving_input_example.json"
REQUIREMENTS_FILE = "requirements.txt"
CONDA_FILE = "conda.yaml"
PYTHON_ENV_FILE = "python_env.yaml"
#: What MLflow's virtualenv specification installs first, at the versions installed here.
BUILD_PACKAGES = ("pip", "setuptools", "wheel")


def check_model_folder(path: Path, what: str) -> None:
    """Check that ``path`` holds an MLflow model nnexp saved, whose data lies inside it and which names no code to
    import; raises :class:`DataError` naming ``what`` and the field."""
    import yaml

    meta = path / "MLmodel"
    fields = Fields(f"{what}: {meta}" if what != str(path) else meta)
    try:
        found = yaml.safe_load(read_text(meta))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise DataError(f"{what}: {meta} cannot be read: {type(exc).__name__}") from None
    flavors = fields.mapping(fields.mapping(found, "MLmodel").get("flavors"), "flavors")
    pyfunc = fields.mapping(flavors.get("python_function"), "flavors.python_function")
    loader = pyfunc.get("loader_module")
    if loader != __name__:
        raise DataError(f"{what}: an MLflow model that nnexp did not save (loader_module {loader!r})")
    # MLflow puts a model's code paths first on sys.path; nnexp's models have none.
    code = pyfunc.get("code")
    fields.check(code is None, "flavors.python_function.code", "null: nnexp models import no code", code)
    field = "flavors.python_function.data"
    data = fields.string(pyfunc.get("data"), field, expected="a relative path")
    relative = not Path(data).is_absolute() and ".." not in Path(data).parts
    fields.check(relative and inside(path / data, path), field, "a relative path inside the model folder", data)


def _load_pyfunc(data_path: str) -> NetworkModel:
    """The pyfunc ``loader_module`` entry point."""
    return load(data_path)


def pip_requirements() -> list[str]:
    """The model's requirements: the versions of MLflow, nnexp and NumPy that saved it."""
    import mlflow

    from nnexp import __version__

    return [f"mlflow=={mlflow.__version__}", f"nnexp=={__version__}", f"numpy=={np.__version__}"]


def signature(spec: NetworkSpec) -> ModelSignature:
    """The output: the label and one probability column per class. No input schema: MLflow would hold inputs to
    its exact dtype (a float64 tensor refuses float32, integers and lists), where the model converts whatever holds
    numbers itself and names a row that does not; the saved input example shows the rows' shape."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "label"), *(ColSpec("double", f"probability_{name}") for name in spec.class_names)]
    return ModelSignature(None, Schema(outputs))


def save_model(path: str | Path, network: Sequential, spec: NetworkSpec, example: np.ndarray) -> None:
    """Write an MLflow pyfunc model into the new directory ``path``; ``example`` holds a few input rows.

    The files are those ``mlflow.pyfunc.save_model(path, loader_module=..., data_path=..., signature=...,
    input_example=..., pip_requirements=...)`` writes (a test compares the two), written here because MLflow's
    function first scans every installed distribution, a third of a second or more, to warn about requirements the
    environment does not satisfy, and these are the environment's own versions. Needs no tracking store:
    ``nnexp predict model=PATH`` and ``mlflow.pyfunc.load_model(PATH)`` read it as it is.
    """
    import mlflow.pyfunc
    from mlflow.models import Model

    folder = Path(path)
    data = folder / "data" / DATA_DIR
    data.mkdir(parents=True)
    network.save(data / WEIGHTS_FILE)
    (data / SPEC_FILE).write_text(spec.to_json())
    rows = np.asarray(example[:EXAMPLE_ROWS], dtype=np.float64).tolist()
    (folder / EXAMPLE_FILE).write_text(json.dumps(rows))
    (folder / SERVING_EXAMPLE_FILE).write_text(json.dumps({"inputs": rows}, indent=2))
    size = sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
    example_info = {"artifact_path": EXAMPLE_FILE, "type": "ndarray", "serving_input_path": SERVING_EXAMPLE_FILE}
    model = Model(signature=signature(spec), saved_input_example_info=example_info)
    mlflow.pyfunc.add_to_model(
        model,
        loader_module=__name__,
        data=f"data/{DATA_DIR}",
        conda_env=CONDA_FILE,
        python_env=PYTHON_ENV_FILE,
        streamable=False,
    )
    model.flavors[mlflow.pyfunc.FLAVOR_NAME]["code"] = None  # MLflow records "no code paths" explicitly
    model.model_size_bytes = size
    model.save(str(folder / "MLmodel"))
    write_environment(folder, pip_requirements())


def write_environment(folder: Path, requirements: list[str]) -> None:
    """``requirements.txt``, and the conda and virtualenv specifications that install them, as MLflow writes them."""
    import yaml

    python = ".".join(str(part) for part in sys.version_info[:3])
    pip = installed_version("pip")
    conda = {
        "channels": ["conda-forge"],
        # MLflow's "pip<=": conda-forge may not have the newest pip yet
        "dependencies": [f"python={python}", f"pip<={pip}" if pip else "pip", {"pip": requirements}],
        "name": "mlflow-env",
    }
    build = [f"{name}=={installed_version(name)}" if installed_version(name) else name for name in BUILD_PACKAGES]
    virtualenv = {"python": python, "build_dependencies": build, "dependencies": [f"-r {REQUIREMENTS_FILE}"]}
    (folder / REQUIREMENTS_FILE).write_text("\n".join(requirements))
    (folder / CONDA_FILE).write_text(yaml.safe_dump(conda, default_flow_style=False))
    (folder / PYTHON_ENV_FILE).write_text(yaml.safe_dump(virtualenv, sort_keys=False, default_flow_style=False))


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def log_model(
    run: TrackedRun,
    network: Sequential,
    spec: NetworkSpec,
    example: np.ndarray,
    step: int = 0,
    directory: Path | None = None,
) -> str | None:
    """Log the network as the run's MLflow model ``model`` (``runs:/<run id>/model``); returns the model's id.

    The model is saved first, into ``directory`` when given (a local copy, e.g. in the job's output folder), else
    into a temporary folder; then :func:`log_saved_model` logs it.
    """
    with contextlib.ExitStack() as cleanup:
        kept = directory is not None
        if directory is None:
            directory = Path(cleanup.enter_context(tempfile.TemporaryDirectory())) / MODEL_NAME
        elif (directory / "MLmodel").is_file():  # saved by an earlier attempt of a resumed run
            shutil.rmtree(directory)
        save_model(directory, network, spec, example)
        return log_saved_model(run, directory, step, kept)


def log_saved_model(
    run: TrackedRun, directory: Path, step: int = 0, kept: bool = True, temporary: bool = False
) -> str | None:
    """Log the model saved in ``directory`` as the run's model ``model``; returns the model's id.

    If the tracking store does not answer, training's results are not thrown away: a warning says so and None is
    returned; when ``kept`` (``directory`` stays), the run holds the model and tries again as it ends, or leaves it
    to ``nnexp sync`` (see :meth:`TrackedRun.hold_model`); a ``temporary`` one stays only until the run ends, which
    fails if it cannot log the model then.
    """
    if not run.flush():  # the final metrics go first, so that they can be linked to the model
        reason = f"it cannot write ({run.disk_error})" if run.disk_error else "it does not answer"
    else:
        try:
            return upload_model(run.client, run.run_id, directory, step)
        except Exception as exc:  # as for metrics and artifacts, a store that fails does not fail the run
            from nnexp.tracking.store import store_error_reason

            reason = store_error_reason(exc)[:200]
    where = ""
    if kept:
        run.hold_model(directory, functools.partial(upload_model, run.client, run.run_id, directory, step), temporary)
        if not directory.exists():  # the run folder was removed: the run's end says so, and ends it FAILED
            return None
        where = f"; it is saved in {directory}, and logged when the store takes it"
        if temporary:
            where += " before the run ends (a temporary copy: the run fails if the store does not take it by then)"
    log.warning("run %s: its model could not be logged to %s (%s)%s", run.run_id, run.store, reason, where)
    return None


def has_ready_model(client: MlflowClient, run_id: str) -> bool:
    """Whether run ``run_id`` logged a model that is READY; one whose upload failed is FAILED."""
    from mlflow.entities import LoggedModelStatus

    return any(model.status == LoggedModelStatus.READY for model in logged_models(client, client.get_run(run_id)))


def upload_model(client: MlflowClient, run_id: str, directory: Path, step: int = 0) -> str:
    """Log the model saved in ``directory`` as run ``run_id``'s model ``model``, as ``mlflow.pyfunc.log_model``
    does, but through ``client`` instead of MLflow's global tracking URI and active run; returns the model's id.

    Creates a LoggedModel with the run's params, records it as the run's output at ``step``, uploads the files,
    links the run's metrics at ``step`` to it, and marks it READY (FAILED if any of that fails).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    source = client.get_run(run_id)
    for earlier in logged_models(client, source):
        # Logged by an earlier attempt of this run, killed after logging it and now resumed: one model stays.
        client.delete_logged_model(earlier.model_id)
    model = client.create_logged_model(
        source.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, params=dict(source.data.params)
    )
    try:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
        meta = Model.load(str(directory / "MLmodel"))  # the ids mlflow.pyfunc.log_model would have written
        meta.artifact_path, meta.run_id = model.artifact_location, run_id
        meta.model_uuid = meta.model_id = model.model_id
        meta.save(str(directory / "MLmodel"))
        client.log_model_artifacts(model.model_id, str(directory))
        _link_metrics(client, run_id, model.model_id, source.data.metrics, step)
    except BaseException:
        with contextlib.suppress(Exception):  # the original error matters more
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def logged_models(client: MlflowClient, run: Run) -> list[LoggedModel]:
    """The models named ``model`` that ``run`` logged and that still exist: a resumed run deletes its earlier
    attempt's, which the run still lists among its outputs."""
    from mlflow.exceptions import MlflowException

    found = []
    for output in run.outputs.model_outputs if run.outputs else []:
        try:
            model = client.get_logged_model(output.model_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            continue
        if model.name == MODEL_NAME:
            found.append(model)
    return found


def _link_metrics(client: MlflowClient, run_id: str, model_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Attach the run's metrics logged at ``step`` to the model, as MLflow's ``log_model`` does.

    They are logged again with the model's id and their original timestamps: the store keeps them as the model's
    metrics and does not duplicate them in the run's history.
    """
    from mlflow.entities import Metric

    linked = [
        Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id)
        for key in metrics
        for m in client.get_metric_history(run_id, key)
        if m.step == step and m.model_id is None
    ]
    if linked:
        client.log_batch(run_id, metrics=linked)


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
    from nnexp.tracking.store import existing_store, find_run, saved_copy, without_model

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
    where = f"run {run_id}: artifact {MODEL_NAME} (logged model {model.model_id}) at {model.artifact_location}"
    kept = saved_copy(run, MODEL_NAME)
    local = local_path(model.artifact_location)
    if local is not None and not local.is_dir():
        found = "a file, not a folder" if local.exists() else "nothing: were the store's artifacts moved or deleted?"
        raise NnexpError(f"{where}: found {found}{kept}")
    try:
        path = download_artifacts(artifact_uri=model.artifact_location, dst_path=str(destination), tracking_uri=uri)
    except MlflowException as exc:
        raise NnexpError(f"{where} cannot be downloaded: {download_failure(exc)}{kept}") from None
    return Path(path)


def local_path(uri: str) -> Path | None:
    """The folder an artifact location names on this machine (``file://`` or a plain path); ``None`` for a remote
    one."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file") or parsed.netloc not in ("", "localhost"):
        return None
    return Path(url2pathname(parsed.path))


def download_failure(exc: Exception, shown: int = 3) -> str:
    """MLflow's reason a download failed, on one line: each file that failed (the first few) with its error. MLflow
    lists them under banners, after a first line that names the location again."""
    import re

    failures = str(exc).strip().partition("\n")[2]
    parts = re.split(r"^##### File (.*) #####$", failures, flags=re.MULTILINE)
    found = [f"{path}: {' '.join(error.split())}" for path, error in zip(parts[1::2], parts[2::2], strict=True)]
    if not found:
        return " ".join(str(exc).split()) or type(exc).__name__
    more = f"; and {len(found) - shown} more" if len(found) > shown else ""
    return "; ".join(found[:shown]) + more


def contents(folder: Path, shown: int = 5) -> str:
    """What ``folder`` holds, for an error: ``it is empty``, or the first few names."""
    names = sorted(entry.name for entry in folder.iterdir())
    if not names:
        return "it is empty"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"it holds {', '.join(names[:shown])}{more}"


def check_saved_model(path: Path) -> None:
    """Load the MLflow model in ``path`` as ``nnexp predict model=PATH`` does, so that one it would refuse is never
    logged; raises :class:`DataError` naming the file and the field."""
    import mlflow  # noqa: F401 - before quiet(): importing MLflow sets its logger's level

    with quiet("mlflow", "alembic"):
        load_directory(path, str(path))


def load_directory(path: Path, what: str, shown: str | None = None) -> tuple[PyFuncModel, NetworkModel]:
    """Load the MLflow model in ``path``, which must be one nnexp saved; ``what`` names it in errors, where
    ``shown``, when given, stands for ``path``: the path of a temporary download means nothing once deleted."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from nnexp.plugins import load_plugins
    from nnexp.serving import check_model_folder

    try:
        if not (path / "MLmodel").is_file():
            raise DataError(f"{what}: not an MLflow model (no MLmodel file in {path}; {contents(path)})")
        check_model_folder(path, what)  # before MLflow reads it: its data path, and no code to import
        load_plugins(Path.cwd())  # a network may use an activation that a project plugin registers
        try:
            pyfunc = mlflow.pyfunc.load_model(str(path))
        except MlflowException as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"{what}: the model cannot be loaded: {reason}") from None
    except DataError as exc:
        if shown is None:
            raise
        message = str(exc).replace(str(path), shown)
        raise DataError(message if message.startswith(f"{what}: ") else f"{what}: {message}") from None
    return pyfunc, pyfunc.get_raw_model()


