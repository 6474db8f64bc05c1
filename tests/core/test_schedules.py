"""Learning-rate schedules: every registered one behaves; step and cosine checked by hand; the trainer applies them."""

import math

import numpy as np
import pytest

from nnexp.core.layers import Dense
from nnexp.core.losses import LOSSES
from nnexp.core.network import Sequential
from nnexp.core.optimizers import SGD
from nnexp.core.schedules import SCHEDULES, Cosine, LearningRateScheduler, Schedule, Step
from nnexp.core.training import Callback, Examples, Trainer
from nnexp.errors import ParameterError, TrainingError
from nnexp.registry import registration_source

BASE = 0.1
EPOCHS = 20


def rates(schedule: Schedule, base_rate: float = BASE, epochs: int = EPOCHS) -> list[float]:
    return [schedule.rate(epoch, base_rate, epochs) for epoch in range(1, epochs + 1)]


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_starts_at_the_base_rate_and_stays_finite(name: str) -> None:
    values = rates(SCHEDULES.build({"name": name}))
    assert values[0] == BASE  # the defaults have no warm-up
    assert all(math.isfinite(value) and value > 0 for value in values)
    assert any(value > 0 for value in values[1:])


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_is_deterministic(name: str) -> None:
    schedule = SCHEDULES.build({"name": name})
    assert rates(schedule) == rates(schedule) == rates(SCHEDULES.build({"name": name}))


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_of_a_one_epoch_run_is_the_base_rate(name: str) -> None:
    assert SCHEDULES.build({"name": name}).rate(1, BASE, 1) == BASE


def test_constant_keeps_the_base_rate() -> None:
    assert rates(SCHEDULES.build({"name": "constant"})) == [BASE] * EPOCHS


def test_step_matches_hand_values() -> None:
    # The rate halves after every two epochs: 0.1, 0.1, 0.1/2, 0.1/2, 0.1/4.
    assert rates(Step(step_size=2, gamma=0.5), 0.1, 5) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025], rel=1e-15)


def test_cosine_matches_hand_values() -> None:
    # 0.1 * 0.5 * (1 + cos(pi * (e - 1) / 4)) for e = 1..4: cos is 1, 1/sqrt(2), 0, -1/sqrt(2).
    expected = [0.1, 0.08535533905932738, 0.05, 0.014644660940672627]
    assert rates(Cosine(), 0.1, 4) == pytest.approx(expected, rel=1e-12)


def test_cosine_follows_pytorchs_cosine_annealing_over_the_run() -> None:
    # torch.optim.lr_scheduler.CosineAnnealingLR(T_max=epochs, eta_min) stepped once per epoch, written out.
    epochs, base, low = 7, 0.3, 0.01
    expected = [low + (base - low) * (1 + math.cos(math.pi * t / epochs)) / 2 for t in range(epochs)]
    assert rates(Cosine(min_rate=low), base, epochs) == pytest.approx(expected, rel=1e-15)


def test_cosine_with_the_default_min_rate_still_learns_in_the_last_epoch() -> None:
    values = rates(Cosine(min_rate=0.01), 0.1, 5)
    assert values[0] == 0.1 and values[-1] > 0.01
    assert rates(Cosine(), 0.1, 5)[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 5)), rel=1e-15)


def test_cosine_warm_up_rises_linearly_then_anneals() -> None:
    # Two warm-up epochs at 0.3 * 1/3 and 0.3 * 2/3, then a cosine over epochs 3..4 from 0.3: 0.3, 0.15.
    assert rates(Cosine(warmup_epochs=2), 0.3, 4) == pytest.approx([0.1, 0.2, 0.3, 0.15], abs=1e-15)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("step", "step_size", 0),
        ("step", "gamma", 0.0),
        ("step", "gamma", -1.0),
        ("step", "gamma", 1.5),
        ("cosine", "min_rate", -0.1),
        ("cosine", "warmup_epochs", -1),
    ],
)
def test_invalid_values_raise_naming_the_field(name: str, field: str, value: float) -> None:
    with pytest.raises(ParameterError, match=rf"^schedule\.{field} must .*, got {value}$"):
        SCHEDULES.build({"name": name, field: value})


class StepRates(Callback):
    """Records the optimizer's rate at every step, and the logged ``learning_rate`` of every epoch."""

    def __init__(self, optimizer: SGD) -> None:
        self.at_steps: list[float] = []
        self.logged: list[float] = []
        step = optimizer.step

        def recording_step(params_and_grads):
            self.at_steps.append(optimizer.learning_rate)
            step(params_and_grads)

        optimizer.step = recording_step

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.logged.append(logs["learning_rate"])


def fit_with_schedule(schedule: Schedule, epochs: int, scheduler_first: bool = True):
    rng = np.random.default_rng(0)
    loss = LOSSES.build({"name": "cross_entropy"})
    labels = np.array([0, 1, 0, 1])
    train = Examples(rng.standard_normal((4, 2)), loss.encode(labels, 2, np.float64), labels)
    network = Sequential([Dense(2, 2, rng, dtype=np.float64)])
    optimizer = SGD(learning_rate=0.4)
    recorder = StepRates(optimizer)
    scheduler = LearningRateScheduler(optimizer, schedule)
    callbacks = [scheduler, recorder] if scheduler_first else [recorder, scheduler]
    history = Trainer(epochs, batch_size=None).fit(network, loss, optimizer, train, rng, callbacks=callbacks)
    return history, recorder, optimizer, scheduler


