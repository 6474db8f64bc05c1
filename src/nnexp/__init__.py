"""nnexp: experiments with hand-written NumPy neural networks, configured by Hydra and tracked by MLflow."""

import os
import sys


def _started_as_command() -> bool:
    """Whether this process is ``python -m nnexp`` or the ``nnexp`` script, not a program that imports nnexp."""
    if sys.argv[0] == "-m":  # ``python -m``, while Python imports this package to find its ``__main__``
        return sys.orig_argv[-len(sys.argv)] == __name__
    return os.path.basename(sys.argv[0]) == __name__


# Importing all this takes half a second or more; a Ctrl-C meanwhile ends the command as it does later: one line.
try:
    from importlib.metadata import PackageNotFoundError, version

    import nnexp.blas_threads  # noqa: F401 - before NumPy loads OpenBLAS, which reads what it sets
    from nnexp.core.activations import ACTIVATIONS, Activation
    from nnexp.core.initializers import INITIALIZERS, Initializer
    from nnexp.core.layers import Bias, Dense, Layer
    from nnexp.core.losses import LOSSES, Loss
    from nnexp.core.network import Sequential
    from nnexp.core.optimizers import OPTIMIZERS, Optimizer
    from nnexp.core.schedules import SCHEDULES, Schedule
    from nnexp.core.training import Callback, Examples, Trainer
    from nnexp.datasets.base import DATASETS, Dataset, Splits, check_random_state, holdout_splits
    from nnexp.errors import ConfigError, DataError, NnexpError, ParameterError, PluginError, require
    from nnexp.folders import register_resolver
    from nnexp.models.base import MODELS, Model
    from nnexp.plugins import load_builtins
    from nnexp.registry import Registry

    # Here, not in the CLI: a launcher's worker process resolves its job folder before it runs any nnexp code, and it
    # imports this package when it unpickles the job.
    register_resolver()
    load_builtins()  # so that ``import nnexp`` alone offers every built-in dataset and model, as in a notebook

    try:
        __version__ = version("nnexp")
    except PackageNotFoundError:  # running from a source tree that was not installed
        __version__ = "0+unknown"
except KeyboardInterrupt:
    if not _started_as_command():
        raise
    print("error: interrupted (SIGINT)", file=sys.stderr)
    sys.exit(130)

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "INITIALIZERS",
    "LOSSES",
    "MODELS",
    "OPTIMIZERS",
    "SCHEDULES",
    "Activation",
    "Bias",
    "Callback",
    "ConfigError",
    "DataError",
    "Dataset",
    "Dense",
    "Examples",
    "Initializer",
    "Layer",
    "Loss",
    "Model",
    "NnexpError",
    "Optimizer",
    "ParameterError",
    "PluginError",
    "Registry",
    "Schedule",
    "Sequential",
    "Splits",
    "Trainer",
    "__version__",
    "check_random_state",
    "holdout_splits",
    "require",
]
