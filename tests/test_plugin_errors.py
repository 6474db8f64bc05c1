"""An exception escaping a user's plugin is one line naming the plugin and its file; nnexp's own keep a traceback."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nnexp import DATASETS, LOSSES, MODELS, OPTIMIZERS, SCHEDULES, Examples, Trainer
from nnexp.errors import PluginError, TrainingError
from nnexp.job.build import check_plugin_outputs
from nnexp.plugins import blame, load_builtins, load_folder

load_builtins()

PLUGINS = {
    "dsload.py": """
        import numpy as np
        from nnexp import DATASETS, Dataset, Splits


        @DATASETS.register("bad_load")
        class BadLoad(Dataset):
            def load(self, rng: np.random.Generator) -> Splits:
                raise RuntimeError("remote data unavailable")
    """,
    "narrow.py": """
        from nnexp import ACTIVATIONS, Activation


        @ACTIVATIONS.register("narrow")
        class Narrow(Activation):
            def forward(self, x):
                return x[:, :1]

            def backward(self, grad_out, input_grad=True):
                return grad_out
    """,
    "wrong.py": """
        import numpy as np
        from nnexp import ACTIVATIONS, LOSSES, Activation
        from nnexp.core.losses import MeanSquaredError


        @ACTIVATIONS.register("widening")
        class Widening(Activation):
            def forward(self, x):
                return np.tanh(x).astype(np.float64)

            def backward(self, grad_out, input_grad=True):
                return grad_out


        @ACTIVATIONS.register("listing")
        class Listing(Activation):
            def forward(self, x):
                return x.tolist()

            def backward(self, grad_out, input_grad=True):
                return grad_out


        @ACTIVATIONS.register("narrow_back")
        class NarrowBack(Activation):
            def forward(self, x):
                return x

            def backward(self, grad_out, input_grad=True):
                return grad_out[:, :1]


        @LOSSES.register("short_grad")
        class ShortGrad(MeanSquaredError):
            def value_and_gradient(self, y_true, y_pred):
                value, grad = super().value_and_gradient(y_true, y_pred)
                return value, grad[:, :1]


        @LOSSES.register("two_values")
        class TwoValues(MeanSquaredError):
            def value_and_gradient(self, y_true, y_pred):
                value, grad = super().value_and_gradient(y_true, y_pred)
                return np.array([value, value]), grad


        @LOSSES.register("neg_mse")
        class NegativeMse(MeanSquaredError):
            def value_and_gradient(self, y_true, y_pred):
                value, grad = super().value_and_gradient(y_true, y_pred)
                return value - (10.0 if len(y_true) > self.rows else 0.0), grad

            rows = 0


        @LOSSES.register("neg_later")
        class NegativeLater(NegativeMse):
            rows = 2  # more rows than the probe before the run passes


        @ACTIVATIONS.register("nan_always")
        class NanAlways(Activation):
            rows = 0

            def forward(self, x):
                return x * np.nan if len(x) > self.rows else x

            def backward(self, grad_out, input_grad=True):
                return grad_out


        @ACTIVATIONS.register("nan_later")
        class NanLater(NanAlways):
            rows = 2


        @ACTIVATIONS.register("nan_back")
        class NanBack(Activation):
            def forward(self, x):
                return x

            def backward(self, grad_out, input_grad=True):
                return grad_out * np.nan
    """,
    "schedules.py": """
        from nnexp import SCHEDULES, Schedule


        @SCHEDULES.register("halving")
        class Halving(Schedule):
            def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
                return base_rate / 2**epoch


        @SCHEDULES.register("zero_div")
        class ZeroDiv(Schedule):
            def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
                return base_rate / max(0, 2 - epoch)
    """,
    "helpers.py": """
        import sys

        from nnexp import SCHEDULES, Schedule


        @SCHEDULES.register("constant_rate")
        class ConstantRate(Schedule):
            def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
                return base_rate


        def shrink(epoch: int) -> float:
            return 1 / (2 - epoch)


        class Shared(Schedule):
            def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
                return base_rate * shrink(epoch)


        @SCHEDULES.register("shrinking")
        class Shrinking(Shared):
            pass


        @SCHEDULES.register("quitter")
        class Quitter(Schedule):
            def rate(self, epoch: int, base_rate: float, epochs: int) -> float:
                if epoch >= 2:
                    sys.exit(0)
                return base_rate
    """,
    "inits.py": """
        import numpy as np
        from nnexp import INITIALIZERS, Initializer


        @INITIALIZERS.register("nan_init")
        class NanInit(Initializer):
            def __call__(self, shape, rng):
                return np.full(shape, np.nan)


        @INITIALIZERS.register("flat_init")
        class FlatInit(Initializer):
            def __call__(self, shape, rng):
                return np.zeros(shape[0] * shape[1])


        @INITIALIZERS.register("list_init")
        class ListInit(Initializer):
            def __call__(self, shape, rng):
                return np.zeros(shape).tolist()


        @INITIALIZERS.register("huge_init")
        class HugeInit(Initializer):
            def __call__(self, shape, rng):
                return np.full(shape, 1e300)
    """,
    "fp.py": """
        from nnexp.models.base import MODELS, Footprint
        from nnexp.models.mlp import MLP


        @MODELS.register("fp_str")
        class FpStr(MLP):
            def footprint(self, *args):
                return "lots"


        @MODELS.register("fp_neg")
        class FpNeg(MLP):
            def footprint(self, *args):
                return Footprint(-10**18, -5, "neg")


        @MODELS.register("fp_nan")
        class FpNan(MLP):
            def footprint(self, *args):
                return Footprint(10, float("nan"), "hidden_sizes=[4]")
    """,
    "datasets.py": """
        import numpy as np
        from nnexp import DATASETS, Dataset, Splits


        def labelled(rng, n, features):
            x = rng.standard_normal((n, features))
            return x, (x[:, 0] > 0).astype(int)


        @DATASETS.register("wide_test")
        class WideTest(Dataset):
            def load(self, rng):
                return Splits(*labelled(rng, 100, 2), *labelled(rng, 30, 3), 2)


        @DATASETS.register("same_names")
        class SameNames(Dataset):
            def load(self, rng):
                return Splits(*labelled(rng, 100, 2), *labelled(rng, 30, 2), 2, class_names=("a", "a"))
    """,
}


def write_plugins(root: Path) -> None:
    (root / "plugins").mkdir(exist_ok=True)
    for name, source in PLUGINS.items():
        (root / "plugins" / name).write_text(textwrap.dedent(source))


@pytest.fixture
def plugins(tmp_path, monkeypatch, restore_registries):
    monkeypatch.chdir(tmp_path)
    write_plugins(tmp_path)
    load_folder(tmp_path / "plugins")


def raised(call) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


def test_an_exception_from_a_plugin_s_code_names_the_plugin_and_its_file(plugins):
    exc = raised(lambda: DATASETS.build({"name": "bad_load"}).load(np.random.default_rng(0)))
    assert str(blame(exc)) == (
        "dataset bad_load (plugins/dsload.py, line 9, in BadLoad.load) raised RuntimeError: remote data unavailable"
    )


def test_of_two_plugins_in_one_file_the_one_whose_code_raised_is_named(plugins):
    exc = raised(lambda: SCHEDULES.build({"name": "zero_div"}).rate(2, 0.1, 5))
    where = "plugins/schedules.py, line 14, in ZeroDiv.rate"
    assert str(blame(exc)) == f"schedule zero_div ({where}) raised ZeroDivisionError: float division by zero"


def test_a_module_level_helper_s_error_names_its_line_and_the_plugin_that_called_it(plugins):
    """It named the file's first class, constant_rate, which never ran; the helper runs in a method that the
    registered class inherits from one that is not registered."""
    exc = raised(lambda: SCHEDULES.build({"name": "shrinking"}).rate(2, 0.1, 5))
    where = "plugins/helpers.py, line 14, in shrink"
    assert str(blame(exc)) == f"schedule shrinking ({where}) raised ZeroDivisionError: division by zero"


def test_a_helper_called_by_no_plugin_names_its_file_line_and_function(plugins):
    shrink = sys.modules["nnexp_local_plugins.helpers"].shrink
    exc = raised(lambda: shrink(2))
    where = "plugins/helpers.py, line 14, in shrink"
    assert str(blame(exc)) == f"plugin ({where}) raised ZeroDivisionError: division by zero"


def test_a_plugin_s_sys_exit_is_its_error(plugins):
    with pytest.raises(SystemExit) as caught:
        SCHEDULES.build({"name": "quitter"}).rate(2, 0.1, 5)
    assert str(blame(caught.value)) == (
        "schedule quitter (plugins/helpers.py, line 31, in Quitter.rate) called sys.exit(0); "
        "a plugin may not end nnexp, raise instead"
    )


def test_an_error_of_nnexp_s_own_code_is_not_blamed_on_a_plugin(plugins):
    network = MODELS.build({"name": "mlp", "hidden_sizes": [4]}).build(
        3, 2, LOSSES.build({"name": "cross_entropy"}), np.random.default_rng(0), np.float64
    )
    exc = raised(lambda: network.forward(np.zeros((2, 5))))
    assert isinstance(exc, ValueError) and blame(exc) is None


#: The one-hot targets of two rows of two classes.
TARGETS = np.eye(2)


def test_an_activation_whose_output_is_not_shaped_like_its_input_is_refused_naming_it(plugins):
    network_loss = LOSSES.build({"name": "cross_entropy"})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [4], "activation": "narrow"}).build(
        3, 2, network_loss, np.random.default_rng(0), np.float64
    )
    with pytest.raises(PluginError) as caught:
        check_plugin_outputs(network, network_loss, np.zeros((2, 3)), TARGETS)
    assert str(caught.value) == (
        "activation narrow (plugins/narrow.py) returned an output of (2, 1) float64 for (2, 4) float64; "
        "it must be an array of the same shape and dtype"
    )


@pytest.mark.parametrize(
    ("activation", "loss", "message"),
    [
        # tracebacks from the next layer mid-run, naming no plugin, and FAILED runs, before
        ("widening", "mse", "activation widening (plugins/wrong.py) returned an output of (2, 4) float64 for (2, 4)"),
        ("listing", "mse", "activation listing (plugins/wrong.py) returned an output of list for (2, 4) float32"),
        ("narrow_back", "mse", "activation narrow_back (plugins/wrong.py) returned a gradient of (2, 1) float32 for"),
        ("relu", "short_grad", "loss short_grad (plugins/wrong.py) returned a gradient of (2, 1) float32 for (2, 2)"),
        ("relu", "two_values", "loss two_values (plugins/wrong.py) returned a loss of ndarray (2,); a loss is one"),
        # FAILED "loss became NaN at epoch 1, batch 1; try a smaller optimizer.learning_rate", before
        ("nan_always", "mse", "activation nan_always (plugins/wrong.py) returned an output holding NaN for finite "),
        ("nan_back", "mse", "activation nan_back (plugins/wrong.py) returned a gradient holding NaN for finite "),
        # FINISHED with a negative loss, whose checkpoints and outbox were then refused as impossible, before
        ("relu", "neg_mse", "loss neg_mse (plugins/wrong.py) returned -9.75 for 2 rows of the training set; a loss"),
    ],
)
def test_a_plugin_whose_result_is_not_an_array_like_its_input_is_refused_naming_it(plugins, activation, loss, message):
    network_loss = LOSSES.build({"name": loss})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [4], "activation": activation}).build(
        3, 2, network_loss, np.random.default_rng(0), np.float32
    )
    with pytest.raises(PluginError) as caught:
        check_plugin_outputs(network, network_loss, np.zeros((2, 3), np.float32), TARGETS.astype(np.float32))
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("activation", "loss", "message"),
    [
        (
            "nan_later",
            "mse",
            "loss became NaN at epoch 1, batch 1; try a smaller optimizer.learning_rate, or check the run's plugins: "
            "activation nan_later (plugins/wrong.py)",
        ),
        (
            "relu",
            "neg_later",
            "loss neg_later (plugins/wrong.py) returned -9.613 at epoch 1, batch 1; a loss must be >= 0",
        ),
    ],
)
def test_a_plugin_that_goes_wrong_while_training_is_named(plugins, activation, loss, message):
    """A NaN was blamed on the learning rate alone, and a negative loss trained on to a record nnexp then refused."""
    network_loss = LOSSES.build({"name": loss})
    rng = np.random.default_rng(0)
    network = MODELS.build({"name": "mlp", "hidden_sizes": [4], "activation": activation}).build(
        3, 2, network_loss, rng, np.float64
    )
    x = rng.standard_normal((8, 3))
    labels = (x[:, 0] > 0).astype(np.int64)
    train = Examples(x, network_loss.encode(labels, 2, np.float64), labels)
    with pytest.raises(TrainingError) as caught:
        Trainer(1, 4).fit(network, network_loss, OPTIMIZERS.build({"name": "sgd"}), train, rng)
    assert str(caught.value) == message


def test_the_built_in_activations_keep_their_input_s_shape():
    for activation in ("identity", "relu", "sigmoid", "tanh"):
        network_loss = LOSSES.build({"name": "cross_entropy"})
        network = MODELS.build({"name": "mlp", "hidden_sizes": [4], "activation": activation}).build(
            3, 2, network_loss, np.random.default_rng(0), np.float64
        )
        check_plugin_outputs(network, network_loss, np.zeros((2, 3)), TARGETS)


@pytest.mark.parametrize(
    ("name", "dtype", "message"),
    [
        ("nan_init", np.float64, "returned nan at (0, 0) for weights of shape (3, 4) in float64; weights must"),
        ("huge_init", np.float32, "returned inf at (0, 0) for weights of shape (3, 4) in float32; weights must"),
        ("flat_init", np.float64, "returned shape (12,) for weights of shape (3, 4); expected an array of that shape"),
        ("list_init", np.float64, "returned a list for weights of shape (3, 4); expected an array of that shape"),
    ],
)
def test_an_initializer_drawing_weights_unfit_to_train_is_refused_naming_it(plugins, name, dtype, message):
    from nnexp.core.layers import Dense

    with pytest.raises(PluginError) as caught:
        Dense(3, 4, np.random.default_rng(0), name, dtype=dtype)
    assert str(caught.value).startswith(f"initializer {name} (plugins/inits.py) {message}")


@pytest.mark.parametrize(
    ("name", "found"),
    [  # a bare AttributeError traceback from the memory check before
        ("fp_str", "'lots'"),
        # accepted before, and the check passed whatever the network needed
        ("fp_neg", "Footprint(parameters=-1000000000000000000, values_per_row=-5, setting='neg')"),
        ("fp_nan", "Footprint(parameters=10, values_per_row=nan, setting='hidden_sizes=[4]')"),
    ],
)
def test_a_model_s_footprint_of_the_wrong_kind_is_refused_naming_the_model(plugins, name, found):
    from nnexp.job import memory

    model = MODELS.build({"name": name, "hidden_sizes": [4]})
    with pytest.raises(PluginError) as caught:
        memory.checked_footprint(model, model.footprint(2, 2, LOSSES.build({"name": "cross_entropy"})))
    assert str(caught.value) == (
        f"model {name} (plugins/fp.py) footprint() returned {found}; expected None or a Footprint of finite sizes "
        ">= 0 and the name of the setting that sizes the model"
    )
    mlp = MODELS.build({"name": "mlp", "hidden_sizes": [4]})
    assert memory.checked_footprint(mlp, mlp.footprint(2, 2, LOSSES.build({"name": "cross_entropy"}))) is not None


def test_huge_initial_weights_are_kept_in_float64(plugins):
    from nnexp.core.layers import Dense

    assert Dense(3, 4, np.random.default_rng(0), "huge_init", dtype=np.float64).params["weight"][0, 0] == 1e300


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (  # the run FAILED with "loss became NaN ... try a smaller optimizer.learning_rate"
            ["model.initializer=nan_init"],
            "error: initializer nan_init (plugins/inits.py) returned nan at (0, 0) for weights of shape (2, 64) in "
            "float32; weights must be finite numbers\n",
        ),
        (  # a traceback after training, from the test split's forward pass; a FAILED run and a checkpoint
            ["dataset=wide_test"],
            "error: dataset wide_test: test split: 3 features per sample, but the train split has 2\n",
        ),
        (  # the run FINISHED with a model that nnexp predict refuses
            ["dataset=same_names"],
            "error: dataset same_names: class names must be different, one per class; 'a' is given more than once\n",
        ),
        (
            ["dataset=bad_load"],
            "error: dataset bad_load (plugins/dsload.py, line 9, in BadLoad.load) raised RuntimeError: "
            "remote data unavailable\n",
        ),
        (  # a bare AttributeError traceback from the memory check
            ["model=fp_str"],
            "error: model fp_str (plugins/fp.py) footprint() returned 'lots'; expected None or a Footprint of finite "
            "sizes >= 0 and the name of the setting that sizes the model\n",
        ),
        (  # a bare "ValueError: shapes (4,1) and (64,64) not aligned" traceback from the next layer, run FAILED
            ["model.activation=narrow", "trainer.engine=numpy"],
            "error: activation narrow (plugins/narrow.py) returned an output of (2, 1) float32 for (2, 64) float32; "
            "it must be an array of the same shape and dtype\n",
        ),
    ],
)
def test_a_plugin_failing_before_training_is_one_line_and_leaves_nothing(project, overrides, message):
    write_plugins(project.root)
    result = project.run(*overrides, "trainer.epochs=1")
    assert (result.returncode, result.stderr) == (1, message)
    assert project.job_dirs() == [] and project.runs() == []


def test_a_plugin_failing_during_training_fails_the_run_naming_it(project):
    write_plugins(project.root)
    result = project.run("schedule=zero_div", "dataset=quadrants", "trainer.epochs=3")
    where = "plugins/schedules.py, line 14, in ZeroDiv.rate"
    reason = f"schedule zero_div ({where}) raised ZeroDivisionError: float division by zero"
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.endswith(f"error: {reason}\n") and result.stderr.count("error:") == 1
    [run] = project.runs()
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == reason


def test_a_plugin_calling_sys_exit_during_training_fails_the_run_naming_it(project):
    """nnexp exited 0 with no word, the run FAILED without a reason: a run that did not finish looked a success."""
    write_plugins(project.root)
    result = project.run("schedule=quitter", "dataset=quadrants", "trainer.epochs=3")
    reason = (
        "schedule quitter (plugins/helpers.py, line 31, in Quitter.rate) called sys.exit(0); "
        "a plugin may not end nnexp, raise instead"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.endswith(f"error: {reason}\n") and result.stderr.count("error:") == 1
    [run] = project.runs()
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == reason


def test_a_preset_named_like_a_plugin_is_one_line_without_hydra_s_warning(project):
    (project.root / "conf" / "model" / "mlp.yaml").write_text("name: mlp\nhidden_sizes: [3]\n")
    result = project.run("model=mlp", "trainer.epochs=1")
    assert (result.returncode, result.stderr) == (
        1,
        "error: conf/model/mlp.yaml: a preset may not reuse the name of the model plugin 'mlp'; "
        "rename it (e.g. my_mlp.yaml) and start it with 'defaults: [mlp, _self_]'\n",
    )
    assert project.job_dirs() == [] and project.runs() == []


QUITS = """
import sys

from nnexp import ACTIVATIONS, Activation


@ACTIVATIONS.register("quits")
class Quits(Activation):
    def forward(self, x):
        sys.exit(0)
"""


def test_a_plugin_s_sys_exit_outside_a_run_is_the_command_s_error(plugins, monkeypatch, capsys):
    """``nnexp check`` of an activation calling sys.exit(0) stopped half-way with exit status 0."""
    import nnexp.__main__ as cli

    (Path.cwd() / "plugins" / "quits.py").write_text(QUITS)
    monkeypatch.setattr(cli, "raise_on_stop_signals", lambda: None)
    monkeypatch.setattr(sys, "argv", ["nnexp", "check", "--kinds", "activation", "--only", "quits"])
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 1
    assert capsys.readouterr().err == (
        "error: activation quits (plugins/quits.py, line 10, in Quits.forward) called sys.exit(0); "
        "a plugin may not end nnexp, raise instead\n"
    )
