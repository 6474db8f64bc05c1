"""The compiled engine against the NumPy reference: same weights, optimizer state, losses and predictions."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from nnexp.core import engine, training
from nnexp.core.activations import ACTIVATIONS, Activation
from nnexp.core.compiled.sparse import SparseFirstLayer
from nnexp.core.losses import LOSSES
from nnexp.core.network import Sequential
from nnexp.core.optimizers import OPTIMIZERS, Optimizer
from nnexp.core.training import Callback, Examples, Stopped, Trainer, predict
from nnexp.errors import ConfigError, TrainingError
from nnexp.models.mlp import MLP
from nnexp.registry import Registry

REGISTRIES: dict[str, Registry] = {"activation": ACTIVATIONS, "loss": LOSSES, "optimizer": OPTIMIZERS}
OPTIMIZER_SETTINGS = {
    "sgd": {"learning_rate": 0.05},
    "momentum": {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 0.01},
    "nesterov": {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9, "nesterov": True},
    "rmsprop": {"learning_rate": 0.01, "weight_decay": 0.001},
    "adam": {"learning_rate": 0.01},
}
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


def builtins(kind: str) -> list[str]:
    registry = REGISTRIES[kind]
    return [name for name in registry.names() if registry.source(name).startswith("nnexp.")]


@pytest.mark.parametrize(("kind", "name"), [(kind, name) for kind in REGISTRIES for name in builtins(kind)])
def test_every_builtin_has_a_kernel_or_is_declared_numpy_only(kind: str, name: str) -> None:
    assert name in engine.KERNEL_CODES[kind] or name in engine.NUMPY_ONLY[kind], (
        f"built-in {kind} {name} has no kernel: add one to nnexp.core.compiled.kernels or to engine.NUMPY_ONLY"
    )


def test_every_optimizer_with_a_kernel_is_compared() -> None:
    compared = {settings.get("name", name) for name, settings in OPTIMIZER_SETTINGS.items()}
    assert compared == set(engine.KERNEL_CODES["optimizer"])


def setup(
    activation: str, loss_name: str, optimizer: str, use_bias: bool, dtype: type[np.floating], seed: int = 0
) -> tuple[Sequential, object, Optimizer, Examples, np.random.Generator]:
    """A two-hidden-layer MLP using ``activation`` everywhere it may, and data of 40 rows, from ``seed``."""
    rng = np.random.default_rng(seed)
    loss = LOSSES.build({"name": loss_name})
    model = MLP(
        [6, 5],
        activation,
        output_activation=activation if loss_name == "mse" else None,
        use_bias=use_bias,
        input_activation=activation if use_bias else None,
    )
    network = model.build(4, 3, loss, rng, dtype)
    x = rng.normal(size=(40, 4)).astype(dtype)
    labels = rng.integers(0, 3, 40)
    settings = {"name": optimizer, **OPTIMIZER_SETTINGS[optimizer]}
    return network, loss, OPTIMIZERS.build(settings), Examples(x, loss.encode(labels, 3, dtype), labels), rng


def assert_close(reference: np.ndarray, compiled: np.ndarray, tolerance: float, what: str) -> None:
    scale = max(float(np.max(np.abs(reference), initial=0.0)), 1e-30)
    assert np.max(np.abs(reference - compiled), initial=0.0) <= tolerance * scale, what


@pytest.mark.parametrize("batch_size", [1, 7, 12, 64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("optimizer", list(OPTIMIZER_SETTINGS))
@pytest.mark.parametrize("loss", [name for name in builtins("loss") if name in engine.KERNEL_CODES["loss"]])
@pytest.mark.parametrize("activation", [n for n in builtins("activation") if n in engine.KERNEL_CODES["activation"]])
def test_compiled_steps_match_the_numpy_reference(
    activation, loss, optimizer, use_bias, dtype, batch_size, monkeypatch
) -> None:
    # In the kernel 1 and 7 rows take loops; with BLAS from 5 rows on, 12 take BLAS's products in the layers of 6
    # and 5 inputs and loops in the first, of 4 (the last batch of 4 rows loops again); 64 rows, as large batches
    # do, take NumPy's products in Python: test that path on these small networks too.
    if batch_size == 12:
        monkeypatch.setattr(engine, "BLAS_ROWS", 5)
    if batch_size == 64:
        monkeypatch.setattr(engine, "LOOP_MAX_WORK", 0)
    runs = {}
    for name in ("numpy", "compiled"):
        network, loss_fn, optimizer_obj, data, rng = setup(activation, loss, optimizer, use_bias, dtype)
        trainer = Trainer(3, batch_size, engine=name)
        history = trainer.fit(network, loss_fn, optimizer_obj, data, rng)
        assert trainer.engine_used == name
        runs[name] = (network, optimizer_obj, history, predict(network, data.x))
    (net_a, opt_a, hist_a, out_a), (net_b, opt_b, hist_b, out_b) = runs["numpy"], runs["compiled"]
    tolerance = TOLERANCE[dtype]
    for key, param in net_a.state_dict().items():
        assert_close(param, net_b.state_dict()[key], tolerance, key)
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a.keys() == state_b.keys() and int(state_a["iterations"]) == int(state_b["iterations"])
    for key in state_a:
        assert_close(state_a[key], state_b[key], tolerance, key)
    for key in ("train_loss", "train_accuracy", "learning_rate"):
        assert_close(np.array(hist_a[key]), np.array(hist_b[key]), tolerance, key)
    assert_close(out_a, out_b, tolerance, "predictions")


def sparse_setup(
    activation: str,
    loss_name: str,
    optimizer: str,
    use_bias: bool,
    dtype: type[np.floating],
    zeros: float = 0.8,
    rows: int = 50,
) -> tuple[Sequential, object, Optimizer, Examples, np.random.Generator]:
    """A 12-input MLP whose first layer is Dense, on ``rows`` rows whose inputs are ``zeros`` 0, as MNIST's are."""
    rng = np.random.default_rng(1)
    loss = LOSSES.build({"name": loss_name})
    output = activation if loss_name == "mse" else None
    network = MLP([9, 5], activation, output_activation=output, use_bias=use_bias).build(12, 3, loss, rng, dtype)
    x = (rng.normal(size=(rows, 12)) * (rng.random((rows, 12)) >= zeros)).astype(dtype)
    labels = rng.integers(0, 3, rows)
    settings = {"name": optimizer, **OPTIMIZER_SETTINGS[optimizer]}
    return network, loss, OPTIMIZERS.build(settings), Examples(x, loss.encode(labels, 3, dtype), labels), rng


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("optimizer", list(OPTIMIZER_SETTINGS))
@pytest.mark.parametrize(("activation", "loss"), [("relu", "cross_entropy"), ("sigmoid", "mse")])
def test_large_batches_of_mostly_zero_inputs_skip_them_and_match_the_numpy_reference(
    activation, loss, optimizer, use_bias, dtype, shuffle, monkeypatch
) -> None:
    monkeypatch.setattr(engine, "LOOP_MAX_WORK", 0)
    sparse_batches = []
    forward = SparseFirstLayer.forward
    monkeypatch.setattr(
        SparseFirstLayer,
        "forward",
        lambda self, *args: sparse_batches.append(args[3] - args[2]) or forward(self, *args),
    )
    runs = {}
    for name in ("numpy", "compiled"):
        network, loss_fn, optimizer_obj, data, rng = sparse_setup(activation, loss, optimizer, use_bias, dtype)
        history = Trainer(3, 16, shuffle=shuffle, engine=name).fit(network, loss_fn, optimizer_obj, data, rng)
        runs[name] = (network, optimizer_obj, history, predict(network, data.x))
    assert sparse_batches == [16, 16, 16, 2] * 3, "every batch, the last short one too, took the sparse products"
    (net_a, opt_a, hist_a, out_a), (net_b, opt_b, hist_b, out_b) = runs["numpy"], runs["compiled"]
    tolerance = TOLERANCE[dtype]
    for key, param in net_a.state_dict().items():
        assert_close(param, net_b.state_dict()[key], tolerance, key)
    for key, value in opt_a.state_dict().items():
        assert_close(value, opt_b.state_dict()[key], tolerance, key)
    for key in ("train_loss", "train_accuracy"):
        assert_close(np.array(hist_a[key]), np.array(hist_b[key]), tolerance, key)
    assert_close(out_a, out_b, tolerance, "predictions")


