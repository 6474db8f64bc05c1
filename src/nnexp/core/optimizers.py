"""Optimizers: the base class owns the loop over parameters, subclasses own the update rule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from nnexp.core import Array
from nnexp.core.parallel import elementwise
from nnexp.errors import require
from nnexp.registry import Registry


class Optimizer:
    """Updates parameters in place from their gradients, keeping per-parameter state by key.

    A subclass names its state arrays in :attr:`state_slots` and writes its rule in :meth:`update`, element by
    element and in place, so that one rule serves every parameter and large parameters are updated by several
    threads at once. ``weight_decay`` adds ``weight_decay * weight`` to the gradient of every parameter named
    ``weight`` (an L2 penalty of ``weight_decay / 2 * ||W||^2``); biases are not decayed.
    """

    #: Names of the per-parameter state arrays (zeros before the first step), saved in checkpoints.
    state_slots: tuple[str, ...] = ()
    #: The slots that are running averages of squared gradients, never negative: a checkpoint's are checked.
    nonnegative_slots: tuple[str, ...] = ()

    def __init__(self, learning_rate: float = 0.01, weight_decay: float = 0.0) -> None:
        require(learning_rate > 0, "learning_rate", "must be > 0", learning_rate)
        require(weight_decay >= 0, "weight_decay", "must be >= 0", weight_decay)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.iterations = 0
        self.state: dict[str, dict[str, Array]] = {slot: {} for slot in self.state_slots}
        self._arrays: dict[str, tuple[Array, ...]] = {}
        self._decayed: dict[str, Array] = {}

    def step(self, params_and_grads: Iterable[tuple[str, Array, Array]]) -> None:
        self.iterations += 1
        self.begin_step()
        for key, param, grad in params_and_grads:
            if self.weight_decay and key.rsplit(".", 1)[-1] == "weight":
                grad = self._decay(key, param, grad)
            elementwise(self._apply, (param, grad, *self._arrays_for(key, param)))

    def state_arrays(self, key: str, param: Array) -> tuple[Array, ...]:
        """The state arrays of ``key`` (one per slot), as :meth:`step` updates them; a compiled engine updates
        these same arrays in place, so checkpoints see no difference."""
        return self._arrays_for(key, param)[1:]

    def _arrays_for(self, key: str, param: Array) -> tuple[Array, ...]:
        arrays = self._arrays.get(key)
        if arrays is None or not fits(arrays[0], param):
            arrays = self._arrays[key] = self._allocate(key, param)
        return arrays

    def _allocate(self, key: str, param: Array) -> tuple[Array, ...]:
        """The step buffer of ``key`` and its state arrays, zeros where no state was loaded."""
        for slot in self.state_slots:
            if not fits(self.state[slot].get(key), param):
                self.state[slot][key] = np.zeros_like(param)
        return (np.zeros_like(param), *(self.state[slot][key] for slot in self.state_slots))

    def state_copies(self) -> int:
        """How many arrays the size of the parameters a step keeps: its step buffer, one per state slot, and the
        decayed gradient under weight decay."""
        return 1 + len(self.state_slots) + bool(self.weight_decay)

    def begin_step(self) -> None:
        """Set what every parameter's update shares in this step (a bias correction, say); :attr:`iterations`
        already counts it."""

    def update(self, grad: Array, step: Array, *state: Array) -> None:
        """Write into ``step`` the amount to subtract from the parameter whose gradient is ``grad``, and update its
        ``state`` arrays (one per slot, in :attr:`state_slots` order) in place; everything element by element."""
        raise NotImplementedError

    def _apply(self, param: Array, grad: Array, step: Array, *state: Array) -> None:
        self.update(grad, step, *state)
        param -= step  # in place: layers keep their arrays

    def _decay(self, key: str, param: Array, grad: Array) -> Array:
        """``grad + weight_decay * param`` in a buffer of the optimizer's: the layer's gradient stays as it is."""
        decayed = self._decayed.get(key)
        if not fits(decayed, param):
            decayed = self._decayed[key] = np.empty_like(param)
        np.multiply(param, self.weight_decay, out=decayed)
        decayed += grad
        return decayed

    def state_dict(self) -> dict[str, Array]:
        """The step count and every per-parameter state array, as ``slot/key`` -> array."""
        state = {"iterations": np.asarray(self.iterations)}
        for slot, arrays in self.state.items():
            state.update({f"{slot}/{key}": value for key, value in arrays.items()})
        return state

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Restore what :meth:`state_dict` returned; the arrays are copied."""
        self.iterations = int(state["iterations"])
        for slot in self.state_slots:
            prefix = f"{slot}/"
            self.state[slot] = {k[len(prefix) :]: np.array(v) for k, v in state.items() if k.startswith(prefix)}
        self._arrays.clear()


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer", Optimizer)


