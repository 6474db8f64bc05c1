"""Plugin discovery from the project folder and from installed distributions, and its error messages."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from nnexp import ACTIVATIONS, DATASETS, LOSSES
from nnexp.config import store_configs
from nnexp.errors import Interrupted, PluginError
from nnexp.plugins import load_folder, stray_threads

REPO = Path(__file__).resolve().parents[1]

SPIRALS = """
import numpy as np
from nnexp import DATASETS, Dataset, Splits


@DATASETS.register("spirals")
class Spirals(Dataset):
    def __init__(self, turns: float = 1.5) -> None:
        self.turns = turns

    def load(self, rng):
        x = rng.normal(size=(40, 2))
        y = (x[:, 0] > 0).astype(int)
        return Splits(x[:30], y[:30], x[30:], y[30:], n_classes=2)
"""


def write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, restore_registries):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_plugin_file_registers_its_class_and_records_its_source(in_tmp):
    write(in_tmp / "plugins", "spirals.py", SPIRALS)
    load_folder(in_tmp / "plugins")
    assert "spirals" in DATASETS
    assert DATASETS.source("spirals") == "file plugins/spirals.py"
    assert DATASETS.build({"name": "spirals", "turns": 2.0}).turns == 2.0


def test_private_files_are_skipped(in_tmp):
    write(in_tmp / "plugins", "_draft.py", SPIRALS)
    load_folder(in_tmp / "plugins")
    assert "spirals" not in DATASETS


def test_syntax_error_names_the_file_and_line(in_tmp):
    write(in_tmp / "plugins", "broken.py", "x = 1\ndef f(:\n")
    with pytest.raises(PluginError, match=r"^plugins/broken.py: SyntaxError at line 2: "):
        load_folder(in_tmp / "plugins")


def test_import_error_names_the_file(in_tmp):
    write(in_tmp / "plugins", "needs.py", "import not_a_module_anywhere\n")
    with pytest.raises(PluginError, match=r"^plugins/needs.py: ModuleNotFoundError: No module named"):
        load_folder(in_tmp / "plugins")


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (make_fifo, "plugins/odd.py: a named pipe (FIFO), not a regular file"),
        (make_socket, "plugins/odd.py: a socket, not a regular file"),
        (lambda path: path.symlink_to("/dev/null"), "plugins/odd.py: a character device, not a regular file"),
        (Path.mkdir, "plugins/odd.py: a folder, not a regular file"),
        (
            lambda path: path.symlink_to(path.with_name("gone.py")),
            "plugins/odd.py is a symbolic link to {plugins}/gone.py, which does not exist; "
            "create that or remove the link",
        ),
    ],
    ids=["fifo", "socket", "device", "folder", "dangling-link"],
)
def test_a_plugin_path_that_is_no_regular_file_is_one_line_naming_it(in_tmp, make, expected):
    """A FIFO's import waited for a writer for ever; a dangling link was ``IsADirectoryError`` or ``No such file``,
    named by its target's path."""
    (in_tmp / "plugins").mkdir()
    make(in_tmp / "plugins" / "odd.py")
    with pytest.raises(PluginError) as error:
        load_folder(in_tmp / "plugins")
    assert str(error.value) == expected.format(plugins=in_tmp / "plugins")


def test_a_plugin_that_is_a_link_to_a_file_is_imported_and_named_as_it_stands(in_tmp):
    source = write(in_tmp / "elsewhere", "spirals_source.py", SPIRALS)
    (in_tmp / "plugins").mkdir()
    (in_tmp / "plugins" / "spirals.py").symlink_to(source)
    load_folder(in_tmp / "plugins")
    assert DATASETS.source("spirals") == "file plugins/spirals.py"


