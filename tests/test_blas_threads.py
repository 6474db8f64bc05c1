"""Importing nnexp before NumPy shortens how long OpenBLAS's idle threads spin, unless the user chose a value."""

import os
import subprocess
import sys

import pytest

#: Prints the variable as NumPy starts to load (OpenBLAS reads it then), from an import hook.
PROBE = """
import os, sys
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
sys.meta_path.insert(0, Watch())
import nnexp
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "4"), ("12", "12")])
def test_the_openblas_thread_timeout_is_set_before_numpy_loads_unless_given(given, expected):
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_THREAD_TIMEOUT"}
    if given is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = given
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