def fits(array: Array | None, param: Array) -> bool:
    """Whether a kept ``array`` can serve ``param``: it exists with the parameter's shape and dtype."""
    return array is not None and array.shape == param.shape and array.dtype == param.dtype


def move_average(average: Array, value: Array, weight: float, scratch: Array) -> None:
    """``average = (1 - weight) average + weight value`` in place, written as ``average += weight (value -
    average)``: three passes instead of four. ``scratch`` may be ``value`` itself, which is then overwritten."""
    np.subtract(value, average, out=scratch)
    scratch *= weight
    average += scratch


def scaled_ratio(numerator: Array, second_moment: Array, epsilon: float, scale: float, out: Array) -> None:
    """``out = scale numerator / (sqrt(second_moment) + epsilon)``, the step of RMSprop and Adam, in four passes."""
    np.sqrt(second_moment, out=out)
    out += epsilon
    np.divide(numerator, out, out=out)
    out *= scale


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as in Keras.

    The learning rate is folded into the velocity (``v = momentum v + lr g``; the step is ``v``, or ``momentum v +
    lr g`` with Nesterov), as Keras does: equal to ``torch.optim.SGD``, which scales ``v`` by the rate at each step,
    only while the rate is constant. ``weight_decay`` is coupled L2: ``weight_decay * param`` is added to the
    gradient of weights (not biases) before the rule.
    """

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        require(0 <= momentum < 1, "momentum", "must be in [0, 1)", momentum)
        require(not nesterov or momentum > 0, "nesterov", "needs momentum > 0", nesterov)
        self.momentum = momentum
        self.nesterov = nesterov
        self.state_slots = ("velocity",) if momentum else ()
        super().__init__(learning_rate, weight_decay)

    def update(self, grad: Array, step: Array, *state: Array) -> None:
        np.multiply(grad, self.learning_rate, out=step)
        if not self.momentum:
            return
        (velocity,) = state
        velocity *= self.momentum
        velocity += step
        if self.nesterov:
            step += self.momentum * velocity
        else:
            step[...] = velocity


@OPTIMIZERS.register("rmsprop")
class RMSprop(Optimizer):
    """Divides each step by a running root mean square of recent gradients.

    Keras's defaults (``rho`` 0.9, ``epsilon`` 1e-7), with epsilon added as PyTorch adds it, outside the square
    root: ``lr g / (sqrt(mean_square) + epsilon)``. ``weight_decay`` is coupled L2 on weights, as in :class:`SGD`.
    """

    state_slots = ("mean_square",)
    nonnegative_slots = ("mean_square",)

    def __init__(
        self, learning_rate: float = 0.001, rho: float = 0.9, epsilon: float = 1e-7, weight_decay: float = 0.0
    ) -> None:
        super().__init__(learning_rate, weight_decay)
        require(0 <= rho < 1, "rho", "must be in [0, 1)", rho)
        require(epsilon > 0, "epsilon", "must be > 0", epsilon)
        self.rho, self.epsilon = rho, epsilon

    def update(self, grad: Array, step: Array, *state: Array) -> None:
        (mean_square,) = state
        np.multiply(grad, grad, out=step)
        move_average(mean_square, step, 1 - self.rho, scratch=step)
        scaled_ratio(grad, mean_square, self.epsilon, self.learning_rate, out=step)


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adaptive moment estimation (Kingma and Ba, 2015), with Keras's defaults (``epsilon`` 1e-7).

    Epsilon is added as in the paper's Algorithm 1 and PyTorch, to the bias-corrected root: ``lr m_hat /
    (sqrt(v_hat) + epsilon)``. ``weight_decay`` is coupled L2 on weights, as in :class:`SGD` (not AdamW).
    """

    state_slots = ("m", "v")
    nonnegative_slots = ("v",)

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

    def state_copies(self) -> int:
        """How many arrays the size of the parameters a step keeps: its step buffer, one per state slot, and the
        decayed gradient under weight decay."""
        return 1 + len(self.state_slots) + bool(self.weight_decay)

    def begin_step(self) -> None:
        # lr m_hat / (sqrt(v_hat) + eps), with the bias corrections m_hat = m / c1 and v_hat = v / c2 for the
        # zero-initialised moments, equals scale m / (sqrt(v) + eps sqrt(c2)): two scalars instead of two passes.
        c1, c2 = 1 - self.beta_1**self.iterations, 1 - self.beta_2**self.iterations
        self._scale = self.learning_rate * math.sqrt(c2) / c1
        self._epsilon = self.epsilon * math.sqrt(c2)

    def update(self, grad: Array, step: Array, *state: Array) -> None:
        m, v = state
        move_average(m, grad, 1 - self.beta_1, scratch=step)
        np.multiply(grad, grad, out=step)
        move_average(v, step, 1 - self.beta_2, scratch=step)
        scaled_ratio(m, v, self._epsilon, self._scale, out=step)