def test_a_plugin_that_moves_the_working_directory_is_an_error_naming_the_file(in_tmp, tmp_path):
    """The run's folder and the store were made in the other folder, and the project's presets went unread."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(in_tmp / "plugins", "moves.py", f"import os\nos.chdir({str(elsewhere)!r})\n")
    with pytest.raises(PluginError, match=r"^plugins/moves.py: moves the working directory to .*elsewhere while"):
        load_folder(in_tmp / "plugins")
    assert Path.cwd() == in_tmp


def test_a_plugin_that_exits_at_import_is_an_error_naming_the_file(in_tmp):
    write(in_tmp / "plugins", "quits.py", "import sys\nsys.exit(0)\n")
    with pytest.raises(PluginError, match=r"^plugins/quits.py: called sys.exit\(0\) while being imported; "):
        load_folder(in_tmp / "plugins")
    assert "nnexp_local_plugins.quits" not in sys.modules


def test_an_interrupt_at_import_names_the_file(in_tmp):
    write(in_tmp / "plugins", "stops.py", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt, match=r"^interrupted \(SIGINT\) while importing plugins/stops.py$") as stop:
        load_folder(in_tmp / "plugins")
    assert isinstance(stop.value, Interrupted) and stop.value.exit_code == 130


def test_a_sigterm_at_import_stays_a_sigterm_naming_the_file(in_tmp):
    """It became a KeyboardInterrupt, which nnexp reported as Ctrl-C: "interrupted", exit 130."""
    write(in_tmp / "plugins", "slow.py", "from nnexp.errors import Interrupted\n" + SIGTERM)
    with pytest.raises(KeyboardInterrupt, match=r"^terminated \(SIGTERM\) while importing plugins/slow.py$") as stop:
        load_folder(in_tmp / "plugins")
    assert isinstance(stop.value, Interrupted) and stop.value.exit_code == 143
    assert "nnexp_local_plugins.slow" not in sys.modules


#: What raise_on_stop_signals' handler raises when SIGTERM lands.
SIGTERM = 'raise Interrupted("terminated (SIGTERM)", 143)\n'


def test_a_sigterm_landing_in_a_class_body_s_set_name_stays_a_sigterm(in_tmp):
    """Python 3.11 wraps an exception of ``__set_name__`` in a RuntimeError, which became a plugin's error."""
    source = "from nnexp.errors import Interrupted\n\nclass Stop:\n    def __set_name__(self, owner, name):\n        "
    write(in_tmp / "plugins", "named.py", source + SIGTERM + "\nclass Holder:\n    field = Stop()\n")
    with pytest.raises(KeyboardInterrupt, match=r"^terminated \(SIGTERM\) while importing plugins/named.py$"):
        load_folder(in_tmp / "plugins")


def test_duplicate_name_names_both_sources(in_tmp):
    write(in_tmp / "plugins", "moons_again.py", SPIRALS.replace('"spirals"', '"moons"'))
    with pytest.raises(PluginError) as raised:
        load_folder(in_tmp / "plugins")
    message = str(raised.value)
    assert message.startswith("plugins/moons_again.py: dataset 'moons' is already registered by nnexp.datasets.moons")
    assert "override=True" in message


def test_override_replaces_a_builtin_on_purpose(in_tmp):
    source = SPIRALS.replace('@DATASETS.register("spirals")', '@DATASETS.register("moons", override=True)')
    write(in_tmp / "plugins", "my_moons.py", source)
    load_folder(in_tmp / "plugins")
    assert DATASETS.source("moons") == "file plugins/my_moons.py"


def test_bad_constructor_is_rejected_at_registration(in_tmp):
    write(
        in_tmp / "plugins",
        "untyped.py",
        """
        from nnexp import LOSSES, Loss

        @LOSSES.register("untyped")
        class Untyped(Loss):
            def __init__(self, scale=1.0) -> None:
                self.scale = scale
        """,
    )
    with pytest.raises(PluginError) as raised:
        load_folder(in_tmp / "plugins")
    assert str(raised.value) == "plugins/untyped.py: Untyped(scale) needs a type annotation, e.g. scale: float = 1.0"
    assert "untyped" not in LOSSES


PLUGIN = """
from enum import Enum

from nnexp import {registry}, {base}


class Shape(Enum):
    round = "round"


@{registry}.register("mine")
class Mine({base}):
    def __init__(self, {parameters}) -> None:
        self.kept = locals()
"""


def write_mine(folder: Path, parameters: str, registry: str = "DATASETS", base: str = "Dataset") -> None:
    """``plugins/mine.py``: a plugin ``mine`` of ``registry`` whose constructor takes ``parameters``."""
    write(folder / "plugins", "mine.py", PLUGIN.format(registry=registry, base=base, parameters=parameters))


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ("alpha", "Mine(alpha) needs a type annotation, e.g. alpha: float; config types are int, float, bool, str, "
         "an Enum, list[...] of those, or ... | None"),
        ("size=3", "Mine(size) needs a type annotation, e.g. size: int = 3"),
        ("label=None", "Mine(label) needs a type annotation, e.g. label: float | None = None"),
        ("sizes=(32, 16)", "Mine(sizes) needs a type annotation, e.g. sizes: list[int] = [32, 16]"),
        ("shape=Shape.round", "Mine(shape) needs a type annotation, e.g. shape: Shape = Shape.round"),
        ("sizes: tuple[int, int] = (32, 16)", "Mine(sizes: tuple[int, int]) is not a config type; use int, float, "
         "bool, str, an Enum, list[...] of those, or ... | None, e.g. sizes: list[int] = [32, 16]"),
    ],
)
def test_a_parameter_without_a_config_type_says_what_to_write(in_tmp, parameters, expected):
    write_mine(in_tmp, parameters)
    with pytest.raises(PluginError) as raised:
        load_folder(in_tmp / "plugins")
    assert str(raised.value) == f"plugins/mine.py: {expected}"
    assert "mine" not in DATASETS


