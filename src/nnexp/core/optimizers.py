"""Optimizers: the base class owns the loop over parameters, subclasses own the update rule."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from nnexp.core import Array
from nnexp.errors import require
from nnexp.registry import Registry


class Optimizer:
    """Updates parameters in place from their gradients, keeping per-parameter state by key.

    ``weight_decay`` adds ``weight_decay * weight`` to the gradient of every parameter named ``weight``
    (an L2 penalty of ``weight_decay / 2 * ||W||^2``); biases are not decayed.
    """

    #: The attributes holding per-parameter state (``{key: array}``), saved in checkpoints.
    state_slots: tuple[str, ...] = ()

    def __init__(self, learning_rate: float = 0.01, weight_decay: float = 0.0) -> None:
        require(learning_rate > 0, "learning_rate", "must be > 0", learning_rate)
        require(weight_decay >= 0, "weight_decay", "must be >= 0", weight_decay)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.iterations = 0

    def step(self, params_and_grads: Iterable[tuple[str, Array, Array]]) -> None:
        self.iterations += 1
        for key, param, grad in params_and_grads:
            if self.weight_decay and key.rsplit(".", 1)[-1] == "weight":
                grad = grad + self.weight_decay * param
            param -= self.update(key, grad)  # in place: layers keep their arrays

    def update(self, key: str, grad: Array) -> Array:
        """The amount to subtract from parameter ``key``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Array]:
        """The step count and every per-parameter state array, as ``slot/key`` -> array."""
        state = {"iterations": np.asarray(self.iterations)}
        for slot in self.state_slots:
            for key, value in getattr(self, slot).items():
                state[f"{slot.lstrip('_')}/{key}"] = np.asarray(value)
        return state

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Restore what :meth:`state_dict` returned; the arrays are copied."""
        self.iterations = int(state["iterations"])
        for slot in self.state_slots:
            prefix = f"{slot.lstrip('_')}/"
            setattr(self, slot, {k[len(prefix) :]: np.array(v) for k, v in state.items() if k.startswith(prefix)})


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer", Optimizer)


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as in Keras."""

    state_slots = ("_velocity",)

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(learning_rate, weight_decay)
        require(0 <= momentum < 1, "momentum", "must be in [0, 1)", momentum)
        require(not nesterov or momentum > 0, "nesterov", "needs momentum > 0", nesterov)
        self.momentum = momentum
        self.nesterov = nesterov
        self._velocity: dict[str, Array] = {}

    def update(self, key: str, grad: Array) -> Array:
        step = self.learning_rate * grad
        if not self.momentum:
            return step
        velocity = self._velocity[key] = self.momentum * self._velocity.get(key, 0.0) + step
        return self.momentum * velocity + step if self.nesterov else velocity


@OPTIMIZERS.register("rmsprop")
class RMSprop(Optimizer):
    """Divides each step by a running root mean square of recent gradients (Keras defaults)."""

    state_slots = ("_mean_square",)

    def __init__(
        self, learning_rate: float = 0.001, rho: float = 0.9, epsilon: float = 1e-7, weight_decay: float = 0.0
    ) -> None:
        super().__init__(learning_rate, weight_decay)
        require(0 <= rho < 1, "rho", "must be in [0, 1)", rho)
        require(epsilon > 0, "epsilon", "must be > 0", epsilon)
        self.rho, self.epsilon = rho, epsilon
        self._mean_square: dict[str, Array] = {}

    def update(self, key: str, grad: Array) -> Array:
        mean_square = self._mean_square[key] = self.rho * self._mean_square.get(key, 0.0) + (1 - self.rho) * grad**2
        return self.learning_rate * grad / (np.sqrt(mean_square) + self.epsilon)


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adaptive moment estimation (Kingma and Ba, 2015), with Keras's defaults."""

    state_slots = ("_m", "_v")

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(learning_rate, weight_decay)
        require(0 <= beta_1 < 1, "beta_1", "must be in [0, 1)", beta_1)
        require(0 <= beta_2 < 1, "beta_2", "must be in [0, 1)", beta_2)
        require(epsilon > 0, "epsilon", "must be > 0", epsilon)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self._m: dict[str, Array] = {}
        self._v: dict[str, Array] = {}

    def update(self, key: str, grad: Array) -> Array:
        m = self._m[key] = self.beta_1 * self._m.get(key, 0.0) + (1 - self.beta_1) * grad
        v = self._v[key] = self.beta_2 * self._v.get(key, 0.0) + (1 - self.beta_2) * grad**2
        m_hat = m / (1 - self.beta_1**self.iterations)  # bias correction for the zero-initialised moments
        v_hat = v / (1 - self.beta_2**self.iterations)
        return self.learning_rate * m_hat / (np.sqrt(v_hat) + self.epsilon)
