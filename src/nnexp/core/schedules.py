"""Learning-rate schedules: the rate of each epoch, from the optimizer's configured ``learning_rate``."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from nnexp.core.optimizers import Optimizer
from nnexp.core.training import Callback
from nnexp.errors import TrainingError, require
from nnexp.registry import Registry


class Schedule:
    """Maps an epoch (numbered from 1) of a run of ``epochs`` epochs to a learning rate."""

    def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
        """The learning rate of ``epoch``, given the optimizer's configured rate ``base_rate``."""
        raise NotImplementedError


SCHEDULES: Registry[Schedule] = Registry("schedule", Schedule)


@SCHEDULES.register("constant")
class Constant(Schedule):
    """The configured rate throughout."""

    def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
        return base_rate


@SCHEDULES.register("step")
class Step(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs (PyTorch's StepLR)."""

    def __init__(self, step_size: int = 10, gamma: float = 0.1) -> None:
        require(step_size >= 1, "step_size", "must be >= 1", step_size)
        require(0 < gamma <= 1, "gamma", "must be in (0, 1]", gamma)
        self.step_size, self.gamma = step_size, gamma

    def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
        return base_rate * self.gamma ** ((epoch - 1) // self.step_size)


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Half a cosine from the configured rate towards ``min_rate``, PyTorch's ``CosineAnnealingLR`` with
    ``T_max`` = the cosine's epochs: the last epoch is one step before ``min_rate``, so it still learns.

    With ``warmup_epochs`` = w, epochs 1..w rise linearly to the configured rate (``base * epoch / (w + 1)``)
    and the cosine spans epochs w + 1 to the last.
    """

    def __init__(self, min_rate: float = 0.0, warmup_epochs: int = 0) -> None:
        require(min_rate >= 0, "min_rate", "must be >= 0", min_rate)
        require(warmup_epochs >= 0, "warmup_epochs", "must be >= 0", warmup_epochs)
        self.min_rate, self.warmup_epochs = min_rate, warmup_epochs

    def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
        if epoch <= self.warmup_epochs:
            return base_rate * epoch / (self.warmup_epochs + 1)
        progress = (epoch - self.warmup_epochs - 1) / (epochs - self.warmup_epochs)
        return self.min_rate + (base_rate - self.min_rate) * 0.5 * (1 + math.cos(math.pi * progress))


class LearningRateScheduler(Callback):
    """Sets ``optimizer.learning_rate`` at the start of every epoch from ``schedule``.

    The base rate is the optimizer's rate when the scheduler is made, so fitting twice starts from it again. Each
    rate is checked as the parameters' ``dtype`` holds it: the updates multiply it in that dtype, where 1e-46 is 0.
    """

    def __init__(self, optimizer: Optimizer, schedule: Schedule, dtype: npt.DTypeLike = np.float64) -> None:
        self.optimizer, self.schedule = optimizer, schedule
        self.base_rate = optimizer.learning_rate
        self.dtype = np.dtype(dtype)
        self.epochs = 1

    def on_train_begin(self, epochs: int, n_samples: int) -> None:
        self.epochs = epochs

    def on_epoch_begin(self, epoch: int) -> None:
        given = self.schedule.rate(epoch, self.base_rate, self.epochs)
        try:
            # A Python float: a NumPy float64 rate would upcast float32 updates. A bool is no rate, though float(True)
            # is 1.0: a schedule returning a comparison would train at rate 1.
            rate = None if isinstance(given, bool | np.bool_) else float(given)
        except (TypeError, ValueError):
            rate = None
        problem = None
        if rate is None or not (math.isfinite(rate) and rate > 0):
            problem = f"gave learning rate {given if rate is None else rate!r} at epoch {epoch}"
        else:
            with np.errstate(over="ignore", under="ignore"):
                held = self.dtype.type(rate)
            if not (np.isfinite(held) and held > 0):
                problem = f"gave learning rate {rate!r} at epoch {epoch}, which is {held} as the run's {self.dtype}"
        if problem is not None:
            raise TrainingError(f"{describe(self.schedule)} {problem}; a rate must be finite and > 0")
        self.optimizer.learning_rate = rate


def describe(schedule: Schedule) -> str:
    """``schedule 'name' (where it was registered from)``, to name a schedule in an error."""
    for name, cls in SCHEDULES.items():
        if cls is type(schedule):
            return f"schedule '{name}' ({SCHEDULES.source(name)})"
    return f"schedule {type(schedule).__qualname__}"
