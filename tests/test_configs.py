"""Configs are tested like code: every option of every group, and every preset, composes and builds."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from nnexp.cli_errors import check_command_line, check_override_keys, describe_config_error
from nnexp.config import GROUPS, given_overrides, schema_for, setting_overrides, store_configs
from nnexp.errors import ConfigError
from nnexp.job.build import build, configure
from nnexp.plugins import load_builtins, load_file
from nnexp.presets import (
    aliased_too_much,
    check_command_line_options,
    check_interpolations,
    check_plugin_nodes,
    check_preset_aliases,
    check_preset_names,
    describe_preset_error,
)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
load_builtins()
if "nnexp_local_plugins.circles" not in sys.modules:  # another test module of the session may have loaded it
    load_file(REPO / "plugins" / "circles.py", "nnexp_local_plugins.circles")
store_configs()


def options(group: str) -> list[str]:
    registry = next(registry for registry, _ in GROUPS if registry.kind == group)
    presets = [path.stem for path in (CONF / group).glob("*.yaml")]
    return sorted({*registry.names(), *presets})


#: Dataset options that read files, and the overrides pointing them at the tiny ones ``mnist_files`` writes.
DATA_FILES: dict[str, Callable[..., list[str]]] = {
    "mnist_idx": lambda files: [f"dataset.path={files.write_idx()}", "dataset.val_size=10"],
    "mnist_csv": lambda files: [
        *(
            f"dataset.{key}={path}"
            for key, path in zip(("train_path", "test_path"), files.write_csv_pair(), strict=True)
        ),
        "dataset.val_size=10",
    ],
}


@pytest.fixture
def composed() -> Iterator[Callable[..., DictConfig]]:
    def make(*overrides: str) -> DictConfig:
        return compose("nnexp", overrides=list(overrides))

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield make


@pytest.mark.parametrize(
    ("group", "option"),
    [(registry.kind, option) for registry, _ in GROUPS for option in options(registry.kind)],
)
def test_every_group_option_composes_and_builds(composed, mnist_files, group, option):
    data = DATA_FILES[option](mnist_files) if group == "dataset" and option in DATA_FILES else []
    cfg = composed(f"{group}={option}", "trainer.epochs=1", *data)
    experiment = build(cfg, np.random.default_rng(0))
    assert experiment.network.n_parameters > 0
    assert experiment.data["train"].x.dtype == np.float32


@pytest.mark.parametrize("preset", sorted(path.stem for path in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes_builds_and_states_its_target(composed, mnist_files, preset):
    dataset = composed(f"experiment={preset}").dataset.name
    data = DATA_FILES[dataset](mnist_files) if dataset in DATA_FILES else []
    cfg = composed(f"experiment={preset}", *data)
    build(cfg, np.random.default_rng(0))
    assert 0 < cfg.tags.target_accuracy <= 1
    assert cfg.tags.get("target_metric", "test_accuracy") in ("test_accuracy", "val_accuracy")


def test_command_line_beats_the_experiment(composed):
    cfg = composed("experiment=moons_deep_sigmoid", "trainer.epochs=5", "model=two_layer")
    assert cfg.trainer.epochs == 5 and cfg.model.hidden_sizes == [50]


def test_presets_keep_the_plugin_schema(composed):
    with pytest.raises(ConfigCompositionException):
        composed("model=deep_sigmoid", "model.hidden_sizes=abc")
    with pytest.raises(ConfigCompositionException):
        composed("model=deep_sigmoid", "model.foo=1")


@pytest.mark.parametrize("group", [registry.kind for registry, _ in GROUPS])
def test_no_preset_shadows_a_plugin_name(group):
    registry = next(registry for registry, _ in GROUPS if registry.kind == group)
    presets = {path.stem for path in (CONF / group).glob("*.yaml")}
    assert not presets & set(registry.names()), "a YAML preset must not reuse a registered plugin's name"


def test_schema_mirrors_the_constructor_signature():
    from nnexp.core.optimizers import SGD

    schema = schema_for(SGD, "sgd")()
    assert (schema.name, schema.learning_rate, schema.momentum, schema.nesterov) == ("sgd", 0.01, 0.0, False)


def test_conf_holds_only_yaml():
    assert all(path.suffix == ".yaml" for path in Path(CONF).rglob("*") if path.is_file())


def tutorial_pass(weight: np.ndarray, x: np.ndarray, labels: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """The tanh/softmax tutorial's own training code, restated: one pass in file order at its learning rate 1."""
    weight, input_bias, bias = weight.copy(), np.zeros(x.shape[1]), np.zeros(weight.shape[1])
    for start in range(0, len(x), batch_size):
        inputs, targets = x[start : start + batch_size], np.eye(10)[labels[start : start + batch_size]]
        hidden = np.tanh(inputs + input_bias)
        logits = hidden @ weight + bias
        out = np.exp(logits - logits.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
        grad_out = 2 * (out - targets) / len(inputs)  # the plain sum of squared differences, averaged over the batch
        grad_logits = out * (grad_out - (grad_out * out).sum(axis=1, keepdims=True))
        grad_hidden = grad_logits @ weight.T
        weight -= hidden.T @ grad_logits
        bias -= grad_logits.sum(axis=0)
        input_bias -= (grad_hidden * (1 - hidden**2)).sum(axis=0)
    return {"bias0.bias": input_bias, "dense0.weight": weight, "dense0.bias": bias}


def test_the_tanh_tutorial_preset_trains_as_the_tutorials_code_does(composed, mnist_files, tiny):
    cfg = composed(
        "experiment=mnist_tanh_softmax_tutorial",
        f"dataset.path={mnist_files.write_idx()}",
        "dataset.val_size=10",
        "trainer.batch_size=10",  # three batches of the 30 tiny training images, so their order matters
    )
    experiment = build(cfg, np.random.default_rng(0))
    raw = tiny.train_images.reshape(len(tiny.train_images), -1).astype(np.float64)
    train = experiment.data["train"]
    np.testing.assert_array_equal(train.x, raw[:-10])  # unscaled, in file order
    np.testing.assert_array_equal(experiment.data["val"].x, raw[-10:])  # the last images validate
    initial = {key: param.copy() for key, param, _ in experiment.network.parameters()}
    assert not initial["bias0.bias"].any() and not initial["dense0.bias"].any()
    assert np.abs(initial["dense0.weight"]).max() <= np.sqrt(6 / (784 + 10))
    assert experiment.trainer.epochs == 1 and not experiment.trainer.shuffle
    experiment.trainer.fit(experiment.network, experiment.loss, experiment.optimizer, train, np.random.default_rng(1))
    expected = tutorial_pass(initial["dense0.weight"], raw[:-10], tiny.train_labels[:-10], batch_size=10)
    for key, param, _ in experiment.network.parameters():
        np.testing.assert_allclose(param, expected[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_a_negative_checkpoint_interval_is_refused(composed):
    from nnexp.errors import ParameterError
    from nnexp.job.build import configure

    with pytest.raises(ParameterError, match=r"checkpoint\.every must be >= 0, got -1"):
        configure(composed("checkpoint.every=-1"))


@pytest.fixture
def user_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project's own ``conf/`` (the shipped presets), the working directory its parent, Hydra initialised on it."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        yield conf


DEEP = "# @package _global_\ntags:\n  a: " + "[" * 5000 + "]" * 5000 + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "# @package _global_\nmodel: {hidden_sizes: [4], bogus_key: 3}\n",
            "model.bogus_key is not a known key; valid keys here: hidden_sizes, activation, ",
        ),
        (
            "# @package _global_\nmodel: {hidden_sizes: abc}\n",
            "model.hidden_sizes expects a list of integers, like [64, 32], got 'abc'",
        ),
        ("model:\n  sizes: [1,\n", "not valid YAML: expected the node content, but found '<stream end>' (line 3)"),
        ("a: 1\n  b: 2\n", "not valid YAML: mapping values are not allowed here (line 2)"),
        ("# @package _global_\nseed: 1\nseed: 2\n", "not valid YAML: found duplicate key seed (line 3)"),
        ("# @package _global_\nseed: abc\n", "seed expects an integer, got 'abc'"),
        ("", "expected the header line '# @package _global_' that every experiment preset starts with"),
        ("trainer: {epochs: 3}\n", "expected the header line '# @package _global_' that every experiment preset"),
        (DEEP, "nested 5002 levels deep; Hydra composes presets nested fewer than 100"),
    ],
    ids=["unknown-key", "wrong-type", "not-yaml", "indent", "duplicate", "bad-seed", "empty", "no-header", "deep"],
)
def test_a_broken_experiment_preset_is_one_line_naming_its_file(user_conf, text, expected):
    (user_conf / "experiment" / "mine.yaml").write_text(text)
    with pytest.raises(Exception) as caught:  # Hydra's, OmegaConf's or YAML's error, or a RecursionError
        compose("nnexp", overrides=["experiment=mine"])
    assert describe_preset_error(caught.value, user_conf).startswith(f"conf/experiment/mine.yaml: {expected}")


