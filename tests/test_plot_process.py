"""The plotting process: it draws a run's plots, reports what stopped them, and never outlives its run."""

import functools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nnexp.atomic import replacing
from nnexp.job.plot_process import (
    Plotter,
    PlotterGoneError,
    _draw,
    _exit_on_sigterm,
    _Terminated,
    close_plotter,
    draw_with_plotter,
    plotter,
)
from nnexp.job.plots import RunPlots, decision_regions, draw_run_plots
from nnexp.job.record import draw_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_plots(folder: Path, two_d: bool = True) -> RunPlots:
    x = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    y = np.array([0, 1, 1])
    regions = decision_regions(lambda g: (g[:, 0] > 0.5).astype(int), x, y, ["a", "b"], 20) if two_d else None
    history = {"train_loss": [0.9, 0.5], "train_accuracy": [0.5, 0.9]}
    return RunPlots(folder, np.array([[1, 0], [1, 1]]), ("a", "b"), history, regions)


def drawing(folder: Path, two_d: bool = True) -> functools.partial:
    return functools.partial(draw_run_plots, run_plots(folder, two_d))


def noting_the_process(path: Path) -> functools.partial:
    """A drawing that writes the id of the process that makes it to ``path``."""
    return functools.partial(subprocess.run, ["sh", "-c", f"echo $PPID > {path}"], check=True)


@pytest.fixture
def process():
    started = Plotter()
    yield started
    started.close()


def test_it_draws_a_runs_three_plots_and_says_how_long_it_took(process, tmp_path):
    seconds = process.draw(drawing(tmp_path / "plots"))
    names = sorted(path.name for path in (tmp_path / "plots").iterdir())
    assert names == ["confusion_matrix.png", "decision_boundary.png", "learning_curves.png"]
    assert all((tmp_path / "plots" / name).read_bytes()[:8] == PNG_MAGIC for name in names)
    assert seconds > 0
    process.draw(drawing(tmp_path / "again", two_d=False))  # the same process serves the next run
    again = sorted(path.name for path in (tmp_path / "again").iterdir())
    assert again == ["confusion_matrix.png", "learning_curves.png"]


def test_a_plot_that_cannot_be_written_is_a_warning_naming_the_folder(process, tmp_path, caplog):
    (tmp_path / "plots").write_text("a file where the folder goes")
    with caplog.at_level(logging.WARNING):
        plotted, _ = draw_plots(process, run_plots(tmp_path / "plots"))
    assert not plotted
    [message] = [record.getMessage() for record in caplog.records]
    assert message.startswith("warning: plots not written: ") and str(tmp_path / "plots") in message
    assert process.alive, "the process serves the next run"


def test_what_else_stops_a_plot_is_raised_in_the_runs_process(process, tmp_path):
    history = {"train_loss": [1.0], "train_accuracy": [0.5]}
    wrong = RunPlots(tmp_path / "plots", np.ones((3, 3)), ("a", "b"), history, None)
    with pytest.raises(ValueError, match=r"confusion matrix must have shape \(2, 2\)"):
        process.draw(functools.partial(draw_run_plots, wrong))


def test_a_plotting_process_that_died_is_a_warning_and_the_next_run_gets_a_new_one(tmp_path, caplog):
    first = plotter()
    try:
        first.ready()
        os.kill(first._process.pid, signal.SIGKILL)
        first._process.wait()
        with caplog.at_level(logging.WARNING):
            plotted, _ = draw_plots(first, run_plots(tmp_path / "plots"))
        assert not plotted
        assert [record.getMessage() for record in caplog.records] == [
            "warning: plots not written: the plotting process ended with status -9"
        ]
        second = plotter()
        assert second is not first and second.alive
        assert second.draw(drawing(tmp_path / "plots")) > 0
    finally:
        close_plotter()


def test_a_ctrl_c_at_the_terminal_is_left_to_the_run(process, tmp_path):
    process.ready()
    os.kill(process._process.pid, signal.SIGINT)
    os.kill(process._process.pid, signal.SIGHUP)
    assert process.draw(drawing(tmp_path / "plots")) > 0


def test_the_process_ends_when_the_runs_process_is_killed(tmp_path):
    code = (
        "import os, sys, time\n"
        "from nnexp.job.plot_process import plotter\n"
        "started = plotter()\n"
        "started.ready()\n"
        "print(started._process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(run.stdout.readline())
    run.kill()
    run.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the plotting process outlived its run"
        time.sleep(0.05)


def test_a_run_that_exits_has_waited_for_its_plotting_process():
    code = (
        "from nnexp.job.plot_process import plotter\n"
        "started = plotter()\n"
        "started.ready()\n"
        "print(started._process.pid, flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert not Path(f"/proc/{int(result.stdout)}").exists()


def test_a_drawing_goes_to_the_plotting_process_when_one_runs_else_is_made_here(tmp_path):
    """A sweep's comparison was drawn in the sweep's own process, which imported matplotlib for it; where the jobs'
    plots were drawn, the plotting process has it imported already."""
    where = tmp_path / "pid"
    close_plotter()
    try:
        draw_with_plotter(noting_the_process(where))  # none runs
        assert int(where.read_text()) == os.getpid()
        running = plotter()
        draw_with_plotter(noting_the_process(where))
        assert int(where.read_text()) == running._process.pid
        os.kill(running._process.pid, signal.SIGKILL)
        running._process.wait()
        draw_with_plotter(noting_the_process(where))  # it ended: made here after all
        assert int(where.read_text()) == os.getpid()
    finally:
        close_plotter()


def test_a_sigterm_ends_the_process_quietly_while_it_waits_and_while_it_draws(capfd):
    """The run's process dying sends SIGTERM (PR_SET_PDEATHSIG); it ends the child with 143 and no traceback."""
    for drawing_stops_it in (False, True):
        process = Plotter()
        try:
            process.ready()
            if drawing_stops_it:
                with pytest.raises(PlotterGoneError, match="status 143"):
                    process.draw(functools.partial(os.kill, process._process.pid, signal.SIGTERM))
            else:
                os.kill(process._process.pid, signal.SIGTERM)
            assert process._process.wait(timeout=10) == 143
        finally:
            process.close()
    assert capfd.readouterr().err == ""


def test_a_sigterm_at_the_childs_exit_prints_nothing():
    """Landing in ``threading._shutdown``, the SystemExit it raised printed "Exception ignored in: <module
    'threading'>" and a traceback: seen when a sweep's joblib worker was killed."""
    code = (
        "import os, signal, threading, time\n"
        "from nnexp.job.plot_process import _exit_on_sigterm\n"
        "signal.signal(signal.SIGTERM, _exit_on_sigterm)\n"
        "stop = lambda: (time.sleep(0.2), os.kill(os.getpid(), signal.SIGTERM), time.sleep(5))\n"
        "threading.Thread(target=stop).start()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (143, "")


def write_until_terminated(path: Path) -> None:
    """A plot's write that SIGTERM stops halfway."""
    with replacing(path) as file:
        file.write(PNG_MAGIC)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)


def test_a_sigterm_while_drawing_unwinds_the_drawing_which_removes_its_partial_file(tmp_path):
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with pytest.raises(_Terminated):
            _draw(functools.partial(write_until_terminated, tmp_path / "plot.png"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []
