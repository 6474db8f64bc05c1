"""Element-wise work spread over the cores.

NumPy's ufuncs release the GIL, so threads running them on disjoint slices of large arrays work in parallel; an
optimizer's update over a few hundred thousand parameters is a dozen such passes per batch and, done on one core,
costs a quarter of a 784-512-10 MLP's epoch.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from nnexp.core import Array

#: Below this many elements, handing part of the work to another thread costs more than it saves.
MIN_PARALLEL_SIZE = 1 << 18

#: Variables that a launcher (joblib's loky, SLURM scripts) or a user sets to share the cores between processes.
THREAD_LIMIT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@functools.cache
def worker_count() -> int:
    """The cores this process may use, lowered by any thread-limit variable set when it started."""
    limits = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1]
    for variable in THREAD_LIMIT_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) >= 1:
            limits.append(int(value))
    return min(limits)


@functools.cache
def _pool(helpers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(helpers, thread_name_prefix="nnexp-elementwise")


def elementwise(function: Callable[..., None], arrays: Sequence[Array]) -> None:
    """Call ``function(*arrays)``; for large arrays, on aligned slices of them in parallel threads.

    ``function`` must work element by element on equally shaped arrays, so the split cannot change its result.
    """
    size = arrays[0].size
    if size < MIN_PARALLEL_SIZE or (workers := worker_count()) < 2 or not all(a.flags.c_contiguous for a in arrays):
        function(*arrays)
        return
    flat = [array.reshape(-1) for array in arrays]
    bounds = [size * part // workers for part in range(workers + 1)]
    chunks = [[array[start:stop] for array in flat] for start, stop in itertools.pairwise(bounds)]
    pending = [_pool(workers - 1).submit(function, *chunk) for chunk in chunks[1:]]
    function(*chunks[0])
    for future in pending:
        future.result()