def test_a_model_preset_over_its_plugin_is_named_with_an_unknown_key(user_conf):
    (user_conf / "model" / "mine.yaml").write_text("defaults: [mlp, _self_]\nhidden_sizez: [8]\n")
    with pytest.raises(ConfigCompositionException) as caught:
        compose("nnexp", overrides=["model=mine"])
    assert describe_preset_error(caught.value, user_conf).startswith(
        "conf/model/mine.yaml: model.hidden_sizez is not a known key; valid keys here: hidden_sizes, "
    )


def test_a_preset_that_is_not_utf8_text_is_named(user_conf):
    (user_conf / "experiment" / "mine.yaml").write_bytes(b"# @package _global_\nseed: \xff\n")
    with pytest.raises(UnicodeDecodeError) as caught:
        compose("nnexp", overrides=["experiment=mine"])
    assert describe_preset_error(caught.value, user_conf) == (
        "conf/experiment/mine.yaml: not valid YAML: not UTF-8 text (invalid start byte at byte 26)"
    )


def test_a_deep_preset_is_named_only_when_it_is_the_one_too_deep(user_conf):
    (user_conf / "experiment" / "mine.yaml").write_text("# @package _global_\ntags:\n  a: [[[[1]]]]\n")
    assert describe_preset_error(RecursionError(), user_conf) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: mlp\nhidden_sizez: [8]\n", "model.hidden_sizez is not a known key; valid keys here: hidden_sizes, "),
        ("name: mlp\nhidden_sizes: abc\n", "model.hidden_sizes expects a list of integers, like [64, 32], got 'abc'"),
        ("hidden_sizes: [8]\n", "model.name must name a registered model (mlp), got None"),
    ],
)
def test_a_preset_without_its_plugin_defaults_is_checked_against_the_plugin(user_conf, text, expected):
    preset = user_conf / "model" / "mine.yaml"
    preset.write_text(text)
    cfg = compose("nnexp", overrides=["model=mine"])
    with pytest.raises(ConfigError) as caught:
        check_plugin_nodes(cfg, {"model": preset})
    assert str(caught.value).startswith(f"conf/model/mine.yaml: {expected}")
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}"):
        configure(cfg)  # outside a Hydra job no preset file is known, but the key is still named


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "experiment/mine.yaml",
            "# @package _global_\ndataset:\n  name: quadrants\n",
            "dataset.name: quadrants cannot choose the dataset; choose it in defaults: with "
            "'- override /dataset: quadrants'",
        ),
        (
            "dataset/mine.yaml",
            "defaults: [moons, _self_]\nname: quadrants\n",
            "name: quadrants cannot choose the dataset; start it with 'defaults: [quadrants, _self_]'",
        ),
    ],
)
def test_a_preset_that_names_another_plugin_in_its_body_is_named(user_conf, name, text, expected):
    """It built one plugin from another's settings: a TypeError traceback, or a record naming the wrong plugin."""
    preset = user_conf / name
    preset.parent.mkdir(exist_ok=True)
    preset.write_text(text)
    group = name.split("/")[0]
    cfg = compose("nnexp", overrides=[f"{group}=mine"])
    with pytest.raises(ConfigError) as caught:
        check_plugin_nodes(cfg, {group: preset})
    assert str(caught.value) == f"conf/{name}: {expected}"


