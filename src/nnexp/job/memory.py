"""Memory: what a network will need, checked before it is built, and one line instead of a MemoryError."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nnexp.core.losses import Loss
from nnexp.core.optimizers import Optimizer
from nnexp.core.training import EVALUATION_BATCH
from nnexp.datasets.base import DATASETS, Splits, checked_splits
from nnexp.errors import NnexpError, OutOfMemoryError, PluginError, format_bytes
from nnexp.models.base import MODELS, Footprint, Model
from nnexp.schema import shown

MEMINFO = Path("/proc/meminfo")
SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: cgroup v1 spells "no limit" as a number near 2**63.
UNLIMITED = 2**60
#: What to reduce when a run ran out of memory somewhere its network and batches are the likely cause.
ADVICE = "use a smaller model or trainer.batch_size, or free memory"


def available_bytes() -> int | None:
    """Memory this process can still take: the smaller of the kernel's ``MemAvailable`` and, under a cgroup (v2 or
    v1) memory limit, that limit minus the cgroup's usage; ``None`` where ``/proc/meminfo`` does not exist."""
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return None
    found = [int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")]
    if not found:
        return None
    return min(found + cgroup_headroom())


def cgroup_headroom() -> list[int]:
    """Limit minus usage of every memory cgroup of this process and of their ancestors, where a limit is set."""
    try:
        lines = SELF_CGROUP.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not controllers:
            base, limit_file, usage_file = CGROUP_ROOT, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base, limit_file, usage_file = CGROUP_ROOT / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        leaf = base / path.lstrip("/")
        for directory in (leaf, *leaf.parents):  # a parent's limit binds its children too
            if not directory.is_relative_to(base):
                break
            limit, usage = _read_int(directory / limit_file), _read_int(directory / usage_file)
            if limit is not None and usage is not None and limit < UNLIMITED:
                found.append(max(limit - usage, 0))
    return found


def _read_int(path: Path) -> int | None:
    """The number a cgroup file holds; ``None`` if it is missing or says ``max``."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def buffer_rows(splits: Splits, batch_size: int | None) -> int:
    """The most rows a layer's buffers grow to: a training batch, or a chunk of an evaluation."""
    n_train = len(splits.y_train)
    rows = n_train if batch_size is None else min(batch_size, n_train)
    evaluated = max(len(splits.y_test), 0 if splits.y_val is None else len(splits.y_val))
    if splits.n_features == 2:  # the decision boundary plot predicts a grid of many points
        evaluated = EVALUATION_BATCH
    return max(rows, min(EVALUATION_BATCH, evaluated))


def estimate(
    model: Model, optimizer: Optimizer, loss: Loss, splits: Splits, batch_size: int | None, dtype: type[np.floating]
) -> tuple[str, dict[str, int]] | None:
    """The model's sizing setting and the bytes its network needs by part, in ``dtype``; ``None`` when the model
    does not state its footprint."""
    footprint = checked_footprint(model, model.footprint(splits.n_features, splits.n_classes, loss))
    if footprint is None:
        return None
    itemsize = np.dtype(dtype).itemsize
    parameters = footprint.parameters * itemsize
    parts = {
        "parameters": parameters,
        "gradients": parameters,
        f"{type(optimizer).__name__.lower()} state": optimizer.state_copies() * parameters,
        "batch buffers": buffer_rows(splits, batch_size) * footprint.values_per_row * itemsize,
    }
    return footprint.setting, parts


def checked_footprint(model: Model, footprint: object) -> Footprint | None:
    """``footprint``, what ``model.footprint()`` returned, if it is ``None`` or a :class:`Footprint` of sizes >= 0
    and a setting's name; else a PluginError naming the model's plugin, whose sizes would make the memory check
    fail with a bare traceback, or pass whatever the network needs."""
    if footprint is None:
        return None
    if (
        isinstance(footprint, Footprint)
        and isinstance(footprint.setting, str)
        and all(is_size(size) for size in (footprint.parameters, footprint.values_per_row))
    ):
        return footprint
    raise PluginError(
        f"{MODELS.label(type(model))} footprint() returned {shown(footprint)}; expected None or a Footprint of finite "
        "sizes >= 0 and the name of the setting that sizes the model"
    )


def is_size(value: object) -> bool:
    """Whether ``value`` is a count of values: a finite number >= 0 (a bool is no count)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < math.inf


def check_fits(
    model: Model, optimizer: Optimizer, loss: Loss, splits: Splits, batch_size: int | None, dtype: type[np.floating]
) -> None:
    """Raise :class:`OutOfMemoryError` if the network ``model`` would build for ``splits`` cannot fit in the memory
    available; a model that does not state its footprint, or a system that does not say what it has, passes."""
    estimated = estimate(model, optimizer, loss, splits, batch_size, dtype)
    if estimated is None:
        return
    available = available_bytes()
    setting, parts = estimated
    needed = sum(parts.values())
    if available is None or needed <= available:
        return
    # A smaller batch helps only when training batches, not evaluation chunks, set how many rows buffers hold.
    batches_matter = buffer_rows(splits, batch_size) > buffer_rows(splits, 1)
    advice = "use a smaller trainer.batch_size or smaller layers" if batches_matter else "use smaller layers"
    raise OutOfMemoryError(
        f"model.{setting} needs about {format_bytes(needed)} ({', '.join(parts)}) "
        f"and {format_bytes(available)} is available; {advice}"
    )


#: The rows a dataset with an ``n_samples`` setting is first made with, to measure what a row of it takes.
PROBE_SAMPLES = 1000


def data_estimate(config: Mapping[str, Any], loss: Loss, dtype: type[np.floating]) -> dict[str, int] | None:
    """The bytes, by part, that the dataset ``config`` names takes while it is made ready for training: the arrays it
    makes, the split's copies of them (``train_test_split`` copies every row), and the features and encoded labels
    in ``dtype``; ``None`` for a dataset without an ``n_samples`` setting, or with few.

    Any dataset plugin with ``n_samples`` is measured the same way: made once with :data:`PROBE_SAMPLES` rows and a
    generator of its own (the run's is not drawn from), and scaled. One that refuses so few rows is not checked:
    the real load says what is wrong with its own values.
    """
    n_samples = config.get("n_samples")
    if not isinstance(n_samples, int) or n_samples <= PROBE_SAMPLES:
        return None
    try:
        probe = DATASETS.build({**config, "n_samples": PROBE_SAMPLES})
        splits = checked_splits(probe, probe.load(np.random.default_rng(0)))
    except NnexpError:
        return None
    rows = sum(len(y) for _, _, y in splits.parts())
    made = sum(x.nbytes + y.nbytes for _, x, y in splits.parts())
    itemsize = np.dtype(dtype).itemsize
    encoded = loss.encode(splits.y_train, splits.n_classes, dtype).nbytes // len(splits.y_train)
    generated = made * n_samples // rows
    return {
        "generated arrays": generated,
        "split copies": generated,
        f"{np.dtype(dtype).name} copies": n_samples * (splits.n_features * itemsize + encoded),
    }


def check_data_fits(config: Mapping[str, Any], loss: Loss, dtype: type[np.floating]) -> None:
    """Raise :class:`OutOfMemoryError` if the dataset ``config`` names cannot be made in the memory available,
    before it is: the kernel would kill the process with no word, leaving its run RUNNING."""
    available = available_bytes()
    if available is None:
        return
    parts = data_estimate(config, loss, dtype)
    if parts is None or sum(parts.values()) <= available:
        return
    raise OutOfMemoryError(
        f"dataset.n_samples={config['n_samples']} needs about {format_bytes(sum(parts.values()))} "
        f"({', '.join(parts)}) and {format_bytes(available)} is available; use a smaller dataset.n_samples"
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is NumPy saying an array cannot be allocated: a MemoryError, or a ValueError for a size
    beyond the address space."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, ValueError) and str(exc).startswith(("array is too big", "Maximum allowed dimension"))


def describe(exc: BaseException, doing: str, advice: str) -> str:
    """``out of memory while <doing>: <NumPy's reason>; <advice>``."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"out of memory while {doing}: {reason}; {advice}"


@contextlib.contextmanager
def running_out(doing: str, advice: str) -> Iterator[None]:
    """Turn an allocation failure inside the block into an :class:`OutOfMemoryError` of one line."""
    try:
        yield
    except (MemoryError, ValueError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise OutOfMemoryError(describe(exc, doing, advice)) from None
