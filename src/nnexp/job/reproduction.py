"""Reproducing the tutorials: each preset's seeds run as child jobs of one parent run, and a table of their results
against the published ones."""

from __future__ import annotations

import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from nnexp.children import die_with_parent
from nnexp.errors import NnexpError
from nnexp.folders import describe_os_error
from nnexp.tracking.tracked_run import Tracker

#: A preset reproduces its tutorial when the mean over seeds is at most this far below the published figure.
TOLERANCE = 0.005
#: A seed is unstable when its figure is more than this far below the median of the other seeds' figures: ten times
#: the spread between seeds of a stable preset (about 0.3 points), a third of what losing one class of ten costs.
UNSTABLE_GAP = 0.03
UNSTABLE_NOTE = (
    f"A seed is unstable when its figure is more than {UNSTABLE_GAP * 100:g} points below the median of the other "
    "seeds' (and such seeds are fewer than the rest); `miss` means the mean falls short only because of them: "
    "the other seeds' mean reaches the published figure."
)
RUN_ID = re.compile(r"; run ([0-9a-f]{32});")
PROGRESS = re.compile(r"\S+ epoch \d+/\d+ ")


@dataclass
class Preset:
    """A tutorial preset of ``conf/experiment/``, with the figure it must reach."""

    name: str
    target: float
    metric: str
    obtained: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.obtained)

    @property
    def passed(self) -> bool:
        return len(self.obtained) > 0 and self.reaches(self.mean)

    def reaches(self, value: float) -> bool:
        return value >= self.target - TOLERANCE

    def result(self, seeds: list[int]) -> str:
        """``pass`` or ``FAIL``, or ``miss`` when only unstable seeds pull the mean below; unstable seeds are named."""
        low = unstable(self.obtained)
        verdict = "pass" if self.passed else "FAIL"
        if not low:
            return verdict
        rest = statistics.fmean(value for index, value in enumerate(self.obtained) if index not in low)
        named = f"{'seeds' if len(low) > 1 else 'seed'} {', '.join(str(seeds[index]) for index in low)}"
        detail = f"{named} at {', '.join(f'{self.obtained[index]:.2%}' for index in low)} (the others {rest:.2%})"
        if not self.passed and self.reaches(rest):
            return f"miss: {detail}"
        return f"{verdict}; unstable: {detail}"


def unstable(values: list[float]) -> list[int]:
    """Indices of the values more than :data:`UNSTABLE_GAP` below the median of the others, if they are a minority.

    The median of the others, not their mean, so that two unstable seeds of five do not hide each other; a minority,
    so that with most seeds low it is the preset, not a seed, that falls short.
    """
    if len(values) < 3:
        return []
    low = [
        index
        for index, value in enumerate(values)
        if value < statistics.median(values[:index] + values[index + 1 :]) - UNSTABLE_GAP
    ]
    return low if len(low) < len(values) - len(low) else []


def find_presets(conf: Path, only: list[str]) -> list[Preset]:
    """Every experiment preset that states ``tags.target_accuracy``, or just those named in ``only``."""
    presets = []
    for path in sorted((conf / "experiment").glob("*.yaml")):
        tags = OmegaConf.load(path).get("tags") or {}
        if "target_accuracy" in tags and (not only or path.stem in only):
            presets.append(Preset(path.stem, float(tags.target_accuracy), tags.get("target_metric", "test_accuracy")))
    missing = sorted(set(only) - {preset.name for preset in presets})
    if missing:
        raise NnexpError(f"no preset with a target_accuracy tag named {', '.join(missing)} in {conf / 'experiment'}")
    if not presets:
        raise NnexpError(f"no experiment preset with a target_accuracy tag in {conf / 'experiment'}")
    return presets


