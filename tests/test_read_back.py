"""Every file nnexp reads back is a regular file of the size the run implies: a FIFO, a device or a crafted member
is one line naming the file, before anything is read or allocated."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_checkpoint_files import CONFIG, rewritten, saved, setup, store_with_run
from test_model_folders import saved as saved_model

from nnexp.errors import NnexpError
from nnexp.job import checkpoint
from nnexp.network_files import load as load_network
from nnexp.tracking.outbox import sync


def error_within(call: Callable[[], object]) -> str:
    """The one-line error ``call`` raises; a reader blocked on a FIFO fails the test instead of hanging it."""
    outcome: dict[str, str] = {}

    def target() -> None:
        try:
            call()
        except NnexpError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "blocked reading a FIFO"
    assert "\n" not in outcome["error"]
    return outcome["error"]


def replaced_by_fifo(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


def test_a_checkpoint_manifest_or_npz_that_is_a_fifo_is_refused(tmp_path):
    directory = saved(tmp_path)
    weights = replaced_by_fifo(next(directory.glob("checkpoint-*.npz")))
    assert error_within(lambda: checkpoint.load(directory)) == f"{weights}: not a regular file"
    manifest = replaced_by_fifo(directory / checkpoint.MANIFEST)
    assert error_within(lambda: checkpoint.load(directory)) == f"{manifest}: not a regular file"


def outbox(folder: Path, artifacts: list) -> Path:
    contents = {"tracking_uri": "sqlite:///x.db", "run_id": "ab" * 16, "status": "FINISHED", "metrics": [], "tags": {}}
    (folder / "mlflow_outbox.json").write_text(json.dumps({**contents, "artifacts": artifacts}))
    return folder


def test_an_outbox_or_its_artifact_that_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "plot.png")
    (tmp_path / "plots").mkdir()
    os.mkfifo(tmp_path / "plots" / "curve.png")
    folder = outbox(tmp_path, [["plot.png", None]])
    assert error_within(lambda: sync(folder)) == f"{tmp_path / 'plot.png'}: not a regular file"
    outbox(folder, [["plots", "plots"]])
    assert error_within(lambda: sync(folder)) == f"{tmp_path / 'plots' / 'curve.png'}: not a regular file"
    path = replaced_by_fifo(folder / "mlflow_outbox.json")
    assert error_within(lambda: sync(folder)) == f"{path}: not a regular file"


@pytest.mark.parametrize("name", ["network.json", "weights.npz"])
def test_a_model_folder_file_that_is_a_fifo_is_refused(tmp_path, name):
    data = saved_model(tmp_path / "model") / "data" / "nnexp"
    path = replaced_by_fifo(data / name)
    assert error_within(lambda: load_network(data)) == f"{path}: not a regular file"


def test_an_unknown_array_in_a_checkpoint_is_refused_by_name_unread(tmp_path, monkeypatch):
    directory = saved(tmp_path)
    weights = rewritten(directory, lambda arrays: arrays | {"padding": np.zeros(10**6, np.uint8)})
    monkeypatch.setattr(checkpoint, "load_npz", lambda *args: pytest.fail("an array was read"))
    assert error_within(lambda: checkpoint.load(directory)).startswith(f"{weights}: array 'padding' is none of")


def test_an_array_larger_than_the_run_keeps_is_refused_by_its_header_unread(tmp_path, monkeypatch):
    """A crafted member under a checkpoint's own name: its header says how much it would take, before it is read."""
    directory = saved(tmp_path)
    weights = rewritten(directory, lambda arrays: arrays | {"optimizer/m/weight": np.zeros(10**6, np.float32)})
    loaded = checkpoint.load(directory)
    monkeypatch.setattr(checkpoint, "load_npz", lambda *args: pytest.fail("an array was read"))
    network, _, optimizer, rng, trainer = setup()
    with pytest.raises(NnexpError) as raised:
        loaded.restore(network, optimizer, rng, {}, trainer, 40)
    assert str(raised.value) == (
        f"{weights}: array optimizer/m/weight declares (1000000,) float32 (4000000 bytes), more than this run keeps "
        "in any one array (80 bytes)"
    )


def test_a_manifest_edited_to_other_settings_than_its_run_logged_is_refused(tmp_path):
    """Its config and overrides edited together (trainer.epochs, optimizer.learning_rate) trained on with them and
    FINISHED, while the run's params said the settings it was started with."""
    from mlflow import MlflowClient

    from nnexp.job.resume import hydra_arguments

    uri, run_id = store_with_run(tmp_path, None)
    MlflowClient(tracking_uri=uri).log_param(run_id, "trainer.epochs", "3")
    recorded = f"tracking:\n  uri: {uri}\ntrainer:\n  epochs: 3\n"
    config = f"tracking:\n  uri: {uri}\ntrainer:\n  epochs: 17108\n"
    edited = saved(tmp_path, run_id=run_id, config=config, overrides=["trainer.epochs=17108"])
    with pytest.raises(NnexpError) as raised:
        hydra_arguments([f"resume={edited}"], tmp_path)
    assert str(raised.value) == (
        f"{edited / checkpoint.MANIFEST}: config sets trainer.epochs otherwise than run {run_id} records in {uri}; "
        "a run is resumed only with the settings it logged"
    )
    as_logged = saved(tmp_path, run_id=run_id, config=recorded, overrides=["trainer.epochs=3"])
    assert hydra_arguments([f"resume={as_logged}"], tmp_path)[0] == "trainer.epochs=3"


