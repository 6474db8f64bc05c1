"""Plugin discovery from the project folder and from installed distributions, and its error messages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nnexp import DATASETS, LOSSES
from nnexp.errors import PluginError
from nnexp.plugins import load_folder

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


def test_a_plugin_that_exits_at_import_is_an_error_naming_the_file(in_tmp):
    write(in_tmp / "plugins", "quits.py", "import sys\nsys.exit(0)\n")
    with pytest.raises(PluginError, match=r"^plugins/quits.py: exits while being imported \(SystemExit\(0\)\)"):
        load_folder(in_tmp / "plugins")
    assert "nnexp_local_plugins.quits" not in sys.modules


def test_an_interrupt_at_import_names_the_file(in_tmp):
    write(in_tmp / "plugins", "stops.py", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt, match=r"^interrupted while importing plugins/stops.py$"):
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
    with pytest.raises(PluginError, match=r"Untyped.__init__ parameter 'scale': annotation None is not a config type"):
        load_folder(in_tmp / "plugins")
    assert "untyped" not in LOSSES


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