@pytest.mark.parametrize("scheduler_first", [True, False])
def test_scheduler_sets_the_rate_of_every_epoch_and_the_trainer_logs_it(scheduler_first: bool) -> None:
    history, recorder, _, _ = fit_with_schedule(Step(step_size=1, gamma=0.5), 3, scheduler_first)
    expected = [0.4, 0.2, 0.1]
    assert recorder.at_steps == expected  # full batch: one step per epoch
    assert recorder.logged == expected
    assert history["learning_rate"] == expected


def test_scheduler_starts_from_the_base_rate_again_when_fit_twice() -> None:
    _, recorder, optimizer, scheduler = fit_with_schedule(Cosine(), 3)
    loss = LOSSES.build({"name": "cross_entropy"})
    again = Examples(np.ones((2, 2)), np.eye(2), np.array([0, 1]))
    network = Sequential([Dense(2, 2, np.random.default_rng(1), dtype=np.float64)])
    Trainer(2, batch_size=None).fit(network, loss, optimizer, again, np.random.default_rng(1), callbacks=[scheduler])
    assert recorder.at_steps == pytest.approx([0.4, 0.3, 0.1, 0.4, 0.2], rel=1e-15)


def test_without_a_scheduler_the_configured_rate_is_logged() -> None:
    rng = np.random.default_rng(0)
    loss = LOSSES.build({"name": "cross_entropy"})
    labels = np.array([0, 1])
    train = Examples(rng.standard_normal((2, 2)), loss.encode(labels, 2, np.float64), labels)
    network = Sequential([Dense(2, 2, rng, dtype=np.float64)])
    history = Trainer(2, batch_size=None).fit(network, loss, SGD(learning_rate=0.3), train, rng)
    assert history["learning_rate"] == [0.3, 0.3]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scheduled_rate_keeps_the_parameter_dtype(dtype: type) -> None:
    optimizer = SGD(learning_rate=0.1)
    scheduler = LearningRateScheduler(optimizer, Cosine())
    scheduler.on_train_begin(3, 2)
    scheduler.on_epoch_begin(2)
    assert type(optimizer.learning_rate) is float  # a NumPy float64 would upcast float32 updates
    param = np.array([1.0, -1.0], dtype=dtype)
    optimizer.step([("dense0.weight", param, np.array([1.0, -1.0], dtype=dtype))])
    assert param.dtype == dtype
    assert all(array.dtype == dtype for array in optimizer._arrays["dense0.weight"])


class Fixed(Schedule):
    """Gives ``value`` from epoch ``from_epoch`` on, and the base rate before."""

    def __init__(self, value: object = -0.5, from_epoch: int = 2) -> None:
        self.value, self.from_epoch = value, from_epoch

    def rate(self, epoch: int, base_rate: float, epochs: int) -> object:
        return self.value if epoch >= self.from_epoch else base_rate


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.0, "0.0"),
        (-0.5, "-0.5"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (None, "None"),
        ("fast", "'fast'"),
        (True, "True"),
        (np.True_, "np.True_"),
    ],
)
def test_a_rate_that_is_not_finite_and_positive_stops_training_naming_the_schedule(value, shown) -> None:
    with pytest.raises(TrainingError) as error:
        fit_with_schedule(Fixed(value, from_epoch=3), 5)
    assert str(error.value) == (
        f"schedule Fixed gave learning rate {shown} at epoch 3; a rate must be finite and > 0"
    )


@pytest.mark.parametrize(("value", "held"), [(1e-46, "0.0"), (1e39, "inf")])
def test_a_rate_that_is_0_or_inf_in_the_runs_dtype_stops_training_naming_the_schedule(value, held) -> None:
    """The updates multiply the rate in the parameters' dtype: 1e-46 left a float32 run training at rate 0."""
    scheduler = LearningRateScheduler(SGD(learning_rate=0.1), Fixed(value, from_epoch=3), np.float32)
    scheduler.on_train_begin(5, 2)
    scheduler.on_epoch_begin(2)
    with pytest.raises(TrainingError) as error:
        scheduler.on_epoch_begin(3)
    assert str(error.value) == (
        f"schedule Fixed gave learning rate {value!r} at epoch 3, which is {held} as the run's float32; "
        "a rate must be finite and > 0"
    )
    wide = LearningRateScheduler(SGD(learning_rate=0.1), Fixed(value, from_epoch=3), np.float64)
    wide.on_epoch_begin(3)
    assert wide.optimizer.learning_rate == value


def test_a_registered_schedule_is_named_with_its_source(restore_registries) -> None:
    class Negative(Schedule):
        def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
            return -0.5 if epoch >= 2 else base_rate

    with registration_source("file plugins/my_sched.py"):
        SCHEDULES.register("my_sched")(Negative)
    with pytest.raises(TrainingError) as error:
        fit_with_schedule(SCHEDULES.build({"name": "my_sched"}), 4)
    assert str(error.value) == (
        "schedule 'my_sched' (file plugins/my_sched.py) gave learning rate -0.5 at epoch 2; "
        "a rate must be finite and > 0"
    )


def test_a_numpy_rate_is_accepted_as_a_python_float() -> None:
    _, recorder, _, _ = fit_with_schedule(Fixed(np.float64(0.25)), 3)
    assert recorder.at_steps == [0.4, 0.25, 0.25]
    assert all(type(rate) is float for rate in recorder.at_steps)


def test_cosine_towards_zero_runs_to_the_end_learning() -> None:
    history, _, _, _ = fit_with_schedule(Cosine(min_rate=0.0), 4)
    assert history["learning_rate"][-1] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 3 / 4)), rel=1e-15)
