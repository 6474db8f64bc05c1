"""Trainer: determinism, batching, validation, NaN detection, callbacks, and learning a separable toy."""

import numpy as np
import pytest

from nnexp.core.activations import Tanh
from nnexp.core.layers import Dense
from nnexp.core.losses import LOSSES
from nnexp.core.network import Sequential
from nnexp.core.optimizers import SGD
from nnexp.core.training import Callback, Examples, Trainer, evaluate, predict
from nnexp.errors import ParameterError, TrainingError

CROSS_ENTROPY = LOSSES.build({"name": "cross_entropy"})


def separable(rng: np.random.Generator, n_samples: int = 24) -> Examples:
    """Two classes split by the sign of the first feature, with a margin of 0.5 on each side."""
    labels = np.arange(n_samples) % 2
    x = rng.uniform(0.5, 2.0, size=(n_samples, 2))
    x[:, 1] *= rng.choice([-1.0, 1.0], size=n_samples)
    x[:, 0] *= np.where(labels == 1, 1.0, -1.0)
    return Examples(x, CROSS_ENTROPY.encode(labels, 2, np.float64), labels)


def network(rng: np.random.Generator) -> Sequential:
    return Sequential([Dense(2, 4, rng, dtype=np.float64), Tanh(), Dense(4, 2, rng, dtype=np.float64)])


def fit(seed: int, epochs: int = 3, batch_size: int | None = 5, shuffle: bool = True, **kwargs):
    rng = np.random.default_rng(seed)
    net = network(rng)
    optimizer = SGD(learning_rate=0.2)
    history = Trainer(epochs, batch_size, shuffle).fit(
        net, CROSS_ENTROPY, optimizer, separable(np.random.default_rng(100)), rng, **kwargs
    )
    return history, net, optimizer


def without_timing(history: dict[str, list[float]]) -> dict[str, list[float]]:
    return {key: values for key, values in history.items() if key != "epoch_seconds"}


