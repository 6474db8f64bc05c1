"""Every sub-command's bad command line: one line naming the command and its --help, exit status 2."""

from __future__ import annotations

import importlib

import pytest

from nnexp.__main__ import COMMANDS


@pytest.mark.parametrize(
    ("command", "argv", "line"),
    [
        ("data", ["cifar"], "error: nnexp data: argument DATASET: invalid choice: 'cifar'"),
        (
            "reproduce",
            ["--seeds", "a,b"],
            "error: nnexp reproduce: argument --seeds: expected comma-separated integers such as 0,1,2, got 'a,b'",
        ),
        (
            "reproduce",
            ["--seeds", "1,2,1"],
            "error: nnexp reproduce: argument --seeds: each seed once, got 1 more than once",
        ),
        ("compare", ["--bogus"], "error: nnexp compare: unrecognized arguments: --bogus"),
        ("sync", [], "error: nnexp sync: the following arguments are required: folder"),
        ("runs", ["--limit", "x"], "error: nnexp runs: argument --limit: invalid int value: 'x'"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_status_2(command, argv, line, capsys):
    prog = line.split(":")[1].strip()
    with pytest.raises(SystemExit) as caught:
        status = importlib.import_module(COMMANDS[command]).main(argv)
        raise SystemExit(status)
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [error] = captured.err.splitlines()
    assert error.startswith(line) and error.endswith(f" (see {prog} --help)"), error
