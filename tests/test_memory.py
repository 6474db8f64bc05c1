"""Memory: a network's footprint stated before it is built matches what it holds; what is available; one-line
errors when a run cannot fit or runs out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from nnexp.core.losses import LOSSES
from nnexp.core.optimizers import OPTIMIZERS
from nnexp.datasets.base import DATASETS, Dataset, Splits
from nnexp.datasets.moons import Moons
from nnexp.errors import OutOfMemoryError
from nnexp.job import memory
from nnexp.job.phases import Phases
from nnexp.models.base import Model
from nnexp.models.mlp import MLP

ROWS = 7


def held_bytes(network, optimizer) -> dict[str, int]:
    """What a built network and its optimizer hold after a step, measured on their arrays."""
    packed = list(network.packed_parameters())
    kept = [*(array for arrays in optimizer._arrays.values() for array in arrays), *optimizer._decayed.values()]
    return {
        "parameters": sum(params.nbytes for _, params, _ in packed),
        "gradients": sum(grads.nbytes for _, _, grads in packed),
        "state": sum(array.nbytes for array in kept),
        "buffers": sum(array.nbytes for layer in network.layers for array in layer._buffers.values()),
    }


@pytest.mark.parametrize(
    "model",
    [
        {"hidden_sizes": [5, 3]},
        {"hidden_sizes": [6], "activation": "identity", "use_bias": False},
        {"hidden_sizes": [4, 4, 4], "activation": "sigmoid", "input_activation": "tanh"},
        {"hidden_sizes": [3], "output_activation": "sigmoid", "input_activation": "identity"},
    ],
)
@pytest.mark.parametrize(
    "optimizer",
    [{"name": "sgd"}, {"name": "sgd", "momentum": 0.9}, {"name": "rmsprop"}, {"name": "adam"}],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_mlp_footprint_is_what_its_network_holds_after_a_step(model, optimizer, dtype) -> None:
    rng = np.random.default_rng(0)
    loss = LOSSES.build({"name": "mse" if "output_activation" in model else "cross_entropy"})
    mlp, opt = MLP(**model), OPTIMIZERS.build(optimizer)
    n_inputs, n_outputs = 4, 3
    footprint = mlp.footprint(n_inputs, n_outputs, loss)
    network = mlp.build(n_inputs, n_outputs, loss, rng, dtype)
    x = rng.normal(size=(ROWS, n_inputs)).astype(dtype)
    targets = loss.encode(rng.integers(0, n_outputs, ROWS), n_outputs, dtype)
    network.backward(loss.value_and_gradient(targets, network.forward(x))[1])
    opt.step(network.packed_parameters())
    itemsize = np.dtype(dtype).itemsize
    assert held_bytes(network, opt) == {
        "parameters": footprint.parameters * itemsize,
        "gradients": footprint.parameters * itemsize,
        "state": opt.state_copies() * footprint.parameters * itemsize,
        "buffers": footprint.values_per_row * ROWS * itemsize,
    }
    assert footprint.parameters == network.n_parameters


def test_weight_decay_keeps_one_more_copy_of_the_weights() -> None:
    rng = np.random.default_rng(0)
    opt = OPTIMIZERS.build({"name": "adam", "weight_decay": 0.01})
    mlp, loss = MLP(hidden_sizes=[5], use_bias=False), LOSSES.build({"name": "cross_entropy"})
    network = mlp.build(3, 2, loss, rng, np.float32)
    network.backward(loss.value_and_gradient(np.eye(2, dtype=np.float32), network.forward(np.ones((2, 3), "f4")))[1])
    opt.step(network.packed_parameters())
    assert opt.state_copies() == 4
    assert held_bytes(network, opt)["state"] == 4 * mlp.footprint(3, 2, loss).parameters * 4


def splits(n_features: int = 784, n_train: int = 1000, n_test: int = 100, n_val: int = 0) -> Splits:
    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((n, n_features), np.float32), np.zeros(n, np.int64)

    (x_train, y_train), (x_test, y_test) = part(n_train), part(n_test)
    x_val, y_val = part(n_val) if n_val else (None, None)
    return Splits(x_train, y_train, x_test, y_test, 10, x_val, y_val)


def test_the_estimate_of_a_known_network() -> None:
    parameters = 784 * 100 + 100 + 100 * 10 + 10
    per_row = 100 + 2 * 100 + 100 + 10  # dense0 out, relu out + grad, dense1 grad_in + out
    setting, parts = memory.estimate(
        MLP(hidden_sizes=[100]),
        OPTIMIZERS.build({"name": "adam"}),
        LOSSES.build({"name": "cross_entropy"}),
        splits(n_test=5000),
        32,
        np.float64,
    )
    assert setting == "hidden_sizes=[100]"
    assert parts == {
        "parameters": parameters * 8,
        "gradients": parameters * 8,
        "adam state": 3 * parameters * 8,
        "batch buffers": memory.EVALUATION_BATCH * per_row * 8,  # the test set is evaluated in chunks
    }


@pytest.mark.parametrize(
    ("batch_size", "data", "rows"),
    [
        (32, {"n_test": 100}, 100),
        (32, {"n_test": 10}, 32),
        (None, {"n_train": 9000}, 9000),
        (64, {"n_test": 10, "n_val": 50000}, memory.EVALUATION_BATCH),
        (8, {"n_features": 2, "n_test": 10}, memory.EVALUATION_BATCH),  # the decision boundary's grid
    ],
)
def test_buffer_rows_are_the_larger_of_a_batch_and_an_evaluation_chunk(batch_size, data, rows) -> None:
    assert memory.buffer_rows(splits(**data), batch_size) == rows


def fake_system(tmp_path: Path, monkeypatch, available_kib: int, cgroup: str, files: dict[str, str]) -> None:
    """Point the module at a fake /proc/meminfo, /proc/self/cgroup and /sys/fs/cgroup."""
    (tmp_path / "meminfo").write_text(f"MemTotal:  99999999 kB\nMemAvailable:  {available_kib} kB\n")
    (tmp_path / "cgroup").write_text(cgroup)
    for name, text in files.items():
        path = tmp_path / "sys" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(memory, "SELF_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path / "sys")


@pytest.mark.parametrize(
    ("cgroup", "files", "expected"),
    [
        ("0::/\n", {}, 4 * 2**30),
        ("0::/job\n", {"job/memory.max": "max\n", "job/memory.current": "100\n"}, 4 * 2**30),
        ("0::/job\n", {"job/memory.max": "1000000\n", "job/memory.current": "400000\n"}, 600000),
        (  # a parent's tighter limit binds the child
            "0::/a/b\n",
            {"a/memory.max": "5000", "a/memory.current": "1000", "a/b/memory.max": "max", "a/b/memory.current": "9"},
            4000,
        ),
        (
            "4:memory:/docker/x\n1:cpu:/\n",
            {"memory/docker/x/memory.limit_in_bytes": "2000000", "memory/docker/x/memory.usage_in_bytes": "500000"},
            1500000,
        ),
        (
            "4:memory:/docker/x\n",
            {
                "memory/docker/x/memory.limit_in_bytes": "9223372036854771712",
                "memory/docker/x/memory.usage_in_bytes": "500000",
            },
            4 * 2**30,
        ),
        ("0::/job\n", {"job/memory.max": "100", "job/memory.current": "900"}, 0),
    ],
)
def test_available_memory_is_the_smaller_of_meminfo_and_the_cgroup_headroom(
    tmp_path, monkeypatch, cgroup, files, expected
) -> None:
    fake_system(tmp_path, monkeypatch, 4 * 2**20, cgroup, files)
    assert memory.available_bytes() == expected


def test_no_meminfo_means_no_check(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "absent")
    assert memory.available_bytes() is None
    memory.check_fits(
        MLP(hidden_sizes=[10**10]),
        OPTIMIZERS.build({"name": "sgd"}),
        LOSSES.build({"name": "cross_entropy"}),
        splits(),
        32,
        np.float32,
    )


def test_a_network_that_cannot_fit_is_refused_in_one_line(tmp_path, monkeypatch) -> None:
    fake_system(tmp_path, monkeypatch, 2**20, "0::/\n", {})  # 1 GiB available
    with pytest.raises(OutOfMemoryError) as error:
        memory.check_fits(
            MLP(hidden_sizes=[100_000_000]),
            OPTIMIZERS.build({"name": "adam"}),
            LOSSES.build({"name": "cross_entropy"}),
            splits(),
            32,
            np.float32,
        )
    assert str(error.value) == (
        "model.hidden_sizes=[100000000] needs about 1.6 TiB (parameters, gradients, adam state, batch buffers) "
        "and 1.0 GiB is available; use smaller layers"
    )


def test_full_batches_that_cannot_fit_suggest_a_smaller_batch(tmp_path, monkeypatch) -> None:
    fake_system(tmp_path, monkeypatch, 2**20, "0::/\n", {})
    with pytest.raises(OutOfMemoryError, match=r"needs about 3\.\d GiB .*; use a smaller trainer.batch_size or"):
        memory.check_fits(
            MLP(hidden_sizes=[2000]),
            OPTIMIZERS.build({"name": "sgd"}),
            LOSSES.build({"name": "cross_entropy"}),
            splits(n_train=100_000),
            None,
            np.float32,
        )


def test_a_network_that_fits_passes_and_a_model_without_a_footprint_is_not_checked(tmp_path, monkeypatch) -> None:
    fake_system(tmp_path, monkeypatch, 2**20, "0::/\n", {})
    sgd, loss = OPTIMIZERS.build({"name": "sgd"}), LOSSES.build({"name": "cross_entropy"})
    memory.check_fits(MLP(hidden_sizes=[64, 64]), sgd, loss, splits(), 32, np.float32)

    class Opaque(Model):
        pass

    memory.check_fits(Opaque(), sgd, loss, splits(), 32, np.float32)


def test_a_dataset_that_cannot_fit_is_refused_before_it_is_made(tmp_path, monkeypatch) -> None:
    """2**31 moons: the kernel killed the process while scikit-learn made them, leaving the run with no word."""
    fake_system(tmp_path, monkeypatch, 2**20, "0::/\n", {})
    made, load = [], Moons.load
    monkeypatch.setattr(Moons, "load", lambda self, rng: made.append(self.n_samples) or load(self, rng))
    loss = LOSSES.build({"name": "cross_entropy"})
    with pytest.raises(OutOfMemoryError) as error:
        memory.check_data_fits({"name": "moons", "n_samples": 2**31}, loss, np.float32)
    # Per row: two float64 features and an int64 label, made and copied by the split; then float32 x and one-hot y.
    assert str(error.value) == (
        "dataset.n_samples=2147483648 needs about 128.0 GiB (generated arrays, split copies, float32 copies) and "
        "1.0 GiB is available; use a smaller dataset.n_samples"
    )
    assert made == [memory.PROBE_SAMPLES], "only the probe was made"


@pytest.mark.parametrize(
    ("config", "parts"),
    [
        (
            {"name": "moons", "n_samples": 3000},
            {"generated arrays": 72000, "split copies": 72000, "float64 copies": 96000},
        ),
        ({"name": "moons", "n_samples": 1000}, None),  # no larger than the probe: nothing to measure
        ({"name": "quadrants"}, None),  # no n_samples: eight fixed points
    ],
)
def test_the_data_estimate_scales_a_probe_of_any_dataset_with_n_samples(config, parts) -> None:
    loss = LOSSES.build({"name": "cross_entropy"})
    assert memory.data_estimate(config, loss, np.float64) == parts


def test_a_user_dataset_plugin_with_n_samples_is_estimated_the_same_way(
    tmp_path, monkeypatch, restore_registries
) -> None:
    @DATASETS.register("wide_noise")
    class WideNoise(Dataset):
        def __init__(self, n_samples: int = 100, n_features: int = 50) -> None:
            self.n_samples, self.n_features = n_samples, n_features

        def load(self, rng: np.random.Generator) -> Splits:
            x = rng.standard_normal((self.n_samples, self.n_features))
            y = (x[:, 0] > 0).astype(np.int64)
            half = self.n_samples // 2
            return Splits(x[:half], y[:half], x[half:], y[half:], n_classes=2)

    fake_system(tmp_path, monkeypatch, 2**20, "0::/\n", {})
    loss = LOSSES.build({"name": "cross_entropy"})
    memory.check_data_fits({"name": "wide_noise", "n_samples": 10**6, "n_features": 50}, loss, np.float32)
    with pytest.raises(OutOfMemoryError, match=r"^dataset.n_samples=10000000 needs about 9\.5 GiB \("):
        memory.check_data_fits({"name": "wide_noise", "n_samples": 10**7, "n_features": 50}, loss, np.float32)


@pytest.mark.parametrize(
    "allocate",
    [
        lambda: np.empty((784, 10**10), np.float32),  # NumPy's _ArrayMemoryError
        lambda: np.empty((10**10, 10**10), np.float32),  # ValueError: array is too big
        lambda: np.empty(10**20, np.float32),  # ValueError: Maximum allowed dimension exceeded
    ],
)
def test_numpy_allocation_failures_become_one_line(allocate) -> None:
    with pytest.raises(OutOfMemoryError) as error, memory.running_out("building the network", "use a smaller model"):
        allocate()
    message = str(error.value)
    assert message.startswith("out of memory while building the network: ")
    assert message.endswith("; use a smaller model") and "\n" not in message


def test_other_value_errors_pass_through() -> None:
    with pytest.raises(ValueError, match="not memory"), memory.running_out("training", "x"):
        raise ValueError("not memory")


def test_a_memory_error_in_a_run_phase_names_the_phase() -> None:
    phases = Phases()
    with pytest.raises(OutOfMemoryError) as error, phases("training"), phases("checkpoints"):
        raise MemoryError
    assert str(error.value) == (
        "out of memory while writing a checkpoint: MemoryError; use a smaller model or trainer.batch_size, "
        "or free memory"
    )
    assert set(phases.metrics()) >= {"system/training_seconds", "system/checkpoints_seconds"}


@pytest.mark.parametrize("error", [MemoryError(), ValueError("array is too big; `arr.size * ...`.")])
def test_an_allocation_failure_outside_a_run_phase_is_one_line(monkeypatch, capsys, error) -> None:
    import nnexp.__main__ as cli

    def launch() -> None:
        raise error

    monkeypatch.setattr(cli, "launch", launch)
    monkeypatch.setattr(cli, "FULL_ERRORS", False)
    monkeypatch.setattr(cli, "raise_on_stop_signals", lambda: None)
    changed = ("HYDRA_FULL_ERROR", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    for variable in (*changed, *cli.HTTP_RETRIES):
        # main() sets these: recorded by setenv, so that monkeypatch removes them again afterwards
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
    monkeypatch.setattr("sys.argv", ["nnexp", "trainer.epochs=1"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        f"error: out of memory while running: {str(error) or 'MemoryError'}; use a smaller model or "
        "trainer.batch_size, or free memory\n"
    )
