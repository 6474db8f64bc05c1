"""Checkpoints: everything training needs to go on exactly where it stopped, in ``.npz`` plus a JSON manifest.

A checkpoint folder holds ``checkpoint-eEEEEEE-bBBBBBBB.npz`` (weights, optimizer state, callback arrays, the
partial epoch's predictions, the per-epoch metric history) and ``checkpoint.json`` (epoch, batch, RNG state, the
history's metric names, callback values, the run's config and id), which names its ``.npz`` and records its
SHA-256. Both are written atomically, the ``.npz`` first, and older ``.npz`` files are removed only after the
manifest names the new one: whenever a process dies, the manifest and the file it names form the last good
checkpoint. Nothing is pickled; arrays load with ``allow_pickle=False``.

A checkpoint is data, never a command: :func:`load` checks every field of the manifest (types, ranges, the generator
state) and every array header before anything is used, and :meth:`Checkpoint.restore` checks the rest against the
run it continues. The digest ties the ``.npz`` to the manifest: another run's file copied over it is refused, even
when its arrays have the same shapes.

A little over 350 lines, in one module: the format and every check of it change together.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nnexp import __version__
from nnexp.atomic import remove_partials, replacing
from nnexp.core.network import Sequential
from nnexp.core.optimizers import Optimizer, fits
from nnexp.core.training import EPOCH_METRICS, Callback, EarlyStopping, Trainer, TrainingState
from nnexp.errors import DataError
from nnexp.schema import (
    EPOCH_SECONDS_AT_MOST,
    RUN_ID,
    Fields,
    aliased_too_much,
    check_metric,
    check_npz_data,
    check_weights,
    inside,
    load_npz,
    npz_arrays,
    parse_json,
    read_text,
    sha256_of,
)

MANIFEST = "checkpoint.json"
#: Format 2 records the SHA-256 of the ``.npz`` and keeps the metric history in it; format 1, written by earlier
#: versions of nnexp, kept the history in the manifest and no digest, and its checkpoints are still resumed, with
#: the checks of the arrays' shapes alone.
FORMAT = 2
FORMATS = (1, 2)
SHA256 = re.compile(r"[0-9a-f]{64}")
#: The ``.npz`` a manifest names: a bare file name in the manifest's folder, stamped with epoch and batch.
WEIGHTS = re.compile(r"checkpoint-e(\d+)-b(\d+)\.npz")
#: The arrays of a checkpoint's ``.npz`` besides its history, by the prefix of their names.
SECTIONS = ("network/", "optimizer/", "callback/")
PREDICTED = "progress/predicted"
#: The bit generator of ``np.random.default_rng``, which nnexp's runs use.
BIT_GENERATOR = type(np.random.default_rng(0).bit_generator)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the manifest's values and the arrays of its ``.npz``, read once :meth:`restore` has
    checked their headers against the run (``headers``: each array's shape and dtype)."""

    path: Path
    manifest: dict[str, Any]
    loaded: dict[str, np.ndarray] | None = None
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = field(default_factory=dict)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays besides the history (which :func:`load` took out), read on first use."""
        if self.loaded is None:
            self.loaded = load_npz(self.weights, [name for name in self.headers if not name.startswith("history/")])
        return self.loaded

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
        self,
        network: Sequential,
        optimizer: Optimizer,
        rng: np.random.Generator,
        callbacks: Mapping[str, Callback],
        trainer: Trainer,
        n_samples: int,
    ) -> TrainingState:
        """Put the network, optimizer, generator and callbacks back where they were; returns the training state.

        ``trainer`` and ``n_samples`` (the training set's size) say how many batches an epoch has: a checkpoint
        taken within an epoch must lie within it.
        """
        self._check_sizes(network, n_samples)
        batches = math.ceil(n_samples / max(1, trainer.batch_length(n_samples)))
        self._check_progress(batches, n_samples)
        # Besides the step count, the network's weights, the optimizer's state and what callbacks keep (early
        # stopping's best weights) are all arrays of the run's dtype.
        weights = {
            key: value
            for key, value in self.arrays.items()
            if key.startswith(("network/", "optimizer/", "callback/")) and key != "optimizer/iterations"
        }
        check_weights(self.weights, weights, network.dtype, "this run's trainer.dtype", "checkpoint")
        self._check_optimizer(network, optimizer, batches)
        try:
            network.load_state_dict(self.section("network/"))
            optimizer.load_state_dict(self.section("optimizer/"))
            for name, callback in callbacks.items():
                callback.load_state_dict(
                    {**self.manifest["callbacks"].get(name, {}), **self.section(f"callback/{name}/")}
                )
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{self.weights}: does not fit this run's network or optimizer: {exc}") from None
        stopping = callbacks.get("early_stopping")
        if isinstance(stopping, EarlyStopping):
            check_best(Fields(self.path), stopping, self.manifest["history"])
        rng.bit_generator.state = self.manifest["rng_state"]  # checked by load()
        return self.training_state()

    @property
    def weights(self) -> Path:
        return self.path.parent / self.manifest["weights"]

    def resuming(self, epochs: int, cwd: Path) -> str:
        """The line a resumed run starts with: where in its ``epochs`` training picks up, and from which file (relative
        to ``cwd`` when inside it), in the words the interruption used."""
        progress = self.manifest["progress"]
        epoch, batch = progress["epoch"] + 1, progress["batch"]
        if epoch > epochs:
            where = f"after its last epoch ({epochs}), to evaluate and log it"
        elif batch:
            where = f"in epoch {epoch} of {epochs}, after {batch} of its batches"
        else:
            where = f"at the start of epoch {epoch} of {epochs}"
        path = self.path.resolve()
        shown = path.relative_to(cwd.resolve()) if path.is_relative_to(cwd.resolve()) else path
        return f"resuming run {self.run_id} {where} ({shown})"

    def _check_sizes(self, network: Sequential, n_samples: int) -> None:
        """No array may be larger than this run's largest parameter (its predictions: its training set), by its
        header, before any is read: a crafted ``.npz`` would have each decompressed whole."""
        largest = max((params.nbytes for _, params, _ in network.packed_parameters()), default=0)
        for name, (shape, dtype) in self.headers.items():
            size = math.prod(shape) * dtype.itemsize
            limit = n_samples * np.dtype(np.int64).itemsize if name == PREDICTED else largest
            if not name.startswith("history/") and size > limit:
                raise DataError(
                    f"{self.weights}: array {name} declares {shape} {dtype} ({size} bytes), more than this run "
                    f"keeps in any one array ({limit} bytes)"
                )

    def _check_progress(self, batches: int, n_samples: int) -> None:
        """The batch within an epoch of ``batches`` must be one, with the labels predicted up to it."""
        batch = self.manifest["progress"]["batch"]
        Fields(self.path).check(
            batch < batches, "progress.batch", f"below {batches}, the batches of one epoch of this run", batch
        )
        predicted = self.arrays.get("progress/predicted")
        if batch and (predicted is None or predicted.shape != (n_samples,) or predicted.dtype.kind not in "iu"):
            found = "none" if predicted is None else f"{predicted.shape} {predicted.dtype}"
            raise DataError(
                f"{self.weights}: progress/predicted must be {n_samples} integer labels within an epoch, found {found}"
            )

    def _check_steps(self, iterations: int, batches: int) -> None:
        """``iterations``, the kept step count, must be one step a batch: every epoch's ``batches``, then the
        batches trained of the epoch the checkpoint stopped in."""
        epoch, batch = self.manifest["progress"]["epoch"], self.manifest["progress"]["batch"]
        steps = epoch * batches + batch
        if iterations != steps:
            within = f" + {batch} into epoch {epoch + 1}" if batch else ""
            raise DataError(
                f"{self.weights}: optimizer/iterations must be {steps} ({epoch} x {batches} batches for the epochs "
                f"done{within}; one step a batch), found {iterations}"
            )

    def _check_optimizer(self, network: Sequential, optimizer: Optimizer, batches: int) -> None:
        """The kept optimizer state must be the optimizer's whole state for these parameters: a missing or misfit
        array would be silently replaced by zeros, and a negative running average of squared gradients would make
        the next step's square root NaN. Its step count must be the batches trained (epochs of ``batches``):
        Adam's bias correction and a schedule follow it."""
        packed = {kind: params for kind, params, _ in network.packed_parameters()}
        kept = self.section("optimizer/")
        for key, array in kept.items():
            slot, _, kind = key.partition("/")
            if key == "iterations":
                valid = array.shape == () and array.dtype.kind in "iu"
                if valid:
                    self._check_steps(int(array), batches)
            else:
                valid = slot in optimizer.state_slots and kind in packed and fits(array, packed[kind])
            if not valid:
                raise DataError(
                    f"{self.weights}: optimizer/{key} ({array.shape} {array.dtype}) does not fit this run's optimizer"
                )
            if slot in optimizer.nonnegative_slots and (array < 0).any():
                raise DataError(
                    f"{self.weights}: optimizer/{key} holds negative values, which a running average of squared "
                    f"gradients never does"
                )
        state = [f"{slot}/{kind}" for slot in optimizer.state_slots for kind in packed]
        missing = [key for key in ["iterations", *state] if key not in kept]
        # Before the first step no state exists yet; after it, every slot of every parameter does.
        if missing and not (missing == state and int(kept.get("iterations", 0)) == 0):
            raise DataError(
                f"{self.weights}: optimizer/{missing[0]} is missing; this run's {type(optimizer).__name__} optimizer "
                f"keeps {', '.join(state) or 'only its step count'} after its first step"
            )


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
    remove_partials(directory)  # left by a process killed while writing: one run writes here, and it is not
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
    # In the .npz, not the manifest: as JSON, a 10,000-epoch history took longer to write than the epochs to train.
    arrays.update({f"history/{name}": np.asarray(values, np.float64) for name, values in state.history.items()})
    weights = f"checkpoint-e{state.epoch:06d}-b{state.batch:08d}.npz"
    with replacing(directory / weights) as file:
        np.savez(file, **arrays)
    manifest = {
        "format": FORMAT,
        "weights": weights,
        "weights_sha256": sha256_of(directory / weights),
        **identity,
        "nnexp_version": __version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "progress": {"epoch": state.epoch, "batch": state.batch, "loss_sum": state.loss_sum, "seconds": state.seconds},
        # Stopped within an epoch, the state it began with, so that resuming replays its shuffle: the shuffle is
        # drawn before the first batch, so even a stop before that batch has moved the generator on.
        "rng_state": state.rng_state if stopped else rng.bit_generator.state,
        "history": sorted(state.history),  # the metrics' names; their values are the .npz's history/<name>
        "callbacks": values,
    }
    with replacing(directory / MANIFEST, "w") as file:
        json.dump(manifest, file, indent=1, allow_nan=True)
    for stale in directory.glob("checkpoint-*.npz"):
        if stale.name != weights:
            stale.unlink(missing_ok=True)
    return directory / MANIFEST


def files(directory: Path) -> list[Path]:
    """The files of the checkpoint in ``directory``: its manifest and the ``.npz`` it names, nothing else."""
    manifest = directory / MANIFEST
    return [manifest, directory / json.loads(read_text(manifest))["weights"]]


def load(path: Path) -> Checkpoint:
    """The checkpoint in folder ``path`` (or named by its manifest), every field and array header checked; raises
    DataError naming the file and what is wrong."""
    manifest_path = path / MANIFEST if path.is_dir() else path
    try:
        manifest = parse_json(read_text(manifest_path))
    except FileNotFoundError:
        raise DataError(f"{manifest_path}: no checkpoint here (expected {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{manifest_path}: not a readable checkpoint manifest: {exc}") from None
    check_manifest(manifest, manifest_path)
    weights = manifest_path.parent / manifest["weights"]
    if not inside(weights, manifest_path.parent):
        raise DataError(f"{manifest_path}: weights {manifest['weights']!r} leads out of its folder")
    headers = npz_arrays(weights)
    check_members(headers, manifest, weights)
    check_npz_data(weights)  # a damaged file is told from another one copied over it
    if "weights_sha256" in manifest and sha256_of(weights) != manifest["weights_sha256"]:
        raise DataError(
            f"{weights}: was not written by run {manifest['run_id']}'s checkpoint (its SHA-256 differs from the one "
            f"{manifest_path.name} records); another file was copied over it"
        )
    if manifest["format"] >= 2:
        manifest["history"] = history_of(headers, manifest["history"], manifest["progress"]["epoch"], weights)
        check_history(Fields(weights), manifest["history"], "history/{}")
    else:
        check_history(Fields(manifest_path), manifest["history"], "history.{}")
    return Checkpoint(manifest_path, manifest, headers=headers)


def check_members(
    headers: Mapping[str, tuple[tuple[int, ...], np.dtype]], manifest: dict[str, Any], weights: Path
) -> None:
    """Every array of the ``.npz`` must be one a checkpoint holds, by its name: an unknown one is refused before
    anything is read. (Their sizes are checked against the run by :meth:`Checkpoint.restore`.)"""
    for name in headers:
        known = name.startswith(SECTIONS) or (name == PREDICTED and manifest["progress"]["batch"] > 0)
        if not known and not (manifest["format"] >= 2 and name.startswith("history/")):
            raise DataError(
                f"{weights}: array {name!r} is none of a checkpoint's ({', '.join(SECTIONS)}, history/, {PREDICTED} "
                "within an epoch)"
            )


def check_history(fields: Fields, history: Mapping[str, list[float]], name: str) -> None:
    """Every value of the per-epoch ``history`` must be finite and within its metric's range: resumed, it is logged
    to MLflow as the run's record and read by early stopping. ``name`` formats a metric's name as its field."""
    for metric, values in history.items():
        for epoch, value in enumerate(values, 1):
            check_metric(fields, metric, value, f"{name.format(metric)}[epoch {epoch}]")


def history_of(
    headers: Mapping[str, tuple[tuple[int, ...], np.dtype]], names: list[str], epoch: int, weights: Path
) -> dict[str, list[float]]:
    """The per-epoch metrics ``names`` of a format 2 checkpoint, read from its ``.npz`` once their ``headers`` say
    each is one float64 vector of ``epoch`` values, and there is no other ``history/`` array."""
    found = {key.removeprefix("history/") for key in headers if key.startswith("history/")}
    if found != set(names):
        raise DataError(f"{weights}: history arrays {sorted(found)} do not match the manifest's {sorted(names)}")
    for name in names:
        shape, dtype = headers[f"history/{name}"]
        if dtype != np.float64 or shape != (epoch,):
            raise DataError(
                f"{weights}: history/{name} must be {epoch} float64 values, one per epoch, found {shape} {dtype}"
            )
    arrays = load_npz(weights, [f"history/{name}" for name in names])
    return {name: arrays[f"history/{name}"].tolist() for name in names}


def check_manifest(manifest: object, path: Path) -> None:
    """Check every field of a checkpoint manifest read from ``path``; raises DataError naming the first bad one."""
    fields = Fields(path)
    manifest = fields.mapping(manifest, "the manifest")
    version = fields.get(manifest, "format")
    fields.check(type(version) is int and version in FORMATS, "format", " or ".join(map(str, FORMATS)), version)
    weights = fields.string(
        fields.get(manifest, "weights"), "weights", WEIGHTS, "a file name checkpoint-eEPOCH-bBATCH.npz"
    )
    if version >= 2 or "weights_sha256" in manifest:
        fields.string(fields.get(manifest, "weights_sha256"), "weights_sha256", SHA256, "a SHA-256 (64 hex digits)")
    fields.string(fields.get(manifest, "run_id"), "run_id", RUN_ID, "an MLflow run id (32 hex digits)")
    fields.strings(fields.get(manifest, "overrides"), "overrides")
    output_dir = fields.string(fields.get(manifest, "output_dir"), "output_dir")
    fields.check(Path(output_dir).is_absolute(), "output_dir", "an absolute path", output_dir)
    epochs = configured_epochs(fields, fields.get(manifest, "config"))
    progress = fields.mapping(fields.get(manifest, "progress"), "progress")
    epoch = fields.integer(fields.get(progress, "progress.epoch"), "progress.epoch", 0, epochs)
    # An epoch's checkpoint is taken between epochs, so the last epoch's has no batch of a next one.
    batch = fields.integer(fields.get(progress, "progress.batch"), "progress.batch", 0, 0 if epoch == epochs else None)
    fields.number(fields.get(progress, "progress.loss_sum"), "progress.loss_sum", 0.0)
    fields.number(fields.get(progress, "progress.seconds"), "progress.seconds", 0.0, high=EPOCH_SECONDS_AT_MOST)
    stamp = tuple(int(part) for part in WEIGHTS.fullmatch(weights).groups())  # type: ignore[union-attr]
    fields.check(stamp == (epoch, batch), "weights", f"the file of epoch {epoch}, batch {batch}", weights)
    if version >= 2:
        names = fields.strings(fields.get(manifest, "history"), "history")
    else:  # format 1 kept the values in the manifest
        history = fields.mapping(fields.get(manifest, "history"), "history")
        for name, values in history.items():
            valid = isinstance(values, list) and all(
                isinstance(value, int | float) and not isinstance(value, bool) for value in values
            )
            fields.check(valid and len(values) == epoch, f"history.{name}", f"{epoch} numbers, one per epoch", values)
        names = list(history)
    for name in names:
        fields.check(name in EPOCH_METRICS, "history", f"metrics of {', '.join(EPOCH_METRICS)}", name)
    if epoch:
        fields.check("train_loss" in names, "history", "metrics holding train_loss", names)
    check_generator_state(fields, fields.get(manifest, "rng_state"))
    callbacks = fields.mapping(fields.get(manifest, "callbacks"), "callbacks")
    for name, values in callbacks.items():
        fields.mapping(values, f"callbacks.{name}")
    if "early_stopping" in callbacks:
        check_early_stopping(fields, callbacks["early_stopping"], epoch)


def check_early_stopping(fields: Fields, state: dict[str, Any], epoch: int) -> None:
    """Early stopping's kept values after ``epoch`` epochs: its best epoch and the epochs waited since lie within
    them, and its best value is the best epoch's (finite), or infinity before any epoch was best."""
    field = "callbacks.early_stopping"
    best_epoch = fields.integer(fields.get(state, f"{field}.best_epoch"), f"{field}.best_epoch", 0, epoch)
    fields.integer(fields.get(state, f"{field}.wait"), f"{field}.wait", 0, epoch)
    best = fields.get(state, f"{field}.best")
    if best_epoch:
        fields.number(best, f"{field}.best")
    else:
        fields.check(best in (math.inf, -math.inf), f"{field}.best", "infinity, as no epoch was best yet", best)


def check_best(fields: Fields, stopping: EarlyStopping, history: Mapping[str, list[float]]) -> None:
    """Early stopping's restored best value must be its monitor's value at its best epoch in the checkpoint's
    ``history``, or, before any epoch was best, where it starts for its direction: the run logs it as its
    ``best_<monitor>``, and any other value would decide the epochs to come."""
    field, monitor, best_epoch = "callbacks.early_stopping.best", stopping.monitor, stopping.best_epoch
    if not best_epoch:
        start = -math.inf if stopping.maximize else math.inf
        fields.check(stopping.best == start, field, f"{start}, as no epoch was best yet", stopping.best)
        return
    values = history.get(monitor, [])
    if len(values) < best_epoch:
        fields.fail(field, f"{monitor}'s value at best_epoch {best_epoch}, but the history holds none", stopping.best)
    expected = values[best_epoch - 1]
    # Both are the same float64 written twice (manifest and history), so only a rewritten one differs.
    fields.check(
        math.isclose(stopping.best, expected, rel_tol=1e-9),
        field,
        f"{expected!r}, history {monitor}[epoch {best_epoch}] (its best_epoch)",
        stopping.best,
    )


def configured_epochs(fields: Fields, config: object) -> int:
    """``trainer.epochs`` of the run's resolved config (YAML) a manifest holds."""
    text = fields.string(config, "config")
    problem = aliased_too_much(text)
    if problem is not None:  # a resolved config holds no alias at all: nnexp writes it out
        raise DataError(f"{fields.source}: config, {problem}, which no run's config does")
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        fields.fail("config", "the run's config as YAML", config)
    trainer = fields.mapping(parsed, "config").get("trainer")
    epochs = fields.mapping(trainer, "config's trainer").get("epochs")
    return fields.integer(epochs, "config's trainer.epochs", 1)


def check_generator_state(fields: Fields, state: object) -> None:
    """``rng_state`` must be a state of the bit generator nnexp's runs use, checked before it is ever assigned."""
    name, limit = BIT_GENERATOR.__name__, 2**128 - 1
    state = fields.mapping(state, "rng_state")
    fields.check(state.get("bit_generator") == name, "rng_state.bit_generator", repr(name), state.get("bit_generator"))
    inner = fields.mapping(fields.get(state, "rng_state.state"), "rng_state.state")
    fields.check(set(inner) == {"state", "inc"}, "rng_state.state", "an object of state and inc", inner)
    fields.integer(inner["state"], "rng_state.state.state", 0, limit)
    inc = fields.integer(inner["inc"], "rng_state.state.inc", 0, limit)
    fields.check(inc % 2 == 1, "rng_state.state.inc", f"odd, as every {name} increment is", inc)
    fields.integer(fields.get(state, "rng_state.has_uint32"), "rng_state.has_uint32", 0, 1)
    fields.integer(fields.get(state, "rng_state.uinteger"), "rng_state.uinteger", 0, 2**32 - 1)
    try:
        BIT_GENERATOR().state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        fields.fail("rng_state", f"a {name} state", f"{type(exc).__name__}: {exc}")


class Checkpointer(Callback):
    """Writes a checkpoint after the last epoch trained and, before it, every ``every`` epochs or, without
    ``every``, at the first epoch end ``seconds`` after the previous checkpoint: by time, a run of many short epochs
    spends its time training rather than writing checkpoints."""

    def __init__(self, save: Callable[[], object], every: int | None = None, seconds: float = 30.0) -> None:
        self.save, self.every, self.seconds = save, every, seconds
        self.epochs, self.saved_epoch = 1, 0
        self.last = time.monotonic()

    def on_train_begin(self, epochs: int, n_samples: int) -> None:
        self.epochs = epochs
        self.last = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        due = epoch % self.every == 0 if self.every else time.monotonic() - self.last >= self.seconds
        if due or epoch == self.epochs:
            self._save(epoch)

    def on_train_end(self, history: dict[str, list[float]]) -> None:
        trained = len(history.get("train_loss", []))
        if trained and trained != self.saved_epoch:  # early stopping ended the run before its last epoch
            self._save(trained)

    def _save(self, epoch: int) -> None:
        self.save()
        self.saved_epoch, self.last = epoch, time.monotonic()