@pytest.mark.parametrize(("registry", "base"), [("ACTIVATIONS", "Activation"), ("INITIALIZERS", "Initializer")])
def test_an_activation_or_initializer_parameter_needs_a_default(in_tmp, registry, base):
    write_mine(in_tmp, "alpha: float", registry, base)
    with pytest.raises(PluginError) as raised:
        load_folder(in_tmp / "plugins")
    kind = base.lower()
    assert str(raised.value) == (
        f"plugins/mine.py: Mine(alpha) needs a default: {kind}s are chosen by name alone and take no settings; "
        "write alpha: float = <value>, or register one variant per value under its own name"
    )


def test_one_with_a_default_is_registered(in_tmp):
    write_mine(in_tmp, "alpha: float = 0.1", "ACTIVATIONS", "Activation")
    load_folder(in_tmp / "plugins")
    assert ACTIVATIONS.build({"name": "mine"}).kept["alpha"] == 0.1


@pytest.mark.parametrize(
    ("parameters", "fix"),
    [
        ("size: int = 0.5", "change the default or the annotation"),
        ("sizes: list[int] = ['a']", "change the default or the annotation"),
        ("rate: float = None", "write rate: float | None = None"),
    ],
)
def test_a_default_of_another_type_than_its_annotation_names_the_plugin(in_tmp, parameters, fix):
    write_mine(in_tmp, parameters)
    load_folder(in_tmp / "plugins")
    with pytest.raises(PluginError) as raised:
        store_configs()
    assert str(raised.value) == f"plugins/mine.py: Mine({parameters}): the default is not of the annotated type; {fix}"


def test_the_cli_says_what_to_write_in_one_line_and_writes_nothing(project):
    write(project.root / "plugins", "spirals.py", SPIRALS.replace("turns: float = 1.5", "turns=1.5"))
    result = project.run("trainer.epochs=1")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "error: plugins/spirals.py: Spirals(turns) needs a type annotation, e.g. turns: float = 1.5",
    )
    assert not (project.root / "outputs").exists()