@pytest.mark.parametrize(
    ("zeros", "dtype", "sparse"), [(0.8, np.float32, True), (0.5, np.float32, False), (0.8, np.float64, False)]
)
def test_the_sparse_products_are_taken_only_for_mostly_zero_inputs_of_the_weights_dtype(
    zeros, dtype, sparse, monkeypatch
) -> None:
    monkeypatch.setattr(engine, "LOOP_MAX_WORK", 0)
    network, loss, optimizer, data, _ = sparse_setup("relu", "cross_entropy", "adam", True, np.float32, zeros)
    steps = engine.select("compiled", network, loss, optimizer)
    assert (steps._sparse_first_layer(data.x.astype(dtype), 16) is not None) == sparse


def test_blas_runs_on_one_thread_while_the_sparse_products_train_and_as_before_after(monkeypatch) -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    loaded = {pool["filepath"] for pool in threadpool_info() if pool["user_api"] == "blas"}  # NumPy's among them

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["filepath"] in loaded}

    monkeypatch.setattr(engine, "LOOP_MAX_WORK", 0)
    network, loss, optimizer, data, rng = sparse_setup("relu", "cross_entropy", "adam", True, np.float32)
    seen = []
    value_and_gradient = loss.value_and_gradient
    monkeypatch.setattr(loss, "value_and_gradient", lambda *a: seen.append(blas_threads()) or value_and_gradient(*a))
    with threadpool_limits(limits=2, user_api="blas"):
        Trainer(2, 16, engine="compiled").fit(network, loss, optimizer, data, rng)
        assert blas_threads() == {2}
    assert seen == [{1}] * 8