def test_an_experiment_that_chooses_a_group_by_value_is_named(user_conf):
    (user_conf / "experiment" / "mine.yaml").write_text("# @package _global_\noptimizer: sgd\n")
    with pytest.raises(ConfigCompositionException) as caught:
        compose("nnexp", overrides=["experiment=mine"])
    assert describe_preset_error(caught.value, user_conf) == (
        "conf/experiment/mine.yaml: optimizer: sgd chooses the optimizer where its settings go; "
        "choose it in defaults: with '- override /optimizer: sgd'"
    )


def test_a_preset_without_its_plugin_defaults_still_builds(user_conf):
    (user_conf / "model" / "mine.yaml").write_text("name: mlp\nhidden_sizes: [8]\n")
    assert configure(compose("nnexp", overrides=["model=mine"])).model.hidden_sizes == [8]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+tags.x=null", "tags.x must be a string, number or bool, got None"),
        ("+tags={a:{b:1}}", "tags.a must be a string, number or bool, got {'b': 1}"),
        ("+tags.x=[1,2]", "tags.x must be a string, number or bool, got [1, 2]"),
        (  # the rate would reach 2e-6 of the configured one, and the run FINISH as if it had trained
            "schedule=cosine schedule.warmup_epochs=1000 trainer.epochs=2",
            "schedule.warmup_epochs must be < trainer.epochs, got warmup_epochs=1000 with epochs=2;",
        ),
        ("schedule=cosine schedule.warmup_epochs=2 trainer.epochs=2", "schedule.warmup_epochs must be < trainer"),
        (  # the cosine "decay" would climb from the rate to 1000 times it
            "schedule=cosine schedule.min_rate=1",
            "schedule.min_rate must be < optimizer.learning_rate (0.001), got 1.0",
        ),
        (  # MLflow kept the first 6000 characters of the param and the run FINISHED
            "model.hidden_sizes=[" + ",".join(["1"] * 2100) + "]",
            "model.hidden_sizes: an MLflow param holds at most 6000 characters, this value has 6300;",
        ),
        (  # epsilon was 0 in float32: the run FAILED with "loss became NaN ... try a smaller learning_rate"
            "optimizer=adam optimizer.epsilon=1e-50",
            "optimizer.epsilon=1e-50 is 0 in trainer.dtype=float32, whose smallest positive number is 1.4e-45;",
        ),
        (  # the rate was 0 in float32 and the run FINISHED untrained, though learning_rate=0 is refused
            "optimizer.learning_rate=1e-320",
            "optimizer.learning_rate=1e-320 is 0 in trainer.dtype=float32,",
        ),
        (  # the weight decay would be off while the record says it was on
            "optimizer=sgd optimizer.weight_decay=1e-46",
            "optimizer.weight_decay=1e-46 is 0 in trainer.dtype=float32,",
        ),
        (  # printed raw: the escape recoloured the terminal in progress lines, nnexp runs and nnexp compare
            "tracking.run_name='a\x1b[31mred'",
            "tracking.run_name must be text without control characters (such as an escape), got 'a\\x1b[31mred'",
        ),
        ("+tags.note='x\by'", "tags.note must be text without control characters (such as an escape), got 'x\\x08y'"),
        ("tracking.experiment='e\x7f'", "tracking.experiment must be text without control characters"),
        (  # SQLite kept it; a PostgreSQL or MySQL store refuses a name longer than its column
            "tracking.run_name=" + "r" * 251,
            "tracking.run_name: an MLflow run name holds at most 250 characters, found 251",
        ),
        ("tracking.experiment=" + "e" * 257, "tracking.experiment: an MLflow experiment name holds at most 256"),
        (  # RuntimeWarnings "overflow encountered in cast", then "loss became infinite"
            "loss=mse loss.target_low=-1e308 loss.target_high=1e308",
            "loss.target_low=-1e+308 is infinite in trainer.dtype=float32, whose largest number is 3.4e+38;",
        ),
    ],
)
def test_a_value_the_record_would_get_wrong_is_refused(composed, override, expected):
    with pytest.raises(ConfigError) as caught:
        configure(composed(*override.split()))
    assert str(caught.value).startswith(expected)


