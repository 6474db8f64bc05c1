"""The trainer's engine: the NumPy layers (the reference, and the path for plugins) or compiled kernels.

``compiled`` runs the built-in MLP's batches with the Numba kernels of :mod:`nnexp.core.compiled.kernels`,
imported only here and only when asked for, since importing Numba takes about a second. Small batches on narrow
layers run many steps per kernel call (a whole epoch, or as much as fits in a tenth of a second), with loops for a
few rows and BLAS's products from about eight; large ones keep NumPy's products and take the optimizer's step as
one compiled pass per parameter array. When most inputs are zero (MNIST's pixels), the first layer's products of
large batches skip them (:mod:`nnexp.core.compiled.sparse`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from nnexp.core import Array
from nnexp.core.activations import ACTIVATIONS, Activation
from nnexp.core.compiled.codes import (
    ADAM,
    BIAS,
    CROSS_ENTROPY,
    DENSE,
    IDENTITY,
    KIND,
    MSE,
    N_IN,
    N_OUT,
    RELU,
    RMSPROP,
    SGD,
    SIGMOID,
    SOFTMAX,
    TANH,
)
from nnexp.core.layers import Bias, Dense
from nnexp.core.losses import LOSSES, Loss
from nnexp.core.network import Sequential
from nnexp.core.optimizers import OPTIMIZERS, Optimizer
from nnexp.core.parallel import worker_count
from nnexp.errors import ConfigError
from nnexp.registry import Registry

if TYPE_CHECKING:
    from nnexp.core.compiled.sparse import SparseFirstLayer

log = logging.getLogger(__name__)

ENGINES = ("auto", "numpy", "compiled")

#: The built-in components the kernels implement, by registered name.
KERNEL_CODES: dict[str, dict[str, int]] = {
    "activation": {"identity": IDENTITY, "sigmoid": SIGMOID, "tanh": TANH, "relu": RELU, "softmax": SOFTMAX},
    "loss": {"mse": MSE, "cross_entropy": CROSS_ENTROPY},
    "optimizer": {"sgd": SGD, "rmsprop": RMSPROP, "adam": ADAM},
}
#: Built-in components left to the NumPy path on purpose, by kind; a built-in in neither table fails the tests.
NUMPY_ONLY: dict[str, frozenset[str]] = {"activation": frozenset(), "loss": frozenset(), "optimizer": frozenset()}

#: Batches of at most this many multiply-adds (rows times weights) run many steps per kernel call, so that
#: Python is not paid per batch; larger ones are worth NumPy's products, whose BLAS may use every core.
#: Measured per batch, float32, Adam, on a busy 2-core machine: 2-64-64-2 at 64 rows (278,528) 72-92 us in the
#: kernel against 120-149 us with NumPy's products and a compiled update.
LOOP_MAX_WORK = 1 << 19
#: Inside the kernel, batches of at least this many rows take BLAS's products, smaller ones loops: on 2-64-64-2,
#: float32, 17.7 against 9.8 us per batch at 8 rows, 36.9 against 19.8 at 32; loops win at 2 and 4 rows. A layer
#: with fewer inputs than this takes loops at any size (2-64-64-2's first at 32 rows: 0.2 against 0.9 us for its
#: weight's gradient).
BLAS_ROWS = 8
#: Large batches whose inputs are at most this share non-zero (judged on the first rows of the data) multiply only
#: the non-zero ones in the first layer. Measured on 784-512 at 128 rows, float32, 2 threads: MNIST (19% non-zero)
#: 0.38 ms forward and 0.31 ms for the weight's gradient against BLAS's 0.63 (with the batch's gather) and 0.55.
SPARSE_MAX_DENSITY = 0.3
#: How many of the data's first rows judge its density.
DENSITY_ROWS = 1000


def _code(registry: Registry[Any], component: object) -> tuple[int | None, str]:
    """The kernel code of ``component`` (``None`` if it has none) and how to name it in a message."""
    cls = type(component)
    name = next((name for name, registered in registry.items() if registered is cls), None)
    if name is None:
        return None, f"{registry.kind} {cls.__name__}"
    code = KERNEL_CODES[registry.kind].get(name) if cls.__module__.startswith("nnexp.core.") else None
    return code, f"{registry.kind} {name} from {registry.source(name)}"


@dataclass(frozen=True)
class Plan:
    """What the kernels need to know about a network, loss and optimizer they support."""

    stages: np.ndarray  # one row per Dense or Bias layer, columns KIND ... ACTIVATION
    loss: int
    optimizer: int


def plan(network: Sequential, loss: Loss, optimizer: Optimizer) -> Plan | str:
    """The kernels' plan for training ``network``, or why they cannot train it."""
    loss_code, loss_name = _code(LOSSES, loss)
    if loss_code is None:
        return f"{loss_name} has no kernel"
    optimizer_code, optimizer_name = _code(OPTIMIZERS, optimizer)
    if optimizer_code is None:
        return f"{optimizer_name} has no kernel"
    flat = {kind: params for kind, params, _ in network.packed_parameters()}
    stages: list[list[int]] = []
    for layer in network.layers:
        if type(layer) in (Dense, Bias):
            bias = layer.params.get("bias")
            weight = layer.params.get("weight")
            n_in, n_out = weight.shape if weight is not None else (bias.size, bias.size)
            stages.append(
                [
                    DENSE if weight is not None else BIAS,
                    n_in,
                    n_out,
                    -1 if weight is None else _offset(weight, flat["weight"]),
                    -1 if bias is None else _offset(bias, flat["bias"]),
                    IDENTITY,
                ]
            )
            continue
        if not isinstance(layer, Activation):
            return f"layer {type(layer).__name__} has no kernel"
        code, name = _code(ACTIVATIONS, layer)
        if code is None:
            return f"{name} has no kernel"
        if code == IDENTITY:
            continue
        if not stages or stages[-1][-1] != IDENTITY:
            return f"{name} does not follow a dense or bias layer"
        stages[-1][-1] = code
    if not stages:
        return "the network has no dense layer"
    return Plan(np.array(stages, dtype=np.int64), loss_code, optimizer_code)


