"""Shared fixtures: an isolated project directory with the real CLI run inside it, and tiny MNIST files."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real MNIST files (the four gzipped IDX files of the original distribution) for the tests that need them:
#: ``$MNIST_DIR``, as the benchmarks take it, else a ``shared/data/mnist`` folder beside the repository.
REAL_MNIST = Path(os.environ.get("MNIST_DIR") or REPO.parent / "shared" / "data" / "mnist")

# One Numba cache for every test process and the CLI runs they start, kept between sessions: the compiled
# engine's kernels take tens of seconds to compile, and a second or so to load from the cache.
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".pytest_cache" / "numba"))


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The real MNIST folder; the test skips, saying where it looked, when it is not there."""
    if not REAL_MNIST.is_dir():
        pytest.skip(f"the real MNIST files are not in {REAL_MNIST}; set MNIST_DIR to a folder that holds them")
    return REAL_MNIST


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

    def start_ui(self, *arguments: str) -> tuple[subprocess.Popen[str], int]:
        """``nnexp ui ARGUMENTS`` on a free port, in a session of its own (``mlflow ui`` starts workers of its own,
        which the session finds), with its output on a pipe; and the port."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        ui = subprocess.Popen(
            [sys.executable, "-m", "nnexp", "ui", *arguments, "--port", str(port)],
            cwd=self.root,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        return ui, port

    @staticmethod
    def env() -> dict[str, str]:
        return {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "HYDRA_"))}

    def runs(self) -> list:
        """Every MLflow run in the project's store, newest first; none, and no store made, while there is none."""
        from mlflow import MlflowClient

        from nnexp.tracking.store import store_lock

        if not (self.root / "outputs" / "mlflow.db").exists():
            return []
        with store_lock(self.store_uri):  # a CLI process may be creating the store: both would run its migrations
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


IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
#: Class counts of the tiny training set: unequal, so that a stratified split has proportions to keep.
TRAIN_CLASS_COUNTS = (8, 6, 6, 4, 4, 4, 2, 2, 2, 2)
N_TEST = 10
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class TinyMnist:
    """40 training and 10 test images of 28x28 with every pixel value 0..255 somewhere; each row is distinct."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @classmethod
    def make(cls) -> TinyMnist:
        n_train = sum(TRAIN_CLASS_COUNTS)
        index = np.arange(n_train + N_TEST)[:, None]
        images = ((index * 37 + np.arange(28 * 28) * 11) % 256).astype(np.uint8).reshape(-1, 28, 28)
        train_labels = np.random.default_rng(123).permutation(np.repeat(np.arange(10), TRAIN_CLASS_COUNTS))
        test_labels = np.arange(N_TEST) % 10
        return cls(images[:n_train], train_labels.astype(np.uint8), images[n_train:], test_labels.astype(np.uint8))

    def idx_files(self) -> dict[str, bytes]:
        """The four IDX files' contents by role, uncompressed."""
        return {
            "train_images": MnistFiles.idx_bytes(self.train_images, IMAGE_MAGIC),
            "train_labels": MnistFiles.idx_bytes(self.train_labels, LABEL_MAGIC),
            "test_images": MnistFiles.idx_bytes(self.test_images, IMAGE_MAGIC),
            "test_labels": MnistFiles.idx_bytes(self.test_labels, LABEL_MAGIC),
        }


@dataclass
class MnistFiles:
    """Writes :class:`TinyMnist` into ``root`` in the form a test asks for."""

    root: Path
    data: TinyMnist

    @staticmethod
    def idx_bytes(array: np.ndarray, magic: int) -> bytes:
        """An IDX file: big-endian magic and dimensions, then the ``uint8`` payload."""
        return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()

    @staticmethod
    def csv_text(images: np.ndarray, labels: np.ndarray, newline: str = "\n") -> str:
        """``label,p0,...`` lines written the plain way, an oracle for the vectorised reader and writer."""
        return "".join(
            ",".join(str(value) for value in [int(label), *image.ravel().tolist()]) + newline
            for image, label in zip(images, labels, strict=True)
        )

    def idx_path(self, role: str, gz: bool = True, dotted: bool = False) -> Path:
        name = IDX_NAMES[role].replace("-idx", ".idx") if dotted else IDX_NAMES[role]
        return self.root / (f"{name}.gz" if gz else name)

    def write_idx(self, gz: bool = True, dotted: bool = False, **replace: bytes) -> Path:
        """Write the four files, with ``replace[role]`` as the uncompressed content of some; return the directory."""
        for role, content in {**self.data.idx_files(), **replace}.items():
            path = self.idx_path(role, gz, dotted)
            path.write_bytes(gzip.compress(content, mtime=0) if gz else content)
        return self.root

    def write_csv(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_bytes(text.encode())
        return path

    def write_csv_pair(self, newline: str = "\n") -> tuple[Path, Path]:
        """``mnist_train.csv`` and ``mnist_test.csv`` with the tiny set; return their paths."""
        data = self.data
        return (
            self.write_csv("mnist_train.csv", self.csv_text(data.train_images, data.train_labels, newline)),
            self.write_csv("mnist_test.csv", self.csv_text(data.test_images, data.test_labels, newline)),
        )


@pytest.fixture(scope="session")
def tiny() -> TinyMnist:
    return TinyMnist.make()


@pytest.fixture
def mnist_files(tmp_path: Path, tiny: TinyMnist) -> MnistFiles:
    return MnistFiles(tmp_path, tiny)


#: What the cluster tests measured (tests/cluster/conftest.py), gathered from their reports.
CLUSTER_TIMINGS: dict[str, float] = {}
CLUSTER_SECONDS: list[float] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/cluster/"):
        CLUSTER_SECONDS.append(report.duration)
        CLUSTER_TIMINGS.update(value for key, value in report.user_properties if key == "cluster timing")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CLUSTER_TIMINGS:
        terminalreporter.write_sep("-", "cluster timings")
        for name, seconds in CLUSTER_TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f}")
        terminalreporter.write_line(f"cluster tests in all, with set-up (s): {sum(CLUSTER_SECONDS):.1f}")