def test_scalar_tags_and_a_warm_up_shorter_than_training_are_accepted(composed):
    configure(composed("+tags.a=1", "+tags.b=true", "+tags.c=x", "schedule=cosine", "schedule.warmup_epochs=1"))


def test_numbers_that_float64_holds_are_accepted_in_a_float64_run(composed):
    configure(composed("trainer.dtype=float64", "optimizer.epsilon=1e-50", "optimizer.learning_rate=1e-320"))
    configure(composed("trainer.dtype=float64", "loss=mse", "loss.target_low=-1e308", "loss.target_high=1e308"))
    configure(composed("optimizer.epsilon=1e-40"))  # a float32 subnormal: small, but not 0


def test_the_param_limit_is_mlflows():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from nnexp.tracking.tracked_run import MAX_PARAM_LENGTH

    assert MAX_PARAM_LENGTH == MAX_PARAM_VAL_LENGTH


def test_the_name_limits_are_those_of_mlflows_database_stores():
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun

    from nnexp.config import MAX_EXPERIMENT_NAME, MAX_RUN_NAME

    assert (SqlRun.name.type.length, SqlExperiment.name.type.length) == (MAX_RUN_NAME, MAX_EXPERIMENT_NAME)


def test_tags_and_tracking_overrides_never_name_a_run():
    overrides = ["+tags={a:{b:1}}", "+tags.x=1", "tracking={uri:x}", "tracking.run_name=n", "seed=3", "+model.x=1"]
    assert setting_overrides(overrides) == [("seed", "3"), ("model.x", "1")]


@pytest.mark.parametrize(
    ("preset", "text"),
    [("model/mlp.yaml", "name: mlp\nhidden_sizes: [3]\n"), ("dataset/quadrants.yaml", "name: moons\nn_samples: 50\n")],
)
def test_a_preset_named_like_a_plugin_is_refused_naming_the_file(tmp_path, monkeypatch, preset, text):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "conf" / preset
    path.parent.mkdir(parents=True)
    path.write_text(text)
    group, plugin = preset.removesuffix(".yaml").split("/")
    with pytest.raises(ConfigError) as caught:
        check_preset_names(tmp_path / "conf")
    assert str(caught.value) == (
        f"conf/{preset}: a preset may not reuse the name of the {group} plugin '{plugin}'; "
        f"rename it (e.g. my_{plugin}.yaml) and start it with 'defaults: [{plugin}, _self_]'"
    )


def test_the_shipped_presets_reuse_no_plugin_name():
    check_preset_names(CONF)
    check_preset_aliases(CONF)