PARENT = "ab" * 16


@pytest.mark.parametrize(
    ("before", "after", "override", "key"),
    [
        ("experiment: nnexp", "experiment: other", "tracking.experiment=other", "tracking.experiment"),
        ("team: a", "team: a\n  evil: 1", "+tags.evil=1", "tags.evil"),
        ("team: a", "team: b", "tags.team=b", "tags.team"),
        (
            "experiment: nnexp",
            f"experiment: nnexp\n  parent_run_id: {PARENT}",
            f"tracking.parent_run_id={PARENT}",
            "tracking.parent_run_id",
        ),
    ],
)
def test_a_manifest_edited_to_record_the_run_elsewhere_or_with_other_tags_is_refused(
    tmp_path, before, after, override, key
):
    """``tracking.*`` and ``tags`` are no params: a manifest edited to another experiment FINISHED the run, created
    that experiment and logged a config.yaml naming it; an added tag was in config.yaml but not in MLflow."""
    from mlflow import MlflowClient

    from nnexp.job.resume import hydra_arguments

    uri, run_id = store_with_run(tmp_path, None)
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(run_id, "team", "a")
    recorded = f"tracking:\n  uri: {uri}\n  experiment: nnexp\ntags:\n  team: a\n{CONFIG}"
    as_logged = saved(tmp_path, run_id=run_id, config=recorded)
    assert hydra_arguments([f"resume={as_logged}"], tmp_path)[0] == "seed=3"
    edited = saved(tmp_path, run_id=run_id, config=recorded.replace(before, after), overrides=["seed=3", override])
    with pytest.raises(NnexpError) as raised:
        hydra_arguments([f"resume={edited}"], tmp_path)
    assert str(raised.value) == (
        f"{edited / checkpoint.MANIFEST}: config sets {key} otherwise than run {run_id} records in {uri}; "
        "a run is resumed only with the settings it logged"
    )
    assert "other" not in [experiment.name for experiment in client.search_experiments()]
    assert client.get_run(run_id).info.status == "KILLED"


def test_a_manifest_whose_tags_are_no_mapping_is_one_line(tmp_path):
    from nnexp.job.resume import hydra_arguments

    uri, run_id = store_with_run(tmp_path, None)
    edited = saved(tmp_path, run_id=run_id, config=f"tracking:\n  uri: {uri}\ntags: [1]\n{CONFIG}")
    with pytest.raises(NnexpError) as raised:
        hydra_arguments([f"resume={edited}"], tmp_path)
    assert str(raised.value) == f"{edited / checkpoint.MANIFEST}: config's tags must be an object, found [1]"


def test_a_fifo_among_the_manifests_searched_for_a_moved_run_is_passed_over(tmp_path):
    """``resume=<id>`` of a run whose folder moved reads every ``checkpoints/checkpoint.json`` under ``outputs/``;
    a FIFO among them blocked that search."""
    from nnexp.job.resume import manifest_run_id

    found: list[object] = []
    fifo = tmp_path / checkpoint.MANIFEST
    os.mkfifo(fifo)
    thread = threading.Thread(target=lambda: found.append(manifest_run_id(fifo)), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "blocked reading a FIFO"
    assert found == [None]


def padded_past(path: Path, limit: int) -> str:
    """Grow ``path`` to one byte over ``limit`` (sparsely: nothing is written); the error the readers give."""
    os.truncate(path, limit + 1)
    return (
        f"{path}: {limit + 1} bytes ({(limit + 1) / 2**20:.1f} MiB), more than the {limit} bytes "
        f"({limit / 2**20:.1f} MiB) nnexp reads from such a file"
    )


def test_an_oversized_manifest_network_description_or_mlmodel_is_refused_by_its_size_unread(tmp_path):
    """A network.json or checkpoint.json padded with 300 MB of spaces was read whole (764-820 MB at peak)."""
    from nnexp.schema import MAX_TEXT_BYTES
    from nnexp.serving import check_model_folder

    assert MAX_TEXT_BYTES == 16 * 2**20
    directory = saved(tmp_path / "run")
    expected = padded_past(directory / checkpoint.MANIFEST, MAX_TEXT_BYTES)
    assert error_within(lambda: checkpoint.load(directory)) == expected
    model = saved_model(tmp_path / "model")
    data = model / "data" / "nnexp"
    expected = padded_past(data / "network.json", MAX_TEXT_BYTES)
    assert error_within(lambda: load_network(data)) == expected
    expected = padded_past(model / "MLmodel", MAX_TEXT_BYTES)
    assert error_within(lambda: check_model_folder(model, str(model))) == expected


def test_an_oversized_outbox_is_refused_by_its_size_before_any_store_is_opened(tmp_path, monkeypatch):
    from nnexp.tracking import outbox as outboxes

    monkeypatch.setattr(outboxes, "MAX_OUTBOX_BYTES", 2**20)
    monkeypatch.setattr(outboxes, "existing_store", lambda *args: pytest.fail("the store was opened"))
    folder = outbox(tmp_path, [])
    expected = padded_past(folder / "mlflow_outbox.json", 2**20)
    assert error_within(lambda: sync(folder)) == expected
