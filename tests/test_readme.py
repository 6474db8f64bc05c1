"""The README's examples are code too: its notebook snippet must run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_notebook_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [snippet] = [block for block in blocks if "Trainer(" in block]
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 0.8 < float(result.stdout.strip()) <= 1.0


def test_ci_runs_the_readme_test_command():
    text = README.read_text()
    command = re.search(r"<!-- test-command -->\n```\n(.*?)\n```", text, flags=re.S)
    assert command is not None and "pytest" in command.group(1)