def table(presets: list[Preset], seeds: list[int]) -> str:
    """The comparison as a Markdown table."""
    lines = [
        f"| preset | metric | published | obtained (mean of seeds {', '.join(map(str, seeds))}) | per seed "
        "| wall time per run | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset in presets:
        each = " / ".join(f"{value:.2%}" for value in preset.obtained) or "-"
        mean = f"{preset.mean:.2%}" if preset.obtained else "-"
        wall = f"{statistics.fmean(preset.seconds):.1f} s" if preset.seconds else "-"
        result = preset.result(seeds)
        lines.append(f"| {preset.name} | {preset.metric} | {preset.target:.2%} | {mean} | {each} | {wall} | {result} |")
    if any(unstable(preset.obtained) for preset in presets):
        lines += ["", UNSTABLE_NOTE]
    return "\n".join(lines)


def nnexp_command(preset: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "nnexp", f"experiment={preset}", *arguments]


def check_configs(presets: list[Preset], seeds: list[int], overrides: list[str]) -> None:
    """Compose every preset for every seed with ``overrides`` and construct its plugins, as each run will first, so
    that a mistake stops before the store or any run is touched."""
    from hydra import compose

    from nnexp.cli_errors import describe_config_error
    from nnexp.config import PRIMARY, composing, store_configs
    from nnexp.job.build import configure
    from nnexp.plugins import load_plugins

    load_plugins(Path.cwd())
    store_configs()
    conf = Path.cwd() / "conf"
    with composing(conf if conf.is_dir() else None):
        for preset in presets:
            for seed in seeds:
                try:
                    configure(compose(PRIMARY, [f"experiment={preset.name}", f"seed={seed}", *overrides]))
                except Exception as exc:
                    message = str(exc) if isinstance(exc, NnexpError) else describe_config_error(exc)
                    reason = message or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise NnexpError(f"{preset.name}: {reason}") from None


def check_writable(path: Path) -> None:
    """Raise :class:`NnexpError` unless ``path`` can be written, by opening it to append (and removing it again when
    it is new): permissions alone do not tell, for root or in a folder such as /proc. A new file, or a device such as
    /dev/full, is written a line: only a write meets a full disk."""
    if not path.parent.is_dir():
        raise NnexpError(f"--markdown {path}: folder {path.parent} does not exist")
    existed = path.exists()
    try:
        try:
            with path.open("a") as file:
                if not existed or (path.is_char_device() and not file.isatty()):  # never into a user's file
                    file.write("\n")
        finally:
            if not existed and path.is_file():
                path.unlink()
    except OSError as exc:
        raise NnexpError(markdown_error(path, exc)) from None


def write_markdown(path: Path, text: str) -> None:
    """Write the report's table to ``path``; a failure is one line naming it."""
    try:
        path.write_text(text)
    except OSError as exc:
        kept = "the table above is logged as the parent run's reproduce.md"
        raise NnexpError(f"{markdown_error(path, exc)}; {kept}") from None


def markdown_error(path: Path, exc: OSError) -> str:
    """``--markdown PATH: cannot write PATH: <reason>``; a write that fails on closing names no file itself."""
    if exc.filename is None:
        exc.filename = str(path)
    return f"--markdown {path}: {describe_os_error(exc, 'write')}"


def child_failure(returncode: int, stderr: str) -> str:
    """Why a child run's process failed: the signal that killed it, else its last ``error:`` line, else its exit
    status; never a progress or log line, which says nothing of the cause."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the run's process was killed by {name}"
    errors = [line.removeprefix("error: ") for line in stderr.splitlines() if line.startswith("error: ")]
    if errors:
        return errors[-1]
    if returncode == 0:
        return "the run's process printed no run id"
    return f"the run's process exited with status {returncode} and no error line"


def reap_children(tracker: Tracker, parent_run_id: str) -> str:
    """Mark KILLED the parent's child runs left RUNNING by a process that is gone (one killed by a signal closes
    nothing), as ``nnexp runs`` would; returns ``; run ID marked KILLED`` for each, to end the error line."""
    from nnexp.tracking import tables
    from nnexp.tracking.liveness import REASON, mark

    client, now = tracker.client, time.time()
    running = [run for run in tables.child_runs(client, client.get_run(parent_run_id)) if run.info.status == "RUNNING"]
    ghosts = [ghost for _, ghost in (mark(client, run.info.run_id, now) for run in running) if ghost is not None]
    return "".join(f"; run {ghost.run.info.run_id} marked KILLED ({REASON})" for ghost in ghosts)


def run_preset(preset: Preset, seed: int, parent_run_id: str, overrides: list[str], tracker: Tracker) -> None:
    """One child run of ``python -m nnexp``; appends its metric and wall time to ``preset``."""
    command = nnexp_command(
        preset.name,
        f"seed={seed}",
        f"tracking.uri={tracker.uri}",
        f"tracking.parent_run_id={parent_run_id}",
        f"tracking.run_name={preset.name}-seed{seed}",
        *overrides,
    )
    started = time.perf_counter()
    print(f"{preset.name} seed={seed}: training", file=sys.stderr, flush=True)
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent(signal.SIGHUP)
    )
    try:
        stderr = "".join(echo_progress(child.stderr))
        stdout = child.stdout.read()
        child.wait()
    except BaseException:
        # Ctrl-C reaches the child too; SIGTERM must be passed on. Either way it marks its own run KILLED.
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a wedged child must not turn the stop into another error
            child.kill()
            child.wait()
        raise
    preset.seconds.append(time.perf_counter() - started)
    found = RUN_ID.search(stdout)
    if child.returncode != 0 or found is None:
        reaped = reap_children(tracker, parent_run_id)
        raise NnexpError(f"{preset.name} with seed={seed}: {child_failure(child.returncode, stderr)}{reaped}")
    metrics = tracker.client.get_run(found.group(1)).data.metrics
    preset.obtained.append(metrics[preset.metric])
    print(f"{preset.name} seed={seed}: {preset.metric}={metrics[preset.metric]:.4f}", file=sys.stderr, flush=True)


def echo_progress(lines: Iterable[str]) -> Iterator[str]:
    """The child's stderr lines, passing its progress lines (``<run name> epoch 10/1000 ...``) on as they come."""
    for line in lines:
        if PROGRESS.match(line):
            print(line, end="", file=sys.stderr, flush=True)
        yield line


def tracking_option(overrides: list[str], key: str) -> str | None:
    """The value an override gives ``tracking.<key>``, so the parent run goes where its children go."""
    values = [item.split("=", 1)[1] for item in overrides if item.startswith(f"tracking.{key}=")]
    return values[-1] if values else None
