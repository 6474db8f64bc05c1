"""``python -m nnexp``: discover plugins, store their configs, then let Hydra compose and run."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path

from omegaconf import DictConfig

from nnexp.errors import NnexpError, raise_on_sigterm

#: Sub-commands that are not Hydra runs, and the module whose ``main(argv) -> int`` runs each.
COMMANDS = {"data": "nnexp.download", "reproduce": "nnexp.reproduce"}

#: Whether the user asked for Hydra's full tracebacks; nnexp then re-raises instead of printing one line.
FULL_ERRORS = os.environ.get("HYDRA_FULL_ERROR") == "1"


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from nnexp import __version__

        print(f"nnexp {__version__}")
        return
    raise_on_sigterm()
    if sys.argv[1:2] and sys.argv[1] in COMMANDS:
        sys.exit(importlib.import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:]))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Hydra prints composition errors over several lines and exits; with this set they reach us instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        launch()
    except KeyboardInterrupt as exc:
        print(f"error: {exc or 'interrupted'}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 128 + signal.SIGINT))
    except NnexpError as exc:
        if FULL_ERRORS:
            raise
        fail(str(exc))
    except Exception as exc:
        from nnexp.cli_errors import describe_config_error

        message = describe_config_error(exc)
        if message is None or FULL_ERRORS:
            raise
        fail(message)


def launch() -> None:
    import hydra

    from nnexp.config import store_configs
    from nnexp.plugins import load_plugins

    load_plugins(Path.cwd())  # must precede composition: the options come from the registries
    store_configs()
    conf = Path.cwd() / "conf"
    hydra.main(version_base="1.3", config_path=str(conf) if conf.is_dir() else None, config_name="nnexp")(task)()


def task(cfg: DictConfig) -> float:
    """Hydra's task: one job. A single run's user error ends the process here, in one line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nnexp.run import run

    try:
        return run(cfg)
    except NnexpError as exc:
        if HydraConfig.get().mode == RunMode.RUN and not FULL_ERRORS:
            fail(str(exc))  # re-raised, Hydra would print a second line naming the overrides
        raise


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
