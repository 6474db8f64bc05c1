"""Fixtures shared by the integration tests: an isolated project directory and the real CLI run inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Project:
    """A scratch copy of the repository's ``conf/`` and ``plugins/``, where the CLI runs with its own store."""

    root: Path

    @property
    def store_uri(self) -> str:
        return f"sqlite:///{self.root / 'outputs' / 'mlflow.db'}"

    def run(self, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nnexp", *overrides],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *overrides: str) -> subprocess.Popen[str]:
        """The CLI as a background process, with pipes for its output."""
        return subprocess.Popen(
            [sys.executable, "-m", "nnexp", *overrides],
            cwd=self.root,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def env() -> dict[str, str]:
        return {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "HYDRA_"))}

    def runs(self) -> list:
        """Every MLflow run in the project's store, newest first."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.store_uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        return client.search_runs(experiments, order_by=["attributes.start_time DESC"]) if experiments else []

    def job_dirs(self) -> list[Path]:
        outputs = self.root / "outputs"
        return sorted(p.parent for p in outputs.glob("**/.hydra")) if outputs.is_dir() else []


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """The shipped presets and example plugin only, so that a user's own plugins cannot change the results."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    (tmp_path / "plugins").mkdir()
    shutil.copy(REPO / "plugins" / "circles.py", tmp_path / "plugins")
    return Project(tmp_path)


@pytest.fixture
def restore_registries() -> Iterator[None]:
    """Undo plugin registrations and ConfigStore entries a test makes, as Hydra's own tests restore singletons."""
    import copy

    from hydra.core.config_store import ConfigStore

    from nnexp.config import GROUPS
    from nnexp.core.activations import ACTIVATIONS
    from nnexp.core.initializers import INITIALIZERS

    registries = [registry for registry, _ in GROUPS] + [ACTIVATIONS, INITIALIZERS]
    saved = [registry.snapshot() for registry in registries]
    saved_store = copy.deepcopy(ConfigStore.instance().repo)
    modules = set(sys.modules)
    yield
    for registry, state in zip(registries, saved, strict=True):
        registry.restore(state)
    ConfigStore.instance().repo = saved_store
    for name in set(sys.modules) - modules:
        if name.startswith("nnexp_local_plugins"):
            del sys.modules[name]
