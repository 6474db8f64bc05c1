"""Plain progress lines off a terminal: a tenth of the epochs, at least every PLAIN_SECONDS, and the last epoch."""

from __future__ import annotations

import io

import pytest

from nnexp.job import progress
from nnexp.job.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def logs(epoch: int) -> dict[str, float]:
    return {"epoch_seconds": 0.5, "train_loss": 1 / epoch, "train_accuracy": 0.5, "learning_rate": 0.1}


def epochs_shown(stream: io.StringIO) -> list[int]:
    return [int(line.split(" epoch ")[1].split("/")[0]) for line in stream.getvalue().splitlines()]


def train(bar: Progress, clock: Clock, epochs: int, stop_after: int | None = None, seconds_each: float = 0.0) -> None:
    bar.on_train_begin(epochs, 100)
    for epoch in range(1, (stop_after or epochs) + 1):
        clock.now += seconds_each
        bar.on_epoch_end(epoch, logs(epoch))
    bar.on_train_end({})


def test_a_tenth_of_the_epochs_and_the_last_one(clock):
    stream = io.StringIO()
    train(Progress("run", stream), clock, 100)
    assert epochs_shown(stream) == list(range(10, 101, 10))
    assert stream.getvalue().splitlines()[0] == "run epoch 10/100 loss=0.1000 acc=0.5000 samples/s=200"


def test_slow_epochs_print_a_line_at_least_every_ten_seconds(clock):
    stream = io.StringIO()
    train(Progress("run", stream), clock, 10_000, stop_after=40, seconds_each=3.0)
    assert epochs_shown(stream) == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]


def test_a_run_stopped_early_shows_its_last_epoch(clock):
    stream = io.StringIO()
    train(Progress("run", stream), clock, 500, stop_after=39)
    assert epochs_shown(stream) == [39]


class OpeningRun:
    """Stands in for the run being opened: open from epoch ``opens_at`` on; ``wait`` before that would block."""

    def __init__(self, opens_at: int) -> None:
        self.opens_at, self.epoch, self.waited_early = opens_at, 0, False

    @property
    def opened(self) -> bool:
        return self.epoch >= self.opens_at

    def wait(self) -> None:
        self.waited_early |= not self.opened


def test_lines_wait_for_the_run_to_open_while_training_goes_on(clock):
    stream, run = io.StringIO(), OpeningRun(opens_at=27)
    bar = Progress("run", stream, run=run)
    bar.on_train_begin(100, 100)
    for epoch in range(1, 101):
        run.epoch = epoch
        bar.on_epoch_end(epoch, logs(epoch))
    assert not run.waited_early
    assert epochs_shown(stream) == [27, 30, 40, 50, 60, 70, 80, 90, 100]


def test_the_last_line_waits_for_the_run_however_long_it_takes(clock):
    stream, run = io.StringIO(), OpeningRun(opens_at=1000)
    train(Progress("run", stream, run=run), clock, 20)
    assert run.waited_early and epochs_shown(stream) == [20]