def test_a_preset_whose_aliases_copy_too_many_values_is_refused_naming_its_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "conf" / "experiment" / "laughs.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("# @package _global_\na: &a [x, x, x]\nb: &b [*a, *a, *a]\ntags: {c: [*b, *b, *b]}\n")
    # a's 4 values (3 and its list) copied 3 times, then b's 13 values copied 3 times
    assert aliased_too_much(path, limit=51) is None
    assert aliased_too_much(path, limit=50) == "line 4: its YAML aliases (here *b) copy more than 50 values"
    assert aliased_too_much(path.read_text(), limit=50) == aliased_too_much(path, limit=50)
    assert aliased_too_much(path, limit=11).startswith("line 3: its YAML aliases (here *a) copy more than 11 values")
    check_preset_aliases(tmp_path / "conf")
    with pytest.raises(ConfigError, match=r"^conf/experiment/laughs\.yaml: line 4: its YAML aliases \(here \*b\)"):
        check_preset_aliases(tmp_path / "conf", limit=50)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"experiment/x.yaml": "# @package _global_\ndefaults:\n  - /experiment/x\n"},
            "conf/experiment/x.yaml: its defaults list leads back to itself (experiment/x -> experiment/x)",
        ),
        ({"dataset/x.yaml": "defaults: [x, _self_]\n"}, "conf/dataset/x.yaml: its defaults list leads back to itself"),
        (
            {
                "experiment/a.yaml": "# @package _global_\ndefaults:\n  - /experiment/b\n",
                "experiment/b.yaml": "# @package _global_\ndefaults:\n  - /experiment/a\n",
            },
            "conf/experiment/a.yaml: its defaults list leads back to itself "
            "(experiment/a -> experiment/b -> experiment/a)",
        ),
    ],
    ids=["experiment-self", "dataset-self", "two-presets"],
)
def test_a_preset_whose_defaults_lead_back_to_itself_is_named(user_conf, files, expected):
    for name, text in files.items():
        (user_conf / name).parent.mkdir(exist_ok=True)
        (user_conf / name).write_text(text)
    group, option = next(iter(files)).removesuffix(".yaml").split("/")
    with pytest.raises(RecursionError) as caught:
        compose("nnexp", overrides=[f"{group}={option}"])
    assert describe_preset_error(caught.value, user_conf).startswith(expected)


def test_a_preset_naming_a_missing_default_names_the_preset_and_the_entry(user_conf):
    (user_conf / "model" / "mine.yaml").write_text("defaults:\n  - nonexistent\n  - _self_\n")
    with pytest.raises(Exception) as caught:
        compose("nnexp", overrides=["model=mine"])
    message = describe_config_error(caught.value)
    assert message.startswith("conf/model/mine.yaml: its defaults name model/nonexistent, which does not exist; ")
    assert "mlp" in message.split("model options: ")[1]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("tags=[1,2]", "tags is a mapping of tag names to values, not a list or a value; add a tag with +tags.NAME="),
        ("tags=5", "tags is a mapping of tag names to values"),
        ("~tags.nope", "~tags.nope: the config has no tags.nope to remove; check its spelling"),
        # tracebacks of Hydra's ConfigCompositionException before
        ("+trainer.epochs=3", "+trainer.epochs: the config has trainer.epochs already; write trainer.epochs="),
        ("+dataset=moons", "dataset is chosen more than once (+dataset=... adds a choice); choose it once"),
    ],
)
def test_tags_that_are_no_mapping_and_removing_a_missing_key_are_one_line(user_conf, override, expected):
    with pytest.raises(Exception) as caught:
        compose("nnexp", overrides=[override])
    assert describe_config_error(caught.value).startswith(expected)


def test_hydra_logging_settings_python_refuses_name_the_setting():
    """As ``logging.config.dictConfig`` raises them; configuring this process's logging would undo pytest's."""
    for part, cause, expected in [
        ("root logger", "Unknown level: 'BOGUS'", "hydra.hydra_logging.root: Unknown level: 'BOGUS'"),
        ("handler 'file'", "Cannot resolve 'x.Y'", "hydra.hydra_logging.handlers.file: Cannot resolve 'x.Y'"),
    ]:
        try:
            raise ValueError(f"Unable to configure {part}") from ValueError(cause)
        except ValueError as exc:
            assert describe_config_error(exc) == expected


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.name=sgd", "optimizer.name=sgd: choose the optimizer with optimizer=sgd;"),
        ("loss.name=mse", "loss.name=mse: choose the loss with loss=mse;"),
        ("model=null", "model=null: choose the model with model=NAME;"),
        ("dataset=", "dataset=: choose the dataset with dataset=NAME;"),
        ("optimizer=[adam,sgd]", "optimizer=[adam,sgd]: optimizer takes one choice; for a sweep use -m optimizer=adam"),
        ("experiment=[a, b]", "experiment=[a, b]: experiment takes one choice; for a sweep use -m experiment=a,b"),
    ],
)
def test_a_group_is_chosen_by_its_own_name_only(override, expected):
    """``optimizer.name=sgd`` built SGD from Adam's settings (a traceback, empty run folders); ``loss.name=mse``
    trained with MSE while the run's ``loss`` tag said cross_entropy; ``model=null`` was a traceback."""
    with pytest.raises(ConfigError) as caught:
        check_override_keys(["dataset=quadrants", override])
    assert str(caught.value).startswith(expected)
    check_override_keys(["loss=mse", "optimizer=sgd", "model.hidden_sizes=[3]", "+tags.name=x"])


