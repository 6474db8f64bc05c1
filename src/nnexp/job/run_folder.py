"""A Hydra callback that takes a run's folder before Hydra writes into it: it is noted, so that a run failing before
it wrote anything of its own (a full disk, a bad value) leaves no folder behind, and locked, so that no other process
writes into it, and a folder that holds another run is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nnexp.folders import check_hydra_paths, job_folders, release_folder, use_run_folder
from nnexp.job.hooks import NnexpCallback
from nnexp.presets import check_command_line_options
from nnexp.tracking.leftovers import discard_leftover_folders


class RunFolderCallback(NnexpCallback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_command_line_options(config)
        check_hydra_paths(config)
        # Hydra runs the job from the project's folder
        discard_leftover_folders(Path.cwd(), OmegaConf.select(config, "tracking.uri", default=None))
        try:
            folder = OmegaConf.select(config, "hydra.run.dir")
        except Exception:  # Hydra resolves it again to create the folder, and reports the error then
            return
        if folder is not None:  # '' too: Hydra then writes into the folder nnexp runs from, which is refused
            use_run_folder(Path(folder), resuming=bool(OmegaConf.select(config, "resume")))
            job_folders.append(Path(folder))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:  # a sweep job claimed its folder (nnexp.folders.claim_job_folder)
            release_folder(Path(config.hydra.runtime.output_dir))
