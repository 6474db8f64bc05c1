"""Atomic writes: a failed write keeps the old file and leaves nothing behind; files get the umask's mode."""

from __future__ import annotations

import os

import pytest

from nnexp.atomic import replacing


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "data.csv"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), replacing(target) as file:
        file.write(b"new")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["data.csv"]


def test_a_finished_write_replaces_the_file_with_the_umask_mode(tmp_path):
    target = tmp_path / "data.csv"
    umask = os.umask(0o022)
    try:
        with replacing(target, "w") as file:
            file.write("new\n")
    finally:
        os.umask(umask)
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [path.name for path in tmp_path.iterdir()] == ["data.csv"]