@pytest.mark.parametrize(
    ("log_config", "verbose", "arguments", "expected"),
    [
        (
            {"version": 2, "root": {}},
            False,
            ["hydra.hydra_logging.version=2", "seed=1"],
            "hydra.hydra_logging.version=2: Unsupported version: 2",
        ),
        (
            {"root": {}},
            False,
            ["~hydra.hydra_logging.version"],
            "~hydra.hydra_logging.version: dictionary doesn't specify a version",
        ),
        ({"version": 1, "root": {}}, 3, ["hydra.verbose=3"], "hydra.verbose=3: expects true, false, a logger name or"),
        ({"version": 2, "root": {}}, False, [], "hydra.hydra_logging: Unsupported version: 2"),
    ],
    ids=["version", "no-version", "verbose", "from-a-preset"],
)
def test_a_logging_setting_hydra_cannot_use_names_the_override(log_config, verbose, arguments, expected):
    """Each was a traceback; Hydra checks these before it touches this process's logging."""
    from hydra.core.utils import configure_log
    from omegaconf import OmegaConf

    from nnexp.cli_errors import describe_logging_error

    with pytest.raises(Exception) as caught:
        configure_log(OmegaConf.create(log_config), verbose)
    assert describe_logging_error(caught.value, arguments).startswith(expected)


def test_an_error_outside_hydra_s_logging_setup_keeps_its_traceback():
    from nnexp.cli_errors import describe_logging_error

    assert describe_logging_error(ValueError("Unsupported version: 2"), ["hydra.job_logging.version=2"]) is None


@pytest.mark.parametrize(
    ("preset", "text", "override", "expected"),
    [
        (
            "optimizer/fast.yaml",
            "defaults: [adam, _self_]\nname: sgd\nlearning_rate: 0.01\n",
            "optimizer=fast",
            "name: sgd cannot choose the optimizer; start it with 'defaults: [sgd, _self_]'",
        ),
        (
            "experiment/mine.yaml",
            "# @package _global_\noptimizer: {name: sgd}\n",
            "experiment=mine",
            "optimizer.name: sgd cannot choose the optimizer; choose it in defaults: with '- override /optimizer: sgd'",
        ),
    ],
)
def test_a_preset_may_not_rename_the_plugin_it_extends(user_conf, preset, text, override, expected):
    """SGD was built from Adam's settings: ``TypeError: SGD.__init__() got an unexpected keyword argument 'beta_1'``."""
    (user_conf / preset).write_text(text)
    group = preset.partition("/")[0]
    with pytest.raises(ConfigError) as caught:
        check_plugin_nodes(compose("nnexp", overrides=[override]), {group: user_conf / preset})
    assert str(caught.value) == f"conf/{preset}: {expected}"
    (user_conf / "optimizer" / "fine.yaml").write_text("defaults: [momentum, _self_]\nlearning_rate: 0.01\n")
    check_plugin_nodes(compose("nnexp", overrides=["optimizer=fine"]), {})


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        (  # resume looked for a checkpoint named by the preset's value, naming neither, and left .hydra/ behind
            "# @package _global_\nresume: abc123\n",
            ["experiment=mine"],
            "conf/experiment/mine.yaml: resume is an option of the command line only, as in python -m nnexp "
            "resume=<run id>; remove it from the preset",
        ),
        (  # the run was recorded in /tmp/x.db while the last line pointed to the project's store
            None,
            ["+hydra.job.env_set.MLFLOW_TRACKING_URI=sqlite:////tmp/x.db"],
            "hydra.job.env_set.MLFLOW_TRACKING_URI: MLflow's settings are nnexp's to make, not the job's (nnexp "
            "checks and names the store before the job starts); to record runs elsewhere write "
            "tracking.uri=sqlite:////tmp/x.db",
        ),
        (
            "# @package _global_\nhydra:\n  job:\n    env_set:\n      MLFLOW_EXPERIMENT_NAME: other\n",
            ["experiment=mine"],
            "conf/experiment/mine.yaml: hydra.job.env_set.MLFLOW_EXPERIMENT_NAME: MLflow's settings are nnexp's to "
            "make, not the job's (nnexp checks and names the store before the job starts); set "
            "MLFLOW_EXPERIMENT_NAME in the environment that starts python -m nnexp",
        ),
    ],
    ids=["resume-in-a-preset", "env-set-tracking-uri", "env-set-in-a-preset"],
)
def test_what_only_the_command_line_may_set_is_refused_before_the_run(user_conf, preset, overrides, expected):
    if preset is not None:
        (user_conf / "experiment" / "mine.yaml").write_text(preset)
    with pytest.raises(ConfigError) as caught:
        check_command_line_options(compose("nnexp", overrides=overrides, return_hydra_config=True))
    assert str(caught.value) == expected
    check_command_line_options(compose("nnexp", overrides=["resume=/x", "seed=1"], return_hydra_config=True))


@pytest.fixture
def own_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project's own ``conf/`` (the shipped presets), the working directory its parent; Hydra not initialised."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NNEXP_ADV_SEED", raising=False)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # set while resolving
    GlobalHydra.instance().clear()
    return conf


