"""Checks of registered plugins, built-in or a user's: finite-difference gradients of activations, losses and
models, and one decreasing step of each optimizer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from nnexp.registry import Registry

#: Central differences with a step of 1e-6 agree with a right float64 gradient to about 1e-8 or better; a wrong one
#: (a missing factor, a sign) is off by 1e-2 or more.
TOLERANCE = 1e-6
KINDS = ("activation", "loss", "model", "optimizer")


@dataclass
class Result:
    kind: str
    name: str
    source: str
    outcome: str  # "pass", "FAIL" or "skip"
    detail: str

    def line(self) -> str:
        return f"{self.outcome:4}  {self.kind} {self.name} ({self.source}): {self.detail}"


def gradient_detail(error: float) -> tuple[str, str]:
    return ("pass" if error <= TOLERANCE else "FAIL"), f"worst relative error {error:.1e} (at most {TOLERANCE:.0e})"


def check_activation(name: str, rng: np.random.Generator) -> tuple[str, str]:
    from nnexp.core.activations import ACTIVATIONS
    from nnexp.core.gradcheck import check_layer

    # Inputs kept away from 0, where ReLU-like activations have a kink that finite differences straddle.
    x = rng.uniform(0.2, 2.0, (4, 5)) * rng.choice([-1.0, 1.0], (4, 5))
    return gradient_detail(check_layer(ACTIVATIONS.build({"name": name}), x, rng))


def check_loss(name: str, rng: np.random.Generator) -> tuple[str, str]:
    from nnexp.core.gradcheck import check_loss as loss_error
    from nnexp.core.losses import LOSSES

    loss = LOSSES.build({"name": name})
    y_true = loss.encode(np.array([0, 1, 2, 1]), 3, np.float64)
    return gradient_detail(loss_error(loss, y_true, rng.uniform(0.1, 0.9, (4, 3))))


def check_model(name: str, rng: np.random.Generator) -> tuple[str, str]:
    from nnexp.core.gradcheck import check_network
    from nnexp.core.losses import LOSSES
    from nnexp.models.base import MODELS

    loss = LOSSES.build({"name": "mse"})  # every output activation suits it; the losses are checked on their own
    network = MODELS.build({"name": name}).build(3, 3, loss, rng, np.float64)
    y_true = loss.encode(np.array([0, 1, 2, 1]), 3, np.float64)
    return gradient_detail(check_network(network, loss, rng.standard_normal((4, 3)), y_true))


def check_optimizer(name: str, rng: np.random.Generator) -> tuple[str, str]:
    from nnexp.core.layers import Dense
    from nnexp.core.losses import LOSSES
    from nnexp.core.network import Sequential
    from nnexp.core.optimizers import OPTIMIZERS

    loss = LOSSES.build({"name": "mse"})
    network = Sequential([Dense(3, 2, rng, dtype=np.float64)])
    x, y_true = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    before = loss.value(y_true, network.forward(x))
    network.backward(loss.gradient(y_true, network.forward(x)))
    OPTIMIZERS.build({"name": name}).step(list(network.parameters()))
    after = loss.value(y_true, network.forward(x))
    detail = f"one step from its defaults took a least-squares loss from {before:.6g} to {after:.6g}"
    return ("pass" if after < before else "FAIL"), detail


CHECKS: dict[str, Callable[[str, np.random.Generator], tuple[str, str]]] = {
    "activation": check_activation,
    "loss": check_loss,
    "model": check_model,
    "optimizer": check_optimizer,
}


def registries() -> dict[str, Registry]:
    from nnexp.core.activations import ACTIVATIONS
    from nnexp.core.losses import LOSSES
    from nnexp.core.optimizers import OPTIMIZERS
    from nnexp.models.base import MODELS

    return {"activation": ACTIVATIONS, "loss": LOSSES, "model": MODELS, "optimizer": OPTIMIZERS}


def check_all(kinds: list[str], only: list[str], seed: int) -> Iterator[Result]:
    """One result per registered plugin of ``kinds`` (named in ``only``, if given), as each is checked."""
    for kind, registry in registries().items():
        if kind not in kinds:
            continue
        for name in registry.names():
            if only and name not in only:
                continue
            try:
                registry.build({"name": name})
            except Exception as exc:  # a constructor with a required argument: nothing to check it with
                yield Result(kind, name, registry.source(name), "skip", f"cannot be built from its defaults: {exc}")
                continue
            try:
                outcome, detail = CHECKS[kind](name, np.random.default_rng(seed))
            except Exception as exc:  # a plugin's own error is its check's result, not nnexp's
                outcome, detail = "FAIL", f"{type(exc).__name__}: {exc}"
            yield Result(kind, name, registry.source(name), outcome, detail)