def assert_same_weights(first: Sequential, second: Sequential) -> None:
    for (key, a, _), (_, b, _) in zip(first.parameters(), second.parameters(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_same_seed_gives_identical_history_and_weights() -> None:
    history_a, net_a, _ = fit(seed=7)
    history_b, net_b, _ = fit(seed=7)
    assert without_timing(history_a) == without_timing(history_b)
    assert_same_weights(net_a, net_b)


def test_different_seeds_give_different_weights() -> None:
    _, net_a, _ = fit(seed=7)
    _, net_b, _ = fit(seed=8)
    assert not np.array_equal(net_a.state_dict()["dense0.weight"], net_b.state_dict()["dense0.weight"])


def test_shuffling_order_comes_from_the_generator() -> None:
    results = []
    for shuffle_seed in (1, 2):
        net = network(np.random.default_rng(0))  # the same initial weights both times
        Trainer(2, 4).fit(
            net,
            CROSS_ENTROPY,
            SGD(0.2),
            separable(np.random.default_rng(100)),
            np.random.default_rng(shuffle_seed),
        )
        results.append(net.state_dict()["dense0.weight"].copy())
    assert not np.array_equal(results[0], results[1])


def test_without_shuffling_the_generator_does_not_matter() -> None:
    _, net_a, _ = fit(seed=7, shuffle=False)
    rng = np.random.default_rng(7)
    net_b = network(rng)
    Trainer(3, 5, shuffle=False).fit(
        net_b, CROSS_ENTROPY, SGD(0.2), separable(np.random.default_rng(100)), np.random.default_rng(12345)
    )
    assert_same_weights(net_a, net_b)


def test_history_has_one_value_per_epoch() -> None:
    history, _, _ = fit(seed=0, epochs=4)
    assert set(history) == {"train_loss", "train_accuracy", "epoch_seconds", "learning_rate"}
    assert all(len(values) == 4 for values in history.values())
    assert all(seconds >= 0 for seconds in history["epoch_seconds"])


def test_full_batch_takes_one_step_per_epoch() -> None:
    _, _, optimizer = fit(seed=0, epochs=3, batch_size=None)
    assert optimizer.iterations == 3


def test_batch_size_one_takes_one_step_per_sample() -> None:
    _, _, optimizer = fit(seed=0, epochs=2, batch_size=1)
    assert optimizer.iterations == 2 * 24


def test_last_partial_batch_is_a_step_of_its_own() -> None:
    _, _, optimizer = fit(seed=0, epochs=2, batch_size=10)
    assert optimizer.iterations == 2 * 3  # 24 samples: 10 + 10 + 4


def test_batch_size_larger_than_the_data_is_full_batch() -> None:
    _, full_net, _ = fit(seed=0, epochs=3, batch_size=None)
    _, big_net, optimizer = fit(seed=0, epochs=3, batch_size=1000)
    assert optimizer.iterations == 3
    assert_same_weights(full_net, big_net)


@pytest.mark.parametrize(
    ("epochs", "batch_size", "field"),
    [(0, 8, "epochs"), (-1, 8, "epochs"), (3, 0, "batch_size"), (3, -2, "batch_size")],
)
def test_trainer_rejects_invalid_settings(epochs: int, batch_size: int, field: str) -> None:
    with pytest.raises(ParameterError, match=rf"^{field} must be >= 1"):
        Trainer(epochs, batch_size)


def test_non_finite_loss_raises_training_error_naming_the_epoch(rng: np.random.Generator) -> None:
    net = Sequential([Dense(2, 2, rng, dtype=np.float64)])
    labels = np.array([0, 1, 0, 1])
    data = Examples(np.full((4, 2), np.inf), CROSS_ENTROPY.encode(labels, 2, np.float64), labels)
    with pytest.raises(TrainingError, match="epoch 1"), np.errstate(invalid="ignore"):
        Trainer(3, None).fit(net, CROSS_ENTROPY, SGD(0.1), data, rng)


class Recorder(Callback):
    def __init__(self) -> None:
        self.begins: list[tuple[int, int]] = []
        self.epochs: list[int] = []
        self.calls: list[str] = []
        self.logs: list[dict[str, float]] = []

    def on_train_begin(self, epochs: int, n_samples: int) -> None:
        self.begins.append((epochs, n_samples))

    def on_epoch_begin(self, epoch: int) -> None:
        self.calls.append(f"begin {epoch}")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.epochs.append(epoch)
        self.calls.append(f"end {epoch}")
        self.logs.append(dict(logs))


def test_callbacks_see_train_begin_once_and_every_epoch_begin_and_end() -> None:
    recorder = Recorder()
    history, _, _ = fit(seed=0, epochs=3, callbacks=[recorder])
    assert recorder.begins == [(3, 24)]
    assert recorder.epochs == [1, 2, 3]
    assert recorder.calls == ["begin 1", "end 1", "begin 2", "end 2", "begin 3", "end 3"]
    assert all(
        set(logs) == {"train_loss", "train_accuracy", "epoch_seconds", "learning_rate"} for logs in recorder.logs
    )
    assert [logs["train_loss"] for logs in recorder.logs] == history["train_loss"]


def test_callbacks_see_validation_metrics_when_validation_is_given() -> None:
    recorder = Recorder()
    validation = separable(np.random.default_rng(5), n_samples=10)
    history, _, _ = fit(seed=0, epochs=2, callbacks=[recorder], validation=validation)
    expected = {"train_loss", "train_accuracy", "epoch_seconds", "learning_rate", "val_loss", "val_accuracy"}
    assert all(set(logs) == expected for logs in recorder.logs)
    assert set(history) == expected
    assert [logs["val_accuracy"] for logs in recorder.logs] == history["val_accuracy"]


def test_validation_metrics_are_those_of_the_trained_network() -> None:
    validation = separable(np.random.default_rng(5), n_samples=10)
    history, net, _ = fit(seed=0, epochs=2, validation=validation)
    val_loss, val_accuracy, _ = evaluate(net, CROSS_ENTROPY, validation)
    assert history["val_loss"][-1] == pytest.approx(val_loss)
    assert history["val_accuracy"][-1] == val_accuracy


def test_mlp_learns_a_linearly_separable_toy_perfectly() -> None:
    rng = np.random.default_rng(3)
    train, test = separable(rng, n_samples=40), separable(rng, n_samples=20)
    net = network(rng)
    history = Trainer(epochs=40, batch_size=8).fit(net, CROSS_ENTROPY, SGD(learning_rate=0.5), train, rng, test)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_accuracy"][-1] == 1.0
    assert evaluate(net, CROSS_ENTROPY, train)[1] == 1.0


def test_predict_in_chunks_equals_one_forward_pass(rng: np.random.Generator) -> None:
    net = network(rng)
    x = rng.standard_normal((10, 2))
    np.testing.assert_allclose(predict(net, x, batch_size=3), net.forward(x), rtol=1e-12)


def test_evaluate_returns_loss_accuracy_and_argmax_labels(rng: np.random.Generator) -> None:
    net = Sequential([Dense(2, 2, rng, dtype=np.float64, use_bias=False)])
    net.layers[0].params["weight"][...] = np.eye(2)  # the logits are the inputs
    x = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    labels = np.array([0, 0, 0])
    loss_value, acc, predicted = evaluate(
        net, CROSS_ENTROPY, Examples(x, CROSS_ENTROPY.encode(labels, 2, np.float64), labels)
    )
    np.testing.assert_array_equal(predicted, [0, 1, 0])
    assert acc == pytest.approx(2 / 3)
    assert loss_value == pytest.approx(CROSS_ENTROPY.value(np.eye(2)[labels], x))


class StopAt(Callback):
    """Asks the trainer to stop when ``epoch`` begins, as a Ctrl-C handler would."""

    def __init__(self, trainer: Trainer, epoch: int) -> None:
        self.trainer, self.epoch = trainer, epoch

    def on_epoch_begin(self, epoch: int) -> None:
        if epoch == self.epoch:
            self.trainer.request_stop("interrupted (test)", 130)


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam", "rmsprop"])
def test_a_stopped_fit_resumes_to_the_same_weights_bit_for_bit(optimizer_name) -> None:
    from nnexp.core.optimizers import OPTIMIZERS
    from nnexp.core.training import Stopped

    data = separable(np.random.default_rng(100))
    settings = {"name": optimizer_name, "learning_rate": 0.05}

    def fresh():
        rng = np.random.default_rng(3)
        return rng, network(rng), OPTIMIZERS.build(settings), Trainer(4, 5)

    rng, net, optimizer, trainer = fresh()
    whole = trainer.fit(net, CROSS_ENTROPY, optimizer, data, rng)

    rng_b, net_b, optimizer_b, trainer_b = fresh()
    with pytest.raises(Stopped) as stopped:
        trainer_b.fit(net_b, CROSS_ENTROPY, optimizer_b, data, rng_b, callbacks=[StopAt(trainer_b, 3)])
    state = stopped.value.state
    assert (state.epoch, state.batch, stopped.value.exit_code) == (2, 0, 130)
    assert str(stopped.value) == "interrupted (test) in epoch 3, after 0 of its batches"

    # A new process: fresh objects, restored from what a checkpoint keeps.
    rng_c, net_c, optimizer_c, trainer_c = fresh()
    net_c.load_state_dict({key: value.copy() for key, value in net_b.state_dict().items()})
    optimizer_c.load_state_dict(optimizer_b.state_dict())
    rng_c.bit_generator.state = state.rng_state
    resumed = trainer_c.fit(net_c, CROSS_ENTROPY, optimizer_c, data, rng_c, resume=state)
    assert_same_weights(net, net_c)
    assert without_timing(resumed) == without_timing(whole)


def test_a_stop_mid_epoch_resumes_with_the_same_shuffle_and_running_metrics() -> None:
    from nnexp.core.training import Stopped

    data = separable(np.random.default_rng(100))

    class StoppingSGD(SGD):
        """Asks to stop after ``after`` steps: in epoch 2 of 6 batches, after its third batch."""

        def __init__(self, trainer: Trainer | None = None, after: int = 0) -> None:
            super().__init__(learning_rate=0.2, momentum=0.5)
            self.trainer, self.after = trainer, after

        def step(self, params_and_grads) -> None:
            super().step(params_and_grads)
            if self.trainer is not None and self.iterations == self.after:
                self.trainer.request_stop("interrupted (test)", 130)

    rng = np.random.default_rng(3)
    net = network(rng)
    whole = Trainer(3, 4).fit(net, CROSS_ENTROPY, StoppingSGD(), data, rng)

    rng_b = np.random.default_rng(3)
    net_b, trainer_b = network(rng_b), Trainer(3, 4)
    optimizer_b = StoppingSGD(trainer_b, after=9)
    with pytest.raises(Stopped) as stopped:
        trainer_b.fit(net_b, CROSS_ENTROPY, optimizer_b, data, rng_b)
    state = stopped.value.state
    assert (state.epoch, state.batch) == (1, 3) and str(stopped.value).endswith("in epoch 2, after 3 of its batches")

    rng_c = np.random.default_rng(3)
    net_c, optimizer_c = network(rng_c), StoppingSGD()
    net_c.load_state_dict({key: value.copy() for key, value in net_b.state_dict().items()})
    optimizer_c.load_state_dict(optimizer_b.state_dict())
    rng_c.bit_generator.state = state.rng_state
    resumed = Trainer(3, 4).fit(net_c, CROSS_ENTROPY, optimizer_c, data, rng_c, resume=state)
    assert_same_weights(net, net_c)
    assert without_timing(resumed) == without_timing(whole)


def test_early_stopping_stops_and_restores_the_best_epoch() -> None:
    from nnexp.core.training import EarlyStopping

    rng = np.random.default_rng(0)
    net = network(rng)
    train, validation = separable(np.random.default_rng(100)), separable(np.random.default_rng(101), 12)
    trainer = Trainer(200, 4)
    snapshots: dict[int, dict[str, np.ndarray]] = {}

    class Snapshot(Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            snapshots[epoch] = {key: value.copy() for key, value in net.state_dict().items()}

    early = EarlyStopping(trainer, net, monitor="val_loss", patience=3, min_delta=1e-3)
    history = trainer.fit(net, CROSS_ENTROPY, SGD(0.5), train, rng, validation, callbacks=[Snapshot(), early])
    epochs = len(history["val_loss"])
    assert epochs < 200 and epochs == early.best_epoch + 3
    # Improvements below min_delta do not count: the best is the last epoch that improved by more.
    assert early.best == history["val_loss"][early.best_epoch - 1]
    assert all(value > early.best - 1e-3 for value in history["val_loss"][early.best_epoch :])
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, snapshots[early.best_epoch][key])


def test_early_stopping_restores_the_best_weights_when_epochs_run_out() -> None:
    from nnexp.core.training import EarlyStopping

    rng = np.random.default_rng(0)
    net = network(rng)
    trainer = Trainer(5, 4)
    early = EarlyStopping(trainer, net, monitor="train_accuracy", maximize=True, patience=100)
    history = trainer.fit(net, CROSS_ENTROPY, SGD(0.5), separable(np.random.default_rng(100)), rng, callbacks=[early])
    assert len(history["train_loss"]) == 5
    assert early.best == max(history["train_accuracy"])
    assert history["train_accuracy"].index(early.best) + 1 == early.best_epoch
    restored = EarlyStopping(Trainer(1, 1), network(np.random.default_rng(1)), patience=1)
    restored.load_state_dict(early.state_dict())
    assert (restored.best, restored.best_epoch, restored.wait) == (early.best, early.best_epoch, early.wait)