def test_an_interpolation_a_preset_sets_is_named_with_its_preset(own_conf):
    """``seed: ${oc.env:...}`` in a preset was ``error: seed: KeyError ...``, naming no file."""
    (own_conf / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: ${oc.env:NNEXP_ADV_SEED}\n")
    with pytest.raises(ConfigError) as caught:
        check_interpolations(own_conf, ["experiment=mine"], "job")
    assert str(caught.value) == (
        "conf/experiment/mine.yaml: seed: KeyError raised while resolving interpolation: "
        "\"Environment variable 'NNEXP_ADV_SEED' not found\""
    )
    check_interpolations(own_conf, ["experiment=mine", "seed=2"], "all")  # the command line's value wins


@pytest.mark.parametrize("shown", ["job", "hydra", "all"])
def test_an_interpolation_that_cannot_be_resolved_is_named_by_its_key_for_cfg_resolve(own_conf, shown):
    """``--cfg job --resolve 'seed=${oc.env:NOPE}'`` was a 148-line traceback: Hydra's resolution loses the key."""
    with pytest.raises(InterpolationResolutionError) as caught:
        check_interpolations(own_conf, ["seed=${oc.env:NNEXP_ADV_SEED}"], shown)
    assert describe_config_error(caught.value) == (
        "seed: KeyError raised while resolving interpolation: \"Environment variable 'NNEXP_ADV_SEED' not found\""
    )


def test_an_override_replaced_by_a_later_one_is_named_when_hydras_settings_are_resolved(own_conf):
    given_twice = ["trainer.epochs=${foo:bar}", "trainer.epochs=1"]
    check_interpolations(own_conf, given_twice, "job")  # the later value is the config's
    with pytest.raises(ConfigError) as caught:
        check_interpolations(own_conf, given_twice, "hydra")
    assert str(caught.value) == (
        "trainer.epochs=${foo:bar}: Unsupported interpolation type foo (--cfg hydra --resolve resolves Hydra's list "
        "of the overrides too, each a string; show it without --resolve)"
    )


def test_overrides_are_read_as_the_user_typed_them():
    """Hydra's list of overrides is a ListConfig: read item by item, ``${...}`` in an override was resolved, and
    ``'seed=${oc.env:NOPE}' seed=1`` failed with a traceback after its MLflow run was opened."""
    typed = ["seed=${oc.env:NNEXP_NOPE}", "trainer.epochs=${foo:bar}", "seed=1"]
    assert given_overrides(OmegaConf.create({"task": typed}).task) == typed


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["-cd", ""], "--config-dir '': expected a folder of YAML configs, got an empty value"),
        (["-cd", "no/such"], "--config-dir no/such: expected a folder of YAML configs; there is no such folder"),
        (["--config-dir=afile"], "--config-dir afile: expected a folder of YAML configs, found a file"),
        (["-cp", ""], "--config-path '': expected a folder of YAML configs, got an empty value"),
        (["-cp", "/no/such"], "--config-path /no/such: expected a folder of YAML configs; there is no such folder"),
        (
            ["-cp", "conf"],
            "--config-path conf: expected a folder of YAML configs; there is no such folder (a relative "
            f"--config-path is read from {REPO / 'src' / 'nnexp'})",
        ),
    ],
)
def test_a_config_folder_flag_naming_no_folder_is_one_line_naming_the_flag(tmp_path, monkeypatch, arguments, expected):
    """Hydra ran on the stored configs alone for an empty value, and said "Primary config directory not found."
    without naming it for a --config-path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").touch()
    with pytest.raises(ConfigError) as refused:
        check_command_line(["dataset=quadrants", *arguments])
    assert str(refused.value) == expected


def test_a_config_folder_nnexp_cannot_read_is_refused(tmp_path, monkeypatch):
    """Hydra reads a folder it may not list as an empty one, and the run went on without the user's presets."""
    import os

    monkeypatch.chdir(tmp_path)
    (tmp_path / "locked").mkdir()
    check_command_line(["--config-dir", "locked", "--config-path", str(tmp_path / "locked")])
    check_command_line(["--config-path", "pkg://nnexp.no_such_module"])  # Hydra names a module it cannot find
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "locked")  # root reads any folder
    with pytest.raises(ConfigError) as refused:
        check_command_line(["--config-dir", "locked"])
    assert str(refused.value) == (
        "--config-dir locked: expected a folder of YAML configs; nnexp cannot read it: permission denied"
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("early_stopping.min_delta=-1", "early_stopping.min_delta must be >= 0, got -1.0"),
        ("early_stopping.min_delta=inf", "early_stopping.min_delta must be >= 0 and finite, got inf"),
        ("early_stopping.min_delta=nan", "early_stopping.min_delta must be >= 0, got nan"),
        (
            "early_stopping.monitor=bogus",
            "early_stopping.monitor must be one of train_loss, train_accuracy, val_loss, val_accuracy, got 'bogus'",
        ),
    ],
)
def test_early_stopping_values_are_checked_while_it_is_off(composed, override, expected):
    """With patience null the run FINISHED and its config.yaml recorded ``min_delta: .nan``; with patience set the
    same value was refused."""
    with pytest.raises(ConfigError) as caught:
        configure(composed(override, "trainer.epochs=2"))
    assert str(caught.value) == expected
    configure(composed("early_stopping.monitor=train_accuracy", "early_stopping.min_delta=0.5"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.hidden_sizes=[[1,2]]", "[[1, 2]]"),
        ("model.hidden_sizes=[4,{a:1}]", "[4, {'a': 1}]"),
    ],
)
def test_a_list_or_mapping_inside_a_typed_list_is_refused(composed, override, expected):
    """OmegaConf's merge, unlike its assignment, keeps ``[[1, 2]]`` in a ``list[int]``: a 60-line traceback ending
    ``TypeError: '>=' not supported between instances of 'ListConfig' and 'int'``."""
    with pytest.raises(ConfigError) as caught:
        configure(composed(override))
    assert str(caught.value) == f"model.hidden_sizes expects a list of integers, like [64, 32], got {expected}"