def test_the_sparse_kernels_equal_blas_products_with_and_without_bias() -> None:
    from nnexp.core.compiled import sparse

    rng = np.random.default_rng(2)
    x = (rng.normal(size=(30, 40)) * (rng.random((30, 40)) < 0.2)).astype(np.float32)
    x[3] = 0  # a row with no input at all
    x[:, 7] = np.nan * (np.arange(30) == 5)  # a NaN is not zero: it reaches the output as in NumPy
    order = rng.permutation(30)
    w = rng.normal(size=(40, 8)).astype(np.float32)
    delta = rng.normal(size=(10, 8)).astype(np.float32)
    index, value, count = np.empty((10, 40), np.int64), np.empty((10, 40), np.float32), np.empty(10, np.int64)
    for bias in (rng.normal(size=8).astype(np.float32), np.empty(0, np.float32)):
        out = np.full((10, 8), -1.0, np.float32)
        gradient = np.full_like(w, -1.0)
        sparse.forward(x, order, 17, 10, w, bias, out, index, value, count)
        sparse.weight_gradient(index, value, count, 10, delta, gradient)
        batch = x[order[17:27]]
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(out, batch @ w + (bias if bias.size else 0), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(gradient, batch.T @ delta, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("optimizer", "fused"), [("sgd", True), ("momentum", False), ("adam", False)])
def test_per_sample_plain_sgd_steps_each_weight_without_storing_its_gradient(optimizer, fused) -> None:
    # The fused step leaves the weights' gradient array as it found it; every other rule reads it, so it is written.
    network, loss, optimizer_obj, data, rng = setup("sigmoid", "mse", optimizer, True, np.float32)
    [weight_grads] = [grads for kind, _, grads in network.packed_parameters() if kind == "weight"]
    weight_grads[...] = np.nan
    Trainer(1, 1, engine="compiled").fit(network, loss, optimizer_obj, data, rng)
    assert np.isnan(weight_grads).all() == fused and np.isfinite(network.state_dict()["dense1.weight"]).all()


@pytest.mark.parametrize("path", ["kernel", "sparse products"])
def test_a_stopped_compiled_fit_resumes_to_the_same_weights_bit_for_bit(path, monkeypatch) -> None:
    # Calls grow fourfold whatever the machine's pace, so that the stop below lands inside epoch 2.
    monkeypatch.setattr(training, "COMPILED_CALL_SECONDS", 1e9)
    if path == "sparse products":
        monkeypatch.setattr(engine, "LOOP_MAX_WORK", 0)

    def fresh():
        if path == "kernel":
            network, loss, optimizer, data, rng = setup("tanh", "cross_entropy", "adam", True, np.float64, seed=3)
            return network, loss, optimizer, data, rng, Trainer(3, 2, engine="compiled")
        network, loss, optimizer, data, rng = sparse_setup("tanh", "cross_entropy", "adam", True, np.float32, rows=40)
        return network, loss, optimizer, data, rng, Trainer(3, 2, engine="compiled")

    network, loss, optimizer, data, rng, trainer = fresh()
    whole = trainer.fit(network, loss, optimizer, data, rng)

    network_b, loss_b, optimizer_b, data_b, rng_b, trainer_b = fresh()
    run = engine.CompiledSteps.run
    calls = []

    def run_then_stop(self, *args):
        calls.append(1)
        if len(calls) == 4:  # inside epoch 2: calls of 1 batch, then 4, then the rest of epoch 1, then epoch 2
            trainer_b.request_stop("interrupted (test)", 130)
        return run(self, *args)

    monkeypatch.setattr(engine.CompiledSteps, "run", run_then_stop)
    with pytest.raises(Stopped) as stopped:
        trainer_b.fit(network_b, loss_b, optimizer_b, data_b, rng_b)
    monkeypatch.setattr(engine.CompiledSteps, "run", run)
    state = stopped.value.state
    assert state.epoch >= 1 and 0 < state.batch < 20, "stopped inside an epoch, at a batch boundary"
    assert str(stopped.value) == f"interrupted (test) in epoch {state.epoch + 1}, after {state.batch} of its batches"

    network_c, loss_c, optimizer_c, data_c, rng_c, trainer_c = fresh()
    network_c.load_state_dict({key: value.copy() for key, value in network_b.state_dict().items()})
    optimizer_c.load_state_dict(optimizer_b.state_dict())
    rng_c.bit_generator.state = state.rng_state
    resumed = trainer_c.fit(network_c, loss_c, optimizer_c, data_c, rng_c, resume=state)
    for key, param in network.state_dict().items():
        np.testing.assert_array_equal(network_c.state_dict()[key], param, err_msg=key)
    for key, value in optimizer.state_dict().items():
        np.testing.assert_array_equal(optimizer_c.state_dict()[key], value, err_msg=key)
    del whole["epoch_seconds"], resumed["epoch_seconds"]
    assert resumed == whole


class Halve(Callback):
    """A schedule's effect: the learning rate halves at every epoch."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer

    def on_epoch_begin(self, epoch: int) -> None:
        self.optimizer.learning_rate = 0.1 / 2**epoch


@pytest.mark.parametrize("batch_size", [1, 12])
def test_compiled_steps_take_the_learning_rate_of_each_epoch(batch_size) -> None:
    weights = []
    for name in ("numpy", "compiled"):
        network, loss, optimizer, data, rng = setup("sigmoid", "mse", "nesterov", True, np.float64)
        trainer = Trainer(3, batch_size, engine=name)
        history = trainer.fit(network, loss, optimizer, data, rng, callbacks=[Halve(optimizer)])
        assert history["learning_rate"] == [0.05, 0.025, 0.0125]
        weights.append(network.state_dict()["dense2.weight"])
    assert_close(weights[0], weights[1], 1e-12, "dense2.weight")


@pytest.mark.parametrize("batch_size", [1, 12, 64])
def test_a_loss_that_stops_being_finite_fails_as_on_the_numpy_path(batch_size, monkeypatch) -> None:
    monkeypatch.setattr(engine, "LOOP_MAX_WORK", 0 if batch_size == 64 else engine.LOOP_MAX_WORK)
    messages = []
    for name in ("numpy", "compiled"):
        network, loss, _, data, rng = setup("relu", "cross_entropy", "sgd", True, np.float64)
        optimizer = OPTIMIZERS.build({"name": "sgd", "learning_rate": 1e300})
        with pytest.raises(TrainingError) as error:
            Trainer(5, batch_size, engine=name).fit(network, loss, optimizer, data, rng)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("loss became ") and messages[0].endswith("try a smaller optimizer.learning_rate")


@pytest.fixture
def leaky(restore_registries) -> None:
    @ACTIVATIONS.register("leaky")
    class Leaky(Activation):
        def forward(self, x):
            self._x = x
            return np.where(x > 0, x, 0.1 * x)

        def backward(self, grad_out, input_grad=True):
            return np.where(self._x > 0, grad_out, 0.1 * grad_out)


def test_auto_falls_back_to_numpy_for_a_plugin_activation_in_one_line(leaky, caplog) -> None:
    network, loss, optimizer, data, rng = setup("leaky", "cross_entropy", "adam", True, np.float64)
    trainer = Trainer(2, 4, engine="auto")
    with caplog.at_level(logging.INFO, logger="nnexp.core.engine"):
        trainer.fit(network, loss, optimizer, data, rng)
    assert trainer.engine_used == "numpy"
    source = ACTIVATIONS.source("leaky")
    assert caplog.messages == [f"engine: numpy (activation leaky from {source} has no kernel)"]


def test_compiled_with_a_plugin_activation_is_a_one_line_config_error(leaky) -> None:
    network, loss, optimizer, _, _ = setup("leaky", "mse", "sgd", False, np.float32)
    with pytest.raises(ConfigError) as error:
        Trainer(1, 1, engine="compiled").select_engine(network, loss, optimizer)
    assert str(error.value) == (
        f"trainer.engine=compiled cannot train this run: activation leaky from {ACTIVATIONS.source('leaky')} "
        "has no kernel; use trainer.engine=auto"
    )


def test_an_unregistered_optimizer_subclass_has_no_kernel() -> None:
    class Mine(type(OPTIMIZERS.build({"name": "sgd"}))):
        """A subclass may change the rule: the kernel's copy of the parent's would be wrong."""

    network, loss, _, _, _ = setup("relu", "cross_entropy", "sgd", True, np.float64)
    assert engine.plan(network, loss, Mine()) == "optimizer Mine has no kernel"


def test_without_numba_auto_trains_with_numpy_and_says_why(monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delitem(sys.modules, "nnexp.core.compiled.kernels", raising=False)
    monkeypatch.delattr("nnexp.core.compiled.kernels", raising=False)
    network, loss, optimizer, data, rng = setup("relu", "cross_entropy", "adam", True, np.float64)
    trainer = Trainer(1, 8, engine="auto")
    with caplog.at_level(logging.INFO, logger="nnexp.core.engine"):
        trainer.fit(network, loss, optimizer, data, rng)
    assert trainer.engine_used == "numpy"
    [message] = caplog.messages
    assert message.startswith("engine: numpy (numba cannot be imported (")


def test_a_user_who_may_not_write_the_package_gets_a_numba_cache_of_their_own(monkeypatch, tmp_path):
    from nnexp.core import engine

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")  # recorded, so that monkeypatch removes what the function sets
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(engine.os, "access", lambda path, mode: False)
    engine._cache_where_writable()
    assert engine.os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "nnexp" / "numba")


def test_a_process_whose_main_thread_kept_the_import_lock_still_exits_while_the_kernels_load() -> None:
    """What a Ctrl-C landing in the main thread just after Python took its import lock leaves: the warm-up thread
    waits for that lock for good, and the process must exit all the same (it hung in Python's exit before)."""
    code = (
        "import _imp\n"
        "from nnexp.core import engine\n"
        "engine.warm_up('auto')\n"
        "_imp.acquire_lock()\n"
        "raise SystemExit(130)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], timeout=30, capture_output=True, text=True)
    assert result.returncode == 130, result.stderr


def test_warm_up_imports_the_kernels_in_one_background_thread_unless_the_engine_is_numpy(monkeypatch) -> None:
    monkeypatch.setattr(engine, "_warming_up", None)
    engine.warm_up("numpy")
    assert engine._warming_up is None
    engine.warm_up("auto")
    thread = engine._warming_up
    assert thread is not None and thread.name == "nnexp-kernels"
    thread.join(timeout=120)
    assert not thread.is_alive() and "nnexp.core.compiled.kernels" in sys.modules
    engine.warm_up("compiled")
    assert engine._warming_up is thread, "once per process"
