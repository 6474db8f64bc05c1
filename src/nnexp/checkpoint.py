"""Checkpoints: everything training needs to go on exactly where it stopped, in ``.npz`` plus a JSON manifest.

A checkpoint folder holds ``checkpoint-eEEEEE-bBBBBBBB.npz`` (weights, optimizer state, callback arrays, the
partial epoch's predictions) and ``checkpoint.json`` (epoch, batch, RNG state, metric history, callback values,
the run's config and id), which names its ``.npz``. Both are written atomically, the ``.npz`` first, and older
``.npz`` files are removed only after the manifest names the new one: whenever a process dies, the manifest and
the file it names form the last good checkpoint. Nothing is pickled; arrays load with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnexp import __version__
from nnexp.atomic import replacing
from nnexp.core.network import Sequential
from nnexp.core.optimizers import Optimizer
from nnexp.core.training import Callback, TrainingState
from nnexp.errors import DataError

MANIFEST = "checkpoint.json"
FORMAT = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the manifest's values and the arrays of its ``.npz``."""

    path: Path
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    def section(self, prefix: str) -> dict[str, np.ndarray]:
        return {key[len(prefix) :]: value for key, value in self.arrays.items() if key.startswith(prefix)}

    def training_state(self) -> TrainingState:
        progress = self.manifest["progress"]
        return TrainingState(
            epoch=progress["epoch"],
            batch=progress["batch"],
            history=self.manifest["history"],
            rng_state=self.manifest["rng_state"],
            loss_sum=progress["loss_sum"],
            predicted=self.arrays.get("progress/predicted"),
            seconds=progress["seconds"],
        )

    def restore(
        self, network: Sequential, optimizer: Optimizer, rng: np.random.Generator, callbacks: Mapping[str, Callback]
    ) -> TrainingState:
        """Put the network, optimizer, generator and callbacks back where they were; returns the training state."""
        try:
            network.load_state_dict(self.section("network/"))
            optimizer.load_state_dict(self.section("optimizer/"))
            for name, callback in callbacks.items():
                callback.load_state_dict(
                    {**self.manifest["callbacks"].get(name, {}), **self.section(f"callback/{name}/")}
                )
        except (KeyError, ValueError) as exc:
            raise DataError(f"{self.path}: does not fit this run's network or optimizer: {exc}") from None
        rng.bit_generator.state = self.manifest["rng_state"]
        return self.training_state()


def save(
    directory: Path,
    *,
    identity: Mapping[str, Any],
    network: Sequential,
    optimizer: Optimizer,
    rng: np.random.Generator,
    state: TrainingState,
    callbacks: Mapping[str, Callback],
    stopped: bool = False,
) -> Path:
    """Write a checkpoint of this moment into ``directory``; returns the manifest's path.

    ``identity`` names the run: ``run_id``, its resolved ``config`` (YAML), its Hydra ``overrides`` and ``output_dir``.
    ``stopped``: training stopped within an epoch (:class:`Stopped`), possibly before its first batch; otherwise the
    checkpoint is taken between epochs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"network/{key}": value for key, value in network.state_dict().items()}
    arrays.update({f"optimizer/{key}": value for key, value in optimizer.state_dict().items()})
    values: dict[str, dict[str, Any]] = {}
    for name, callback in callbacks.items():
        for key, value in callback.state_dict().items():
            if isinstance(value, np.ndarray):
                arrays[f"callback/{name}/{key}"] = value
            else:
                values.setdefault(name, {})[key] = value
    if state.batch:
        arrays["progress/predicted"] = state.predicted
    weights = f"checkpoint-e{state.epoch:06d}-b{state.batch:08d}.npz"
    with replacing(directory / weights) as file:
        np.savez(file, **arrays)
    manifest = {
        "format": FORMAT,
        "weights": weights,
        **identity,
        "nnexp_version": __version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "progress": {"epoch": state.epoch, "batch": state.batch, "loss_sum": state.loss_sum, "seconds": state.seconds},
        # Stopped within an epoch, the state it began with, so that resuming replays its shuffle: the shuffle is
        # drawn before the first batch, so even a stop before that batch has moved the generator on.
        "rng_state": state.rng_state if stopped else rng.bit_generator.state,
        "history": state.history,
        "callbacks": values,
    }
    with replacing(directory / MANIFEST, "w") as file:
        json.dump(manifest, file, indent=1, allow_nan=True)
    for stale in directory.glob("checkpoint-*.npz"):
        if stale.name != weights:
            stale.unlink(missing_ok=True)
    return directory / MANIFEST


def load(path: Path) -> Checkpoint:
    """The checkpoint in folder ``path`` (or named by its manifest); raises DataError naming what is wrong."""
    manifest_path = path / MANIFEST if path.is_dir() else path
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{manifest_path}: no checkpoint here (expected {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{manifest_path}: not a readable checkpoint manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path}: unknown checkpoint format {manifest.get('format')!r}, expected {FORMAT}")
    weights = manifest_path.parent / manifest["weights"]
    try:
        with np.load(weights, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{weights}: cannot be read: {exc}") from None
    return Checkpoint(manifest_path, manifest, arrays)


class Checkpointer(Callback):
    """Writes a checkpoint every ``every`` epochs and after the last one."""

    def __init__(self, every: int, save: Callable[[], None]) -> None:
        self.every, self.save = every, save
        self.epochs = 1

    def on_train_begin(self, epochs: int, n_samples: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch % self.every == 0 or epoch == self.epochs:
            self.save()