@pytest.fixture
def in_job(user_conf: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., DictConfig]:
    """Compose as Hydra does for a job: its own node set aside as the running job's, where configure() looks."""
    from omegaconf import open_dict

    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)

    def make(*overrides: str) -> DictConfig:
        cfg = compose("nnexp", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    return make


@pytest.mark.parametrize(
    ("preset", "text", "overrides", "expected"),
    [
        (
            "optimizer/myadam.yaml",
            "defaults: [adam, _self_]\nepsilon: -1\n",
            ["optimizer=myadam"],
            "conf/optimizer/myadam.yaml: optimizer.epsilon must be > 0, got -1.0",
        ),
        (
            "experiment/mine.yaml",
            "# @package _global_\noptimizer:\n  learning_rate: .nan\n",
            ["experiment=mine"],
            "conf/experiment/mine.yaml: optimizer.learning_rate must be > 0, got nan",
        ),
        (
            "experiment/mine.yaml",
            "# @package _global_\nearly_stopping:\n  min_delta: -1\n",
            ["experiment=mine"],
            "conf/experiment/mine.yaml: early_stopping.min_delta must be >= 0, got -1.0",
        ),
        (
            "model/nested.yaml",
            "defaults: [mlp, _self_]\nhidden_sizes: [[4, 4]]\n",
            ["model=nested"],
            "conf/model/nested.yaml: model.hidden_sizes expects a list of integers, like [64, 32], got [[4, 4]]",
        ),
        (
            "model/untyped.yaml",
            "name: mlp\nhidden_sizes: [[4]]\n",
            ["model=untyped"],
            "conf/model/untyped.yaml: model.hidden_sizes expects a list of integers, like [64, 32], got [[4]]",
        ),
        (  # the command line's value beats the preset's, and is the one named
            "optimizer/myadam.yaml",
            "defaults: [adam, _self_]\nepsilon: -1\n",
            ["optimizer=myadam", "optimizer.epsilon=-2"],
            "optimizer.epsilon must be > 0, got -2.0",
        ),
    ],
    ids=["group-preset", "experiment", "early-stopping", "nested-list", "untyped-preset", "command-line"],
)
def test_a_value_out_of_range_names_the_preset_that_set_it(user_conf, in_job, preset, text, overrides, expected):
    """A type error from a preset named its file; a range error named only the key."""
    (user_conf / preset).write_text(text)
    with pytest.raises(ConfigError) as caught:
        configure(in_job(*overrides))
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    ("preset", "text"),
    [
        ("model/dicths.yaml", "defaults: [mlp, _self_]\nhidden_sizes: {a: 1}\n"),
        ("experiment/dicths.yaml", "# @package _global_\nmodel:\n  hidden_sizes: {a: 1}\n"),
    ],
)
def test_a_mapping_for_a_list_in_a_preset_is_named_with_the_key_and_the_expected_form(user_conf, preset, text):
    """It was ``conf/model/dicths.yaml: Cannot merge DictConfig with ListConfig``: neither the key nor the form."""
    (user_conf / preset).write_text(text)
    group, name = preset.removesuffix(".yaml").split("/")
    with pytest.raises(ConfigCompositionException) as caught:
        compose("nnexp", overrides=[f"{group}={name}"])
    assert describe_preset_error(caught.value, user_conf) == (
        f"conf/{preset}: model.hidden_sizes expects a list of integers, like [64, 32], got {{'a': 1}}"
    )


def test_a_mapping_for_a_list_on_the_command_line_is_named_with_the_expected_form(composed):
    """It was ``model.hidden_sizes: Cannot merge DictConfig with ListConfig``."""
    with pytest.raises(ConfigCompositionException) as caught:
        composed("model.hidden_sizes={a:1}")
    assert describe_config_error(caught.value) == (
        "model.hidden_sizes expects a list of integers, like [64, 32], got {a:1}"
    )
