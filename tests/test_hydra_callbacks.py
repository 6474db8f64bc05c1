"""nnexp's Hydra callbacks: their errors are nnexp's one line, never Hydra's warning, nor lost at a sweep's end."""

from __future__ import annotations

import warnings

import pytest
from hydra._internal.callbacks import Callbacks
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from nnexp.errors import ConfigError
from nnexp.job import hooks


class Failing(hooks.NnexpCallback):
    def on_multirun_start(self, config, **kwargs):
        raise ConfigError("cannot start")

    def on_multirun_end(self, config, **kwargs):
        raise ConfigError("cannot summarise")


class Foreign(Callback):
    def on_multirun_end(self, config, **kwargs):
        raise ValueError("not nnexp's")


def notified(*callbacks: Callback) -> Callbacks:
    """Hydra's own dispatcher of ``callbacks``, as a sweep calls them."""
    dispatcher = Callbacks()
    dispatcher.callbacks = list(callbacks)
    return dispatcher


@pytest.fixture(autouse=True)
def nothing_kept():
    hooks.take_error()
    yield
    hooks.take_error()


def test_an_error_at_the_end_is_kept_for_nnexp_and_hydra_warns_of_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        notified(Failing()).on_multirun_end(config=OmegaConf.create())
    kept = hooks.take_error()
    assert isinstance(kept, ConfigError) and str(kept) == "cannot summarise"
    assert hooks.take_error() is None


def test_an_error_at_the_start_stops_hydra_and_the_first_error_is_kept():
    with pytest.raises(hooks.CallbackFailed):
        notified(Failing()).on_multirun_start(config=OmegaConf.create())
    notified(Failing()).on_multirun_end(config=OmegaConf.create())
    assert str(hooks.take_error()) == "cannot start"


def test_another_callback_s_error_is_still_hydra_s_warning():
    with pytest.warns(UserWarning, match="Callback Foreign.on_multirun_end raised ValueError: not nnexp's"):
        notified(Failing(), Foreign()).on_multirun_end(config=OmegaConf.create())
    assert str(hooks.take_error()) == "cannot summarise"


def test_nnexp_s_hydra_callbacks_keep_their_errors():
    from nnexp.job.run_folder import RunFolderCallback
    from nnexp.job.sweep import SweepCallback

    assert issubclass(RunFolderCallback, hooks.NnexpCallback) and issubclass(SweepCallback, hooks.NnexpCallback)


@pytest.mark.parametrize("mode", [(), ("-m", "seed=1,2")], ids=["run", "sweep"])
def test_outputs_that_is_a_file_is_the_error_line_alone(project, mode):
    """The sweep's start printed Hydra's five-line UserWarning before nnexp's error line."""
    (project.root / "outputs").write_text("not a folder")
    result = project.run(*mode, "dataset=quadrants", "trainer.epochs=1")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: cannot ") and "Not a directory" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert (project.root / "outputs").read_text() == "not a folder"
