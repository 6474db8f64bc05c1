"""``hydra/launcher=slurm``: Hydra's submitit SLURM launcher, with jobs that survive time limits and preemption.

SLURM warns a job ``signal_delay_s`` seconds before its time limit, or when it is preempted, with SIGUSR2, and
submitit answers by calling the launcher's :meth:`SlurmLauncher.checkpoint` and requeueing the job. Here the warning
first stops training at the next batch boundary with a checkpoint, as SIGTERM does, and the requeued job is the same
job with ``resume=<its checkpoint folder>``: it continues the same MLflow run in the same job folder. A job that is
cancelled (``scancel``) ends as a KILLED run with its reason and counts as a failed job of the sweep.

It lives in ``hydra_plugins`` because Hydra instantiates launchers only from there (``conf/hydra/launcher/slurm.yaml``
names it).
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import open_dict
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from nnexp.errors import Interrupted

log = logging.getLogger(__name__)

WARNING = signal.SIGUSR2  # submitit's default (SUBMITIT_PREEMPT_SIGNAL), asked for with sbatch --signal


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """Hydra's SLURM launcher whose jobs checkpoint when warned and resume when requeued."""

    def __call__(
        self, sweep_overrides: Sequence[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: Any
    ) -> JobReturn:
        requeue = signal.getsignal(WARNING)  # submitit's: checkpoint(), scontrol requeue, exit
        warned: list[int] = []
        if callable(requeue):
            signal.signal(WARNING, relay_warning(requeue, warned))
        try:
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        except Interrupted as exc:
            if warned:
                from submitit.core.utils import UncompletedJobError

                log.warning("job %s stopped: %s; requeueing it to resume", job_num, exc)
                try:
                    requeue(WARNING, None)  # exits the process once the job is requeued
                except UncompletedJobError as refused:  # requeued max_num_timeout times already
                    exc = Interrupted(f"{exc}; {refused}", exc.exit_code)
            # A cancelled job is one failed job: the sweep goes on and its summary counts it.
            log.error("error: job %s stopped: %s", job_num, exc)
            return JobReturn(overrides=list(sweep_overrides), status=JobStatus.COMPLETED, _return_value=math.nan)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # submitit's jobs share one watcher, a class attribute; this process launches SLURM jobs only through here.
        if not isinstance(SlurmJob.watcher, QueueWatcher):
            SlurmJob.watcher = QueueWatcher(delay_s=SlurmJob.watcher._delay_s)
        return super().launch(job_overrides, initial_job_idx)

    def checkpoint(
        self, sweep_overrides: Sequence[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: Any
    ) -> Any:
        """The same job again, resuming from its checkpoint if it wrote one; submitit requeues what this returns."""
        from nnexp.job.checkpoint import MANIFEST

        folder = self.job_dir(sweep_overrides, job_num) / "checkpoints"
        overrides = [item for item in sweep_overrides if not item.startswith("resume=")]
        if (folder / MANIFEST).is_file():
            overrides.append(f"resume='{folder.absolute()}'")
        return super().checkpoint(overrides, job_dir_key, job_num, job_id, singleton_state)

    def job_dir(self, sweep_overrides: Sequence[str], job_num: int) -> Path:
        """The job's output folder, composed as Hydra's ``run_job`` composes it."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = job_num
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def relay_warning(requeue: Callable[[int, Any], None], warned: list[int]) -> Callable[[int, Any], None]:
    """The job's SIGUSR2 handler: SLURM's warning becomes nnexp's graceful stop, which ends training at the next
    batch with a checkpoint. A warning outside training waits for training to start and stops it then, so that the
    job's MLflow run has a checkpoint to be resumed from instead of a requeued job starting a second run; a job
    warned after training simply finishes."""

    def warn(signum: int, frame: Any) -> None:
        warned.append(signum)
        stop = training_stop(requeue)
        if stop is not None:
            stop(signum, frame)
            return
        threading.Thread(target=stop_once_training, args=(requeue, signum), name="slurm-warning", daemon=True).start()

    return warn


def training_stop(requeue: Callable[[int, Any], None]) -> Callable[[int, Any], None] | None:
    """nnexp's graceful stop when training is under way: then it, not submitit, handles SIGTERM."""
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop) or getattr(stop, "__self__", None) is getattr(requeue, "__self__", requeue):
        return None
    return stop


def stop_once_training(requeue: Callable[[int, Any], None], signum: int) -> None:
    while (stop := training_stop(requeue)) is None:
        time.sleep(0.05)
    stop(signum, None)


class QueueWatcher(SlurmInfoWatcher):
    """submitit's job watcher, which asks ``sacct``; where accounting is disabled (no slurmdbd) it asks ``squeue``
    too, and a job that has left the queue is done: submitit then reads its result, or says it ended without one
    (killed on its node) instead of waiting for it forever. A job counts as gone once two polls in a row missed it,
    so that one caught between two states (a requeue) is not taken for gone."""

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s)
        self._missed: set[str] = set()

    def update(self) -> None:
        self._output = b""
        super().update()
        waiting = self._registered - self._finished
        if self._output or not waiting:
            return
        try:
            queued = set(subprocess.check_output(["squeue", "--noheader", "--array", "--format=%i"], text=True).split())
        except (OSError, subprocess.CalledProcessError):
            return
        missed = waiting - queued
        for job_id in missed & self._missed:
            self._info_dict[job_id] = {"State": "NOT_IN_QUEUE"}
            self._finished.add(job_id)
        self._missed = missed