def test_entry_point_plugin_from_an_installed_distribution(tmp_path):
    """A real dist-info on sys.path: nnexp imports the module its ``nnexp.plugins`` entry point names."""
    site = tmp_path / "site"
    write(site / "nnexp_spirals", "__init__.py", "")
    write(site / "nnexp_spirals", "plugin.py", SPIRALS)
    dist_info = site / "nnexp_spirals-0.1.dist-info"
    write(dist_info, "METADATA", "Metadata-Version: 2.1\nName: nnexp-spirals\nVersion: 0.1\n")
    write(dist_info, "entry_points.txt", "[nnexp.plugins]\nspirals = nnexp_spirals.plugin\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = (
        "from pathlib import Path; from nnexp.plugins import load_plugins; from nnexp import DATASETS;"
        "load_plugins(Path('.')); print(DATASETS.source('spirals'))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "entry point 'spirals' (nnexp_spirals.plugin) from nnexp-spirals 0.1"
    shown = subprocess.run(
        [sys.executable, "-m", "nnexp", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    [datasets] = [line for line in shown.stdout.splitlines() if line.startswith("dataset: ")]
    assert "spirals" in datasets.split(": ", 1)[1].split(", ")


def test_broken_entry_point_names_the_distribution(tmp_path):
    site = tmp_path / "site"
    write(site / "nnexp_broken", "__init__.py", "import not_a_module_anywhere\n")
    dist_info = site / "nnexp_broken-0.2.dist-info"
    write(dist_info, "METADATA", "Metadata-Version: 2.1\nName: nnexp-broken\nVersion: 0.2\n")
    write(dist_info, "entry_points.txt", "[nnexp.plugins]\nbroken = nnexp_broken\n")
    result = subprocess.run(
        [sys.executable, "-m", "nnexp", "--help"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "error: entry point 'broken' (nnexp_broken) from nnexp-broken 0.2: "
        "ModuleNotFoundError: No module named 'not_a_module_anywhere'"
    )


def test_the_shipped_example_plugins_keep_to_the_projects_lint():
    """ruff's config leaves plugins/ to the user whose files they are; the examples nnexp ships there are linted
    here, by name, with the project's rules (a file named on the command line is linted whatever ``include`` says)."""
    if importlib.util.find_spec("ruff") is None or shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs ruff (pip install -e '.[test]') and a git checkout, to tell the shipped plugins apart")
    listed = subprocess.run(["git", "ls-files", "plugins/*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    shipped = listed.stdout.split()
    assert "plugins/circles.py" in shipped
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *shipped], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_the_example_activation_trains_and_passes_its_gradient_check(project):
    """``plugins/_softsign.py``, as the plugin guide says to use it: renamed, then checked and trained with."""
    example = Path(__file__).resolve().parents[1] / "plugins" / "_softsign.py"
    (project.root / "plugins" / "softsign.py").write_text(example.read_text())
    checked = project.run("check", "--only", "softsign")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("pass  activation softsign (file plugins/softsign.py)")
    trained = project.run("dataset=quadrants", "trainer.epochs=2", "model.activation=softsign")
    assert trained.returncode == 0, trained.stderr


def test_a_name_that_cannot_be_typed_names_the_file_the_name_and_the_pattern(in_tmp):
    write(in_tmp / "plugins", "accents.py", SPIRALS.replace('"spirals"', '"café"'))
    with pytest.raises(PluginError) as refused:
        load_folder(in_tmp / "plugins")
    assert str(refused.value).startswith(
        "plugins/accents.py: Spirals: dataset name 'café' cannot be chosen on the command line; a name must be "
        "snake_case ASCII matching [a-z_][a-z0-9_]*"
    )


def test_sigterm_while_plugins_are_imported_is_reported_as_sigterm(project):
    """It said "interrupted while importing plugins/term.py" and exited 130, as if Ctrl-C."""
    (project.root / "plugins" / "term.py").write_text("import os, signal\n\nos.kill(os.getpid(), signal.SIGTERM)\n")
    result = project.run("dataset=quadrants", "trainer.epochs=1")
    assert (result.returncode, result.stderr) == (143, "error: terminated (SIGTERM) while importing plugins/term.py\n")
    assert sorted(path.name for path in project.root.iterdir()) == ["conf", "plugins"]


#: A plugin that starts a thread Python's exit would wait for, for ever (a daemon beside it, which it would not).
THREADS = """
import threading

stop = threading.Event()


def poll():
    stop.wait()


threading.Thread(target=poll, name="poller").start()
threading.Thread(target=poll, name="watcher", daemon=True).start()
"""


def test_the_threads_python_would_wait_for_at_exit_are_found_with_a_plugin_s_file(in_tmp):
    write(in_tmp / "plugins", "thr.py", THREADS)
    elsewhere = threading.Event()
    other = threading.Thread(target=elsewhere.wait, name="not a plugin's")
    other.start()
    load_folder(in_tmp / "plugins")
    try:
        found = {(thread.name, file) for thread, file in stray_threads()}  # with any an earlier test left
        assert {("poller", "plugins/thr.py"), ("not a plugin's", None)} <= found
        assert "watcher" not in {name for name, _ in found}
    finally:
        sys.modules["nnexp_local_plugins.thr"].stop.set()
        elsewhere.set()
        other.join()


def test_a_run_whose_plugin_left_a_thread_running_exits_with_its_status_saying_so(project):
    """Python waited at exit for the thread, for ever, after the run's last line; SIGTERM then printed "Exception
    ignored in: <module 'threading'>" and a traceback."""
    write(project.root / "plugins", "thr.py", THREADS)
    warning = (
        "warning: not waiting for thread 'poller' (plugins/thr.py) to end: make a plugin's thread a daemon, or join it"
    )
    result = project.run("dataset=quadrants", "trainer.epochs=1", timeout=120)
    assert result.returncode == 0 and result.stderr.splitlines()[-1] == warning, result.stderr
    assert [run.info.status for run in project.runs()] == ["FINISHED"]
    result = project.run("dataset=quadrants", "trainer.epochs=0", timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: trainer.epochs must be >= 1, got 0", warning]
