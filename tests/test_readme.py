"""The README's examples are code too: its notebook snippet and its shell commands must run as written."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from test_check import WRONG_AND_RIGHT

from nnexp.__main__ import COMMANDS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_notebook_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [snippet] = [block for block in blocks if "Trainer(" in block]
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 0.8 < float(result.stdout.strip()) <= 1.0


def test_ci_runs_the_readme_test_command():
    text = README.read_text()
    command = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```", text, flags=re.S)
    assert command is not None and "pytest" in command.group(1)


# --- Every shell command of the README, run as written ------------------------------------------------------------
#
# The README's commands are its ```bash, ```sh and ```console blocks (a console block's commands are its "$ " lines,
# each followed by the output it shows). Each command meets the first rule of RULES whose pattern matches it (with
# its shown output, for a transcript); a command no rule matches fails the test, so that a new command is run or
# skipped on purpose. What the rules do:
#
# - SKIP: not run here, for the reason given, which names the test that covers it instead.
# - RUN: run as written; nnexp's sub-commands (compare, runs, check, predict) in this process through the table the
#   `nnexp` script dispatches on (nnexp.__main__.COMMANDS), which spares a second or more of imports each, and
#   `python -m nnexp` in a subprocess. A transcript's shown output must come out, numbers and "…" standing for any
#   value, and the exit status is non-zero exactly when it shows an `error:` line.
# - TRAIN and SWEEP: the first single run and the first sweep are run with `trainer.epochs=2` (replacing any
#   epochs the command sets), so that they take seconds; every later one is composed only (`--cfg job`; a sweep
#   composes its first job: without -m and with each comma list cut to its first value).
#
# Placeholders are filled in: `nnexp` is `python -m nnexp` (the README says they are the same program), RUN_ID after
# --sweep is the sweep run above's parent and elsewhere the first single run, outputs/DATE/TIME is that run's folder,
# points.csv holds two rows of its two features, and the plugins/mine.py of the `nnexp check` transcript is
# tests/test_check.py's.

SKIP, RUN, TRAIN, SWEEP = "skip", "run", "train", "sweep"
RULES: tuple[tuple[str, str, str], ...] = (
    (r"pip install|apt-get install", SKIP, "installs packages: the tests run where nnexp is installed (.ci/run)"),
    (r"^(nnexp|mlflow) (ui|server)\b", SKIP, "a server that runs until Ctrl-C (tests/test_ui.py, tests/cluster)"),
    (r"^nnexp data\b", SKIP, "downloads MNIST (tests/test_download.py serves it locally)"),
    (r"mnist|t10k-|digit\.png", SKIP, "needs the real MNIST files (tests/test_mnist_presets.py, with MNIST_DIR)"),
    (r"^nnexp reproduce\b", SKIP, "trains every tutorial preset for minutes (tests/test_reproduce.py)"),
    (
        r"MLFLOW_TRACKING_URI|tracking\.uri=http|runuser|slurm|squeue|SLURM_CONF",
        SKIP,
        "needs a tracking server, PostgreSQL or SLURM (tests/test_tracking_server.py, tests/cluster)",
    ),
    (r"hydra/launcher=", SKIP, "a launcher's sweep (tests/test_launchers.py, tests/test_ray_launcher.py)"),
    (r"\n\^C|resume=", SKIP, "a run stopped with Ctrl-C and resumed (tests/test_resume.py)"),
    (r"^python -m nnexp .*(--help|--cfg)", RUN, "prints, trains nothing"),
    (r"^python -m nnexp .*\nerror: ", RUN, "a mistake's transcript: it stops before anything runs"),
    (r"^python -m nnexp -m ", SWEEP, "a sweep"),
    (r"^python -m nnexp\b", TRAIN, "a single run"),
    (r"^nnexp (compare|runs|check|predict)\b", RUN, "reads the store or checks plugins: quick"),
)
SHELLS = ("bash", "sh", "console")
EPOCHS = "trainer.epochs=2"
#: A shown output's numbers and elisions, which differ from run to run.
VARYING = re.compile(r"…|-?\d+(\.\d+)?(e[+-]?\d+)?")


@dataclass
class Command:
    """One README command: its line in README.md, its words as the shell splits them, the output it shows."""

    line: int
    text: str
    shown: list[str]

    @property
    def arguments(self) -> list[str]:
        """What the command passes to nnexp (``nnexp`` and ``python -m nnexp`` being the same program)."""
        words = shlex.split(self.text, comments=True)
        return words[1:] if words[0] == "nnexp" else words[3:]

    def rule(self) -> tuple[str, str, str]:
        text = "\n".join([" ".join(shlex.split(self.text, comments=True)), *self.shown])
        for rule in RULES:
            if re.search(rule[0], text, flags=re.M):
                return rule
        raise AssertionError(f"README.md:{self.line}: no rule in tests/test_readme.py says how to run {self.text!r}")


def blocks() -> Iterator[tuple[str, int, list[str]]]:
    """Every fenced block of the README: its language ("" for none), the line number of its first line, its lines."""
    language: str | None = None
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        fence = re.fullmatch(r" *```(\w*)", line)
        if fence and language is None:
            language, first, lines = fence.group(1), number + 1, []
        elif fence:
            yield language, first, lines
            language = None
        elif language is not None:
            lines.append(line)


def readme_commands() -> list[Command]:
    """The commands of the README's shell blocks, in order."""
    commands = []
    for language, first, lines in blocks():
        if language not in SHELLS:
            continue
        console, index = language == "console", 0
        while index < len(lines):
            line, number = lines[index].strip(), first + index
            index += 1
            if not line or (console and not line.startswith("$ ")):
                continue
            line = line.removeprefix("$ ")
            while line.endswith("\\"):
                line = line[:-1] + lines[index].strip()
                index += 1
            shown = []
            while console and index < len(lines) and not lines[index].startswith("$ "):
                shown.append(lines[index])
                index += 1
            commands.append(Command(number, line, shown))
    return commands


