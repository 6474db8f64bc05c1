"""One folder per run: runs and sweeps started in the same second never share an output folder."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from nnexp.errors import ConfigError
from nnexp.folders import claim

QUICK = ("trainer.epochs=2", "checkpoint.every=0")


def weights_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def assert_same_weights(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_claim_takes_the_next_free_name(tmp_path):
    wanted = tmp_path / "day" / "12-00-00"
    assert claim(str(wanted)) == str(wanted)
    assert claim(str(wanted)) == f"{wanted}_2"
    (tmp_path / "day" / "12-00-00_3").write_text("a file, not a run folder")
    assert claim(str(wanted)) == f"{wanted}_4"


def test_claim_names_a_file_that_blocks_the_folder(tmp_path):
    (tmp_path / "outputs").write_text("")
    with pytest.raises(ConfigError, match=r"cannot create the run folder .*outputs.*Not a directory"):
        claim(str(tmp_path / "outputs" / "day" / "12-00-00"))


def test_runs_started_together_keep_their_own_folder_config_weights_and_model(project):
    seeds = range(6)
    processes = [project.start(*QUICK, f"seed={seed}") for seed in seeds]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    client = MlflowClient(tracking_uri=project.store_uri)
    runs = project.runs()
    assert sorted(int(run.data.params["seed"]) for run in runs) == list(seeds)
    folders = {run.data.tags["output_dir"] for run in runs}
    assert len(folders) == len(seeds)
    mlflow.set_tracking_uri(project.store_uri)
    for run in runs:
        seed, folder = int(run.data.params["seed"]), Path(run.data.tags["output_dir"])
        assert yaml.safe_load((folder / "config.yaml").read_text())["seed"] == seed
        logged = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(folder.parent)))
        assert yaml.safe_load(logged.read_text())["seed"] == seed
        hydra_copy = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        assert hydra_copy["seed"] == seed
        kept = weights_of(folder / "model.npz")
        logged_npz = Path(client.download_artifacts(run.info.run_id, "model.npz", str(folder.parent / "dl")))
        assert_same_weights(kept, weights_of(logged_npz))
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").get_raw_model()
        assert_same_weights(kept, model.network.state_dict())


def test_sweeps_started_together_keep_their_own_folders(project):
    processes = [project.start("-m", *QUICK, f"seed={seed},{seed + 10}") for seed in (1, 2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    sweeps = sorted((project.root / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    seeds = [
        sorted(yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["seed"] for job in sweep.glob("[0-9]*"))
        for sweep in sweeps
    ]
    assert sorted(seeds) == [[1, 11], [2, 12]]
