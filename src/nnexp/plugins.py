"""Plugin discovery: built-ins, installed packages (entry points), then ``plugins/*.py`` of the project."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
import traceback
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

from nnexp.errors import PluginError
from nnexp.registry import REGISTRIES, Registry, registration_source

ENTRY_POINT_GROUP = "nnexp.plugins"
PATH_VARIABLE = "NNEXP_PLUGIN_PATH"
BUILTIN_PACKAGES = ("nnexp.core", "nnexp.datasets", "nnexp.models")
LOCAL_PREFIX = "nnexp_local_plugins"


def load_plugins(project_dir: Path) -> None:
    """Import every plugin module so its decorators register it; must run before Hydra composes."""
    load_builtins()
    load_entry_points()
    folders = [project_dir / "plugins"]
    folders += [Path(entry) for entry in os.environ.get(PATH_VARIABLE, "").split(os.pathsep) if entry]
    for folder in folders:
        load_folder(folder)


def load_builtins() -> None:
    for package_name in BUILTIN_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{module.name}")


def load_entry_points() -> None:
    """Import the module each ``nnexp.plugins`` entry point names (pytest11 style: the value is a module)."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        dist = f" from {entry.dist.name} {entry.dist.version}" if entry.dist else ""
        source = f"entry point '{entry.name}' ({entry.value}){dist}"
        if entry.value in sys.modules:
            continue
        with registration_source(source), importing(source):
            entry.load()


def load_folder(folder: Path) -> None:
    """Import ``folder/*.py`` in sorted order, skipping ``_*.py``, each under a private module name."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"{LOCAL_PREFIX}.{path.stem}"
        if module_name in sys.modules:
            continue
        load_file(path, module_name)


def load_file(path: Path, module_name: str) -> None:
    shown = _display(path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{shown}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with registration_source(f"file {shown}"):
        try:
            with importing(shown):
                spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise


@contextlib.contextmanager
def importing(source: str) -> Iterator[None]:
    """Anything a plugin's import raises becomes one line naming ``source``; an interrupt stays an interrupt."""
    try:
        yield
    except SyntaxError as exc:
        raise PluginError(f"{source}: SyntaxError at line {exc.lineno}: {exc.msg}") from None
    except PluginError as exc:
        raise PluginError(f"{source}: {exc}") from None
    except SystemExit as exc:  # not the process's to end: a bare sys.exit(0) would end nnexp silently, exit 0
        raise PluginError(f"{source}: exits while being imported (SystemExit({exc.code!r})); remove the exit") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted while importing {source}") from None
    except Exception as exc:
        raise PluginError(f"{source}: {type(exc).__name__}: {exc}") from None


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, so messages stay short."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def blame(exc: BaseException) -> PluginError | None:
    """A one-line error naming the user's plugin whose code raised ``exc`` (the innermost of its frames); None when
    no frame of ``exc``'s traceback is a user's plugin: an error of nnexp itself, which keeps its traceback."""
    classes: dict[str, list[tuple[Registry, type]]] = {}
    for registry in REGISTRIES:
        for _, cls in registry.items():
            if is_builtin(cls):
                continue
            try:
                file = inspect.getsourcefile(cls)
            except TypeError:  # defined where no file holds it, as in an interactive session
                continue
            if file is not None:
                classes.setdefault(os.path.realpath(file), []).append((registry, cls))
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        found = classes.get(os.path.realpath(frame.f_code.co_filename))
        if found:
            qualname = frame.f_code.co_qualname
            registry, cls = next(((r, c) for r, c in found if qualname.startswith(f"{c.__qualname__}.")), found[0])
            reason = (str(exc).strip().splitlines() or [""])[0]
            said = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            return PluginError(f"{registry.label(cls)} raised {said}")
    return None


def is_builtin(cls: type) -> bool:
    """Whether ``cls`` is one of nnexp's own plugins."""
    return cls.__module__.partition(".")[0] == "nnexp"