def masked(lines: list[str]) -> list[str]:
    return [VARYING.sub("#", line.strip()) for line in lines if line.strip()]


def test_every_readme_command_meets_a_rule_and_every_rule_a_command():
    commands = readme_commands()
    assert len(commands) > 30, "the README's command blocks are fenced ```bash or ```console"
    used = {command.rule() for command in commands}
    assert [rule for rule in RULES if rule not in used] == []


def test_no_untagged_block_holds_a_command():
    """An untagged block is output or a layout: a command there would escape the test below."""
    starts = ("$ ", "python", "nnexp ", "mlflow ", "pip ", "export ")
    found = [
        f"README.md:{first + index}"
        for language, first, lines in blocks()
        if language in ("", "text")
        for index, line in enumerate(lines)
        if line.lstrip().startswith(starts)
    ]
    assert found == []


class Readme:
    """Runs the README's commands one after another in a scratch project, remembering what later ones refer to."""

    def __init__(self, project, capsys, monkeypatch) -> None:
        self.project, self.capsys = project, capsys
        self.first_run: str | None = None
        self.sweeps = 0
        monkeypatch.chdir(project.root)
        for variable in [name for name in os.environ if name.startswith(("MLFLOW_", "HYDRA_"))]:
            monkeypatch.delenv(variable)
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")

    def run(self, command: Command) -> None:
        _, action, _ = command.rule()
        if action == SKIP:
            return
        words = self.filled(command.arguments)
        where = f"README.md:{command.line}: {command.text}"
        if action in (TRAIN, SWEEP):
            trained = self.first_run is None if action == TRAIN else self.sweeps == 0
            words = self.shrunk(words) if trained else self.composed(words)
            if action == SWEEP and trained:
                self.sweeps += 1
        if words[:1] and words[0] in COMMANDS:
            status, output = self.in_process(words[0], words[1:])
        else:
            result = self.project.run(*words, timeout=120)
            status, output = result.returncode, result.stdout + result.stderr
        assert (status != 0) == any(line.startswith("error:") for line in command.shown), f"{where}\n{output}"
        missing = [line for line in masked(command.shown) if line not in masked(output.splitlines())]
        assert missing == [], f"{where}: the README shows lines that did not come out\n{output}"
        if action == TRAIN and self.first_run is None and "--cfg" not in words:
            self.first_run = re.search(r"\brun ([0-9a-f]{32});", output).group(1)

    def in_process(self, name: str, argv: list[str]) -> tuple[int, str]:
        self.capsys.readouterr()
        status = importlib.import_module(COMMANDS[name]).main(argv)
        captured = self.capsys.readouterr()
        return status, captured.out + captured.err

    def filled(self, words: list[str]) -> list[str]:
        """``words`` with the README's placeholders replaced by what the commands before made."""
        filled = []
        for previous, word in zip(["", *words], words, strict=False):
            if "RUN_ID" in word:
                word = word.replace("RUN_ID", self.sweep_parent() if previous == "--sweep" else self.first_run)
            if re.match(r"model=outputs/[\d-]+/[\d-]+/model$", word):
                word = f"model={self.run_folder(self.first_run) / 'model'}"
            if word == "input=points.csv":
                (self.project.root / "points.csv").write_text("0.5,0.25\n-1.0,0.75\n")
            if word == "check":
                (self.project.root / "plugins" / "mine.py").write_text(WRONG_AND_RIGHT)
            filled.append(word)
        return filled

    @staticmethod
    def shrunk(words: list[str]) -> list[str]:
        return [word for word in words if not word.startswith("trainer.epochs=")] + [EPOCHS]

    @staticmethod
    def composed(words: list[str]) -> list[str]:
        """The command's config (its first job's, for a sweep), printed instead of run."""
        first = [re.sub(r"^([\w./]+=[^,\[\]{}()'\"]+),.*$", r"\1", word) for word in words if word != "-m"]
        return [*first, "--cfg", "job"]

    def sweep_parent(self) -> str:
        return next(run.info.run_id for run in self.project.runs() if "sweep_overrides" in run.data.tags)

    def run_folder(self, run_id: str) -> Path:
        run = next(run for run in self.project.runs() if run.info.run_id == run_id)
        return self.project.root / run.data.tags["output_dir"]


def test_every_readme_command_runs_as_written(project, capsys, monkeypatch, restore_registries):
    readme = Readme(project, capsys, monkeypatch)
    for command in readme_commands():
        readme.run(command)
    assert readme.first_run is not None and readme.sweeps == 1
