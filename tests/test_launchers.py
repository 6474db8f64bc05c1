"""The launcher presets in conf/hydra/launcher/, without a cluster: the SLURM preset composes onto Hydra's submitit
SLURM launcher, and a sweep goes through its sbatch script on a fake SLURM (sbatch, srun and sacct stand-ins that
run the array's tasks on this machine)."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

SLURM_LAUNCHER = "hydra_plugins.nnexp_slurm.SlurmLauncher"  # Hydra's submitit SLURM launcher, checkpointing
QUICK = ("trainer.epochs=2", "dataset.n_samples=200")

#: sbatch: keeps a copy of the script, prints a job id, and leaves the tasks to a detached runner, as SLURM
#: returns before its jobs start. The runner waits for each task's pickle (submitit moves it in place only after
#: sbatch answered), then runs the script with the variables SLURM sets, in the directory sbatch was called from.
FAKE_SBATCH = """
import os, re, shutil, subprocess, sys, time
from pathlib import Path

JOB = "4242"
if sys.argv[1:2] != ["--run"]:
    if os.environ.get("FAKE_SLURM_REFUSE"):
        sys.exit("sbatch: error: Batch job submission failed: " + os.environ["FAKE_SLURM_REFUSE"])
    script = Path(os.environ["FAKE_SLURM_DIR"]) / "sbatch.sh"
    shutil.copy(sys.argv[-1], script)
    subprocess.Popen([sys.executable, __file__, "--run", str(script)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {JOB}")
    sys.exit(0)

from submitit.core.utils import JobPaths

text = Path(sys.argv[2]).read_text()
tasks = int(re.search(r"^#SBATCH --array=0-(\\d+)", text, re.M).group(1)) + 1
folder = re.search(r"submitit\\.core\\._submit (\\S+)", text).group(1)
for task in range(tasks):
    pickle = JobPaths(folder, job_id=f"{JOB}_{task}").submitted_pickle
    deadline = time.monotonic() + 120
    while not pickle.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    env = dict(os.environ, SLURM_JOB_ID=str(int(JOB) + 1 + task), SLURM_ARRAY_JOB_ID=JOB,
               SLURM_ARRAY_TASK_ID=str(task), SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_JOB_NODELIST="localhost")
    subprocess.run(["bash", sys.argv[2]], env=env, timeout=300)
"""

#: srun: runs the command with its output in the files named by --output/--error, SLURM's patterns filled in.
FAKE_SRUN = """
import os, subprocess, sys
from pathlib import Path

args, files = sys.argv[1:], {}
while args and args[0].startswith("--"):
    option = args.pop(0)
    if option in ("--output", "--error"):
        files[option] = args.pop(0)
fill = {"%A": os.environ.get("SLURM_ARRAY_JOB_ID", ""), "%a": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
        "%j": os.environ.get("SLURM_JOB_ID", ""), "%t": "0"}
paths = {}
for option, pattern in files.items():
    for key, value in fill.items():
        pattern = pattern.replace(key, value)
    paths[option] = Path(pattern)
    paths[option].parent.mkdir(parents=True, exist_ok=True)
with open(paths["--output"], "a") as out, open(paths["--error"], "a") as err:
    sys.exit(subprocess.run(args, stdout=out, stderr=err).returncode)
"""

#: sacct: knows no job, so submitit waits for each task's result file, as it does on a cluster between polls.
FAKE_SACCT = "print('JobID|State|NodeList')\n"


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """sbatch, srun and sacct stand-ins first on PATH; returns the directory where sbatch keeps the script."""
    bin_dir, kept = tmp_path / "fake_slurm_bin", tmp_path / "fake_slurm"
    bin_dir.mkdir()
    kept.mkdir()
    for name, code in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{textwrap.dedent(code)}")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(kept))
    return kept


def launcher_config(project, *overrides: str) -> dict:
    """The hydra.launcher node the CLI composes, resolved (``--cfg`` cannot be combined with ``-m``)."""
    result = project.run("hydra/launcher=slurm", *overrides, "--cfg", "hydra", "-p", "hydra.launcher", "--resolve")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def sweep_runs(project) -> tuple:
    runs = project.runs()
    [parent] = [run for run in runs if run.data.tags.get("nnexp_command") == "sweep"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, sorted(children, key=lambda run: int(run.data.tags["job_num"]))


def test_slurm_preset_composes_onto_submitits_slurm_launcher(project, monkeypatch):
    monkeypatch.delenv("NNEXP_SLURM_PARTITION", raising=False)
    monkeypatch.delenv("NNEXP_SLURM_ACCOUNT", raising=False)
    launcher = launcher_config(project)
    assert launcher["_target_"] == SLURM_LAUNCHER
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["cpus_per_task"]) == (1, 1, 2)
    assert (launcher["mem_gb"], launcher["timeout_min"], launcher["array_parallelism"]) == (4, 60, 32)
    assert (launcher["signal_delay_s"], launcher["max_num_timeout"]) == (120, 5)  # requeued after time limits
    # Unset, partition and account stay out of the sbatch script and the cluster's defaults apply.
    assert launcher["partition"] is None and launcher["account"] is None
    assert launcher["setup"] == [
        f"export {name}=2" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    ]
    assert not (project.root / "outputs").exists(), "--cfg composes only"


def test_slurm_preset_takes_partition_and_account_from_the_environment_and_threads_from_cpus(project, monkeypatch):
    monkeypatch.setenv("NNEXP_SLURM_PARTITION", "debug")
    monkeypatch.setenv("NNEXP_SLURM_ACCOUNT", "lab")
    launcher = launcher_config(project, "hydra.launcher.cpus_per_task=4", "hydra.launcher.timeout_min=240")
    assert (launcher["partition"], launcher["account"], launcher["timeout_min"]) == ("debug", "lab", 240)
    assert launcher["setup"][1] == "export OPENBLAS_NUM_THREADS=4"


def test_slurm_sweep_runs_through_the_sbatch_script_on_a_fake_cluster(project, fake_slurm, monkeypatch):
    monkeypatch.setenv("NNEXP_SLURM_PARTITION", "debug")
    result = project.run(
        "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "model=two_layer,deep_sigmoid", *QUICK
    )
    assert result.returncode == 0, result.stderr

    script = (fake_slurm / "sbatch.sh").read_text()
    for line in (
        "#SBATCH --array=0-1%2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=4GB",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --partition=debug",
        "#SBATCH --time=60",
        "#SBATCH --job-name=nnexp",
        "export OPENBLAS_NUM_THREADS=1",
    ):
        assert line in script.splitlines(), line
    assert f"{sys.executable} -u -m submitit.core._submit" in script, "the jobs run this venv's Python"

    parent, children = sweep_runs(project)
    assert parent.info.status == "FINISHED" and parent.data.tags["launcher"] == "slurm"
    assert [run.info.status for run in children] == ["FINISHED", "FINISHED"]
    assert [run.data.tags["model"] for run in children] == ["two_layer", "deep_sigmoid"]
    # The setup lines reached the job: one BLAS thread, as cpus_per_task says.
    assert [run.data.tags["blas_threads"] for run in children] == ["1", "1"]
    assert parent.data.metrics["jobs_finished"] == 2


def test_refused_submission_stops_the_sweep_with_slurms_message(project, fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_REFUSE", "Invalid partition name specified")
    result = project.run("-m", "hydra/launcher=slurm", "model=two_layer,deep_sigmoid", *QUICK)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the sweep stopped: FailedJobError: ")
    assert "sbatch: error: Batch job submission failed: Invalid partition name specified" in result.stderr
    assert "Traceback" not in result.stderr
    assert [run for run in project.runs() if run.info.status == "RUNNING"] == []


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None, reason="the ray extra is installed"
)
def test_ray_preset_without_the_extra_says_how_to_install_it(project):
    result = project.run("-m", "hydra/launcher=ray_local", "model=two_layer,deep_sigmoid", *QUICK)
    assert (result.returncode, result.stderr.strip()) == (
        1,
        'error: hydra/launcher=ray needs an optional extra: pip install -e ".[ray]"',
    )
    assert project.runs() == [] and project.job_dirs() == []


class FakeJobEnvironment:
    """submitit's job environment: its SIGUSR2 handler requeues, its SIGTERM handler ignores the signal."""

    def __init__(self) -> None:
        self.requeued: list[int] = []

    def checkpoint_and_try_requeue(self, signum: int, frame: object = None) -> None:
        self.requeued.append(signum)

    def bypass(self, signum: int, frame: object = None) -> None:
        pass


@pytest.fixture
def submitit_handlers():
    import signal

    environment = FakeJobEnvironment()
    previous = signal.signal(signal.SIGTERM, environment.bypass)
    yield environment
    signal.signal(signal.SIGTERM, previous)


def test_slurms_warning_during_training_is_nnexps_graceful_stop(submitit_handlers):
    import signal

    from hydra_plugins.nnexp_slurm import relay_warning

    stops: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stops.append(signum))
    warned: list[int] = []
    relay_warning(submitit_handlers.checkpoint_and_try_requeue, warned)(signal.SIGUSR2, None)
    assert stops == [signal.SIGUSR2] and warned == [signal.SIGUSR2] and submitit_handlers.requeued == []


def test_slurms_warning_before_training_stops_training_once_it_starts(submitit_handlers):
    """Requeued at once, a job without a checkpoint would start over in a second MLflow run."""
    import signal
    import time

    from hydra_plugins.nnexp_slurm import relay_warning

    warned: list[int] = []
    relay_warning(submitit_handlers.checkpoint_and_try_requeue, warned)(signal.SIGUSR2, None)
    time.sleep(0.2)
    stops: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stops.append(signum))  # training starts
    deadline = time.monotonic() + 10
    while not stops and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stops == [signal.SIGUSR2] and warned == [signal.SIGUSR2] and submitit_handlers.requeued == []
