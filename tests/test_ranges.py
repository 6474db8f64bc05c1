"""Every float a built-in plugin takes is checked for NaN and infinity, with the shared ``require``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from nnexp.config import GROUPS
from nnexp.core.activations import ACTIVATIONS
from nnexp.core.initializers import INITIALIZERS
from nnexp.errors import ParameterError, require
from nnexp.plugins import load_builtins, load_file
from nnexp.registry import config_parameters

REPO = Path(__file__).resolve().parents[1]
load_builtins()
if "nnexp_local_plugins.circles" not in sys.modules:  # another test module of the session may have loaded it
    load_file(REPO / "plugins" / "circles.py", "nnexp_local_plugins.circles")

REGISTRIES = [registry for registry, _ in GROUPS] + [ACTIVATIONS, INITIALIZERS]
FLOAT_FIELDS = [
    (registry, name, parameter)
    for registry in REGISTRIES
    for name, cls in registry.items()
    for parameter, annotation, _ in config_parameters(cls)
    if annotation in (float, float | None)
]


def test_the_built_ins_have_the_floats_the_issue_names() -> None:
    named = {f"{registry.kind}.{name}.{parameter}" for registry, name, parameter in FLOAT_FIELDS}
    for expected in (
        "optimizer.adam.epsilon",
        "optimizer.adam.beta_1",
        "optimizer.adam.beta_2",
        "optimizer.rmsprop.rho",
        "optimizer.sgd.momentum",
        "optimizer.sgd.weight_decay",
        "optimizer.sgd.learning_rate",
        "schedule.step.gamma",
        "schedule.cosine.min_rate",
        "loss.mse.target_low",
        "loss.mse.target_high",
        "dataset.moons.noise",
    ):
        assert expected in named


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("registry", "name", "parameter"),
    FLOAT_FIELDS,
    ids=[f"{registry.kind}.{name}.{parameter}" for registry, name, parameter in FLOAT_FIELDS],
)
def test_every_float_parameter_rejects_nan_and_infinity(registry, name, parameter, value) -> None:
    with pytest.raises(ParameterError) as error:
        registry.build({"name": name, parameter: value})
    message = str(error.value)
    assert message.startswith(f"{registry.kind}.{parameter} must ") and message.endswith(f", got {value!r}")


@pytest.mark.parametrize("value", [math.inf, float("nan")])
def test_require_rejects_non_finite_numbers_that_pass_a_one_sided_bound(value) -> None:
    with pytest.raises(ParameterError, match=r"^epsilon must be > 0 and finite, got (inf|nan)$"):
        require(not value <= 0, "epsilon", "must be > 0", value)


def test_require_can_allow_infinity_where_it_means_something() -> None:
    require(math.inf > 0, "max_norm", "must be > 0", math.inf, finite=False)
    require(True, "size", "must hold sizes >= 1", [1, 2])


def test_early_stopping_rejects_an_infinite_min_delta() -> None:
    from nnexp.core.training import EarlyStopping, Trainer

    with pytest.raises(ParameterError, match=r"^min_delta must be >= 0 and finite, got inf$"):
        EarlyStopping(Trainer(1, 1), None, min_delta=math.inf)
