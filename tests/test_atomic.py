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


#: What a process killed while writing leaves: ``replacing``'s names for model.npz, a checkpoint and a plot.
LEFT = {
    ".model.c1a3209a.partial.npz": ".",
    ".checkpoint-e000001-b00000000.d12b3339.partial.npz": "checkpoints",
    ".loss.0123abcd.partial.png": "plots",
}


def test_a_run_folders_partial_files_are_removed_wherever_nnexp_writes_and_nothing_else(tmp_path):
    from nnexp.atomic import remove_run_partials

    run = tmp_path / "run"
    for name, folder in LEFT.items():
        (run / folder).mkdir(parents=True, exist_ok=True)
        (run / folder / name).write_bytes(b"half")
    (run / "notes.partial.txt").write_text("not ours")
    (run / "other" / ".model.c1a3209a.partial.npz").parent.mkdir()
    (run / "other" / ".model.c1a3209a.partial.npz").write_bytes(b"a child's, in a folder of its own")
    removed = remove_run_partials(run)
    assert sorted(path.relative_to(run).as_posix() for path in removed) == sorted(
        f"{folder}/{name}".removeprefix("./") for name, folder in LEFT.items()
    )
    assert sorted(path.relative_to(run).as_posix() for path in run.rglob("*") if path.is_file()) == [
        "notes.partial.txt",
        "other/.model.c1a3209a.partial.npz",
    ]
    assert remove_run_partials(tmp_path / "gone") == []