def _offset(view: Array, flat: Array) -> int:
    """Where ``view``, a layer's parameter, starts in ``flat``, the packed array it is a view of."""
    return (view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // flat.itemsize


def _load_kernels() -> ModuleType | str:
    """:mod:`nnexp.core.compiled.kernels`, or why it cannot be imported (no Numba for this platform, say)."""
    _cache_where_writable()
    try:
        from nnexp.core.compiled import kernels
    except ImportError as exc:
        return f"numba cannot be imported ({exc})"
    except RuntimeError as exc:  # Numba found no folder to keep its compiled kernels in
        return f"numba cannot compile here ({exc})"
    return kernels


_warming_up: threading.Thread | None = None


def warm_up(requested: str) -> None:
    """Import Numba and set up its compiler in a background thread if ``trainer.engine=requested`` may compile.

    The half second or more this takes then overlaps the run's data loading and MLflow's start-up instead of
    adding to them; :func:`select` and the first kernel call wait for whatever is left. Once per process.
    """
    global _warming_up
    if requested == "numpy" or _warming_up is not None:
        return
    with contextlib.suppress(ImportError):  # without SciPy, select() says why the kernels cannot be used
        # Numba's matrix products call SciPy's BLAS. Imported here first, in this thread: while the run loads
        # its data, scikit-learn imports SciPy too, and two threads importing the same modules in another order
        # can meet in Python's import locks (a _DeadlockError in one of them).
        import scipy.linalg.cython_blas  # noqa: F401
    # A daemon: a job interrupted during Numba's import ends without waiting for it. A Ctrl-C that lands in the main
    # thread between Python taking its import lock and the ``try`` that releases it leaves the lock taken for good,
    # and this thread waiting for it; Python's exit would then wait for this thread forever.
    _warming_up = threading.Thread(target=_import_and_set_up, name="nnexp-kernels", daemon=True)
    _warming_up.start()


def _import_and_set_up() -> None:
    """Import the kernels and initialise Numba's CPU target, as the first kernel call would."""
    kernels = _load_kernels()
    if isinstance(kernels, str):
        return  # select() tries again and says why
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:  # what every compilation holds: the main thread may be calling a kernel already
        kernels.train_batches.targetctx.refresh()


def _cache_where_writable() -> None:
    """Numba keeps compiled kernels beside their module; a user who may not write the installed package gets a
    cache folder of their own instead (``$XDG_CACHE_HOME/nnexp/numba``), unless ``NUMBA_CACHE_DIR`` says where."""
    package = Path(__file__).parent / "compiled"
    if "NUMBA_CACHE_DIR" in os.environ or os.access(package, os.W_OK):
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnexp" / "numba"
    os.environ["NUMBA_CACHE_DIR"] = str(cache)


def select(requested: str, network: Sequential, loss: Loss, optimizer: Optimizer) -> CompiledSteps | None:
    """The compiled steps for ``trainer.engine=requested``, or ``None`` for the NumPy path.

    ``auto`` falls back to NumPy in one logged line when a component has no kernel; ``compiled`` raises
    :class:`ConfigError` instead.
    """
    if requested == "numpy":
        return None
    found = plan(network, loss, optimizer)
    kernels = _load_kernels() if isinstance(found, Plan) else found
    if isinstance(kernels, ModuleType) and isinstance(found, Plan):
        return CompiledSteps(found, network, loss, optimizer, kernels)
    if requested == "compiled":
        raise ConfigError(f"trainer.engine=compiled cannot train this run: {kernels}; use trainer.engine=auto")
    log.info("engine: numpy (%s)", kernels)
    return None


class CompiledSteps:
    """Training steps of a network that :func:`plan` accepts, by the kernels, in place on its arrays."""

    def __init__(
        self, plan: Plan, network: Sequential, loss: Loss, optimizer: Optimizer, kernels: ModuleType
    ) -> None:
        self.plan, self.network, self.loss, self.optimizer, self.kernels = plan, network, loss, optimizer, kernels
        self.dtype = network.dtype
        empty = np.empty(0, self.dtype)
        flat = {kind: (params, grads) for kind, params, grads in network.packed_parameters()}
        self._packed = [(kind, *flat.get(kind, (empty, empty))) for kind in ("weight", "bias")]
        self._identity = np.empty(0, np.int64)
        dense = plan.stages[plan.stages[:, KIND] == DENSE]
        self._weights_per_row = int((dense[:, N_IN] * dense[:, N_OUT]).sum())
        self._sparse: SparseFirstLayer | None = None
        #: The data whose density was last counted, and whether it suits the sparse products.
        self._counted: tuple[Array | None, bool] = (None, False)

    def loops(self, size: int) -> bool:
        """Whether batches of ``size`` rows run inside the kernel rather than with BLAS products."""
        return size * self._weights_per_row <= LOOP_MAX_WORK

    def run(
        self,
        x: Array,
        targets: Array,
        order: np.ndarray | None,
        first_batch: int,
        n_batches: int,
        size: int,
        predicted: np.ndarray,
        loss_sum: float,
    ) -> tuple[int, float, float]:
        """Train on up to ``n_batches`` batches from ``first_batch`` on, as ``Trainer._epoch`` would.

        Returns ``(batches done, loss_sum, loss)``: a ``loss`` that is not finite stopped the call before its
        batch's update, with ``loss_sum`` and ``predicted`` holding the batches before it.
        """
        hyper, hyper64 = self._hyperparameters()
        state = self._state()
        iteration = self.optimizer.iterations
        if self.loops(size):
            done, loss_sum, value = self.kernels.train_batches(
                np.ascontiguousarray(x), np.ascontiguousarray(targets), self._order(x) if order is None else order,
                first_batch, n_batches, size,
                BLAS_ROWS, self.plan.stages, *state, self.plan.loss, self.plan.optimizer, hyper, hyper64, iteration,
                predicted, loss_sum,
            )  # fmt: skip
            self.optimizer.iterations += done
            return done, loss_sum, value
        done, value = 0, 0.0
        n_samples = x.shape[0]
        sparse = self._sparse_first_layer(x, size)
        with contextlib.nullcontext() if sparse is None else sparse.blas_on_one_thread():
            for start in range(first_batch * size, min(n_samples, (first_batch + n_batches) * size), size):
                stop = start + size
                if sparse is None:
                    outputs = self.network.forward(x[start:stop] if order is None else x[order[start:stop]])
                else:
                    outputs = sparse.forward(x, self._order(x) if order is None else order, start, min(stop, n_samples))
                value, grad = self.loss.value_and_gradient(targets[start:stop], outputs)
                if not math.isfinite(value):
                    break
                outputs.argmax(axis=1, out=predicted[start:stop])
                (self.network if sparse is None else sparse).backward(grad)
                self.optimizer.iterations += 1
                self.kernels.update_parameters(*state, self.plan.optimizer, hyper, hyper64, self.optimizer.iterations)
                loss_sum += value * outputs.shape[0]
                done += 1
        return done, loss_sum, value

    def _order(self, x: Array) -> np.ndarray:
        """The samples' order when they are not shuffled: ``0, 1, 2, …``, made once."""
        if self._identity.size != x.shape[0]:
            self._identity = np.arange(x.shape[0], dtype=np.int64)
        return self._identity

    def _sparse_first_layer(self, x: Array, size: int) -> SparseFirstLayer | None:
        """The sparse products of the first layer, when they pay for ``x`` in batches of ``size`` rows."""
        if self._counted[0] is not x:  # counted once per data set, not at each of an epoch's calls
            self._counted = (x, self._suits_sparse_products(x))
        if not self._counted[1]:
            return None
        if self._sparse is None or self._sparse.size < size:
            from nnexp.core.compiled.sparse import SparseFirstLayer

            self._sparse = SparseFirstLayer(self.network, size, worker_count())
        return self._sparse

    def _suits_sparse_products(self, x: Array) -> bool:
        """Whether the first layer is Dense, ``x`` is in its dtype and contiguous, and mostly zeros."""
        first = self.network.layers[0]
        weight = first.params.get("weight") if type(first) is Dense else None
        if weight is None or x.dtype != weight.dtype or x.ndim != 2 or not x.flags.c_contiguous:
            return False
        sample = x[:DENSITY_ROWS]
        return bool(np.count_nonzero(sample) <= SPARSE_MAX_DENSITY * sample.size)

    def _state(self) -> list[Array]:
        """Weights, their gradients and two state arrays, then the same for biases: the optimizer's own arrays."""
        arrays = []
        for kind, params, grads in self._packed:
            state = self.optimizer.state_arrays(kind, params) if params.size else ()
            arrays += [params, grads, *state, *[np.empty(0, self.dtype)] * (2 - len(state))]
        return arrays

    def _hyperparameters(self) -> tuple[Array, Array]:
        """The optimizer's constants, as :func:`kernels._update` reads them, from its current learning rate."""
        opt: Any = self.optimizer
        rate, decay = float(opt.learning_rate), opt.weight_decay
        if self.plan.optimizer == SGD:
            values, wide = [rate, opt.momentum, float(opt.nesterov), decay], [rate]
        elif self.plan.optimizer == RMSPROP:
            values, wide = [rate, 1 - opt.rho, opt.epsilon, decay], [rate]
        else:
            values, wide = [1 - opt.beta_1, 1 - opt.beta_2, decay], [rate, opt.beta_1, opt.beta_2, opt.epsilon]
        return np.array(values, self.dtype), np.array(wide, np.float64)
