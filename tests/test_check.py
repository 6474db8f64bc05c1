"""``nnexp check``: the built-ins pass, and a project's own plugin with a wrong gradient fails by name."""

from __future__ import annotations

import pytest

from nnexp.commands.check import main

WRONG_AND_RIGHT = """
import numpy as np

from nnexp import ACTIVATIONS, LOSSES, OPTIMIZERS
from nnexp.core.activations import Activation
from nnexp.core.losses import MeanSquaredError
from nnexp.core.optimizers import SGD


@ACTIVATIONS.register("tanh_missing_a_square")
class WrongTanh(Activation):
    def forward(self, x):
        self._y = np.tanh(x)
        return self._y

    def backward(self, grad_out, input_grad=True):
        return grad_out * (1 - self._y)  # the derivative is 1 - tanh(x) ** 2


@ACTIVATIONS.register("softsign")
class Softsign(Activation):
    def forward(self, x):
        self._x = x
        return x / (1 + np.abs(x))

    def backward(self, grad_out, input_grad=True):
        return grad_out / (1 + np.abs(self._x)) ** 2


@LOSSES.register("halved_mse")
class HalvedGradient(MeanSquaredError):
    def gradient(self, y_true, y_pred):
        return super().gradient(y_true, y_pred) / 2

    def value_and_gradient(self, y_true, y_pred):
        return self.value(y_true, y_pred), self.gradient(y_true, y_pred)


@OPTIMIZERS.register("ascent")
class Ascent(SGD):
    def update(self, grad, step, *state):
        np.multiply(grad, -self.learning_rate, out=step)


@LOSSES.register("needs_a_scale")
class NeedsAScale(MeanSquaredError):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
"""


def test_every_built_in_passes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ./plugins
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"{len(lines) - 1} checked: {len(lines) - 1} passed, 0 failed, 0 skipped"
    checked = {" ".join(line.split()[1:3]) for line in lines[:-1]}
    assert {"activation relu", "activation softmax", "loss cross_entropy", "loss mse", "model mlp"} <= checked
    assert {"optimizer sgd", "optimizer rmsprop", "optimizer adam"} <= checked


def test_a_projects_plugins_are_checked_and_a_wrong_one_fails_by_name(project):
    (project.root / "plugins" / "mine.py").write_text(WRONG_AND_RIGHT)
    result = project.run("check", "--only", "tanh_missing_a_square,softsign,halved_mse,ascent,needs_a_scale")
    assert result.returncode == 1
    lines = {line.split(" (")[0]: line for line in result.stdout.splitlines()}
    source = "(file plugins/mine.py)"
    wrong = "activation tanh_missing_a_square"
    assert lines[f"FAIL  {wrong}"].startswith(f"FAIL  {wrong} {source}: worst relative error")
    assert lines["pass  activation softsign"].startswith(f"pass  activation softsign {source}: worst relative error")
    assert lines["FAIL  loss halved_mse"].startswith("FAIL  loss halved_mse")
    assert lines["FAIL  optimizer ascent"].startswith("FAIL  optimizer ascent")
    assert lines["skip  loss needs_a_scale"].startswith(
        f"skip  loss needs_a_scale {source}: cannot be built from its defaults"
    )
    assert result.stdout.splitlines()[-1] == "5 checked: 1 passed, 3 failed, 1 skipped"
    assert result.stderr.strip() == (
        "error: failed: activation tanh_missing_a_square, loss halved_mse, optimizer ascent"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--kinds", "layer"],
            "error: --kinds: unknown kind 'layer'; expected some of activation, loss, model, optimizer",
        ),
        (
            ["--only", "relu, nothing,relu", "--kinds", "activation"],  # spaces and repeats are forgiven, not typos
            "error: --only: no registered activation named nothing; registered: identity, relu, sigmoid, softmax, tanh",
        ),
    ],
)
def test_bad_options_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == message
