"""Plugin discovery: built-ins, installed packages (entry points), then ``plugins/*.py`` of the project."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
import threading
import traceback
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType

from nnexp.errors import Interrupted, PluginError, interruption
from nnexp.folders import dangling_link, special_file
from nnexp.registry import REGISTRIES, Registry, is_builtin, registration_source

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


#: Where the user's plugins' code lives: the plugin folders loaded, and each entry point's module or package.
plugin_places: set[Path] = set()


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
            module = entry.load()
        file = getattr(module, "__file__", None)
        if file is not None:
            place = Path(file).resolve()
            plugin_places.add(place.parent if place.name == "__init__.py" else place)


def load_folder(folder: Path) -> None:
    """Import ``folder/*.py`` in sorted order, skipping ``_*.py``, each under a private module name."""
    if not folder.is_dir():
        return
    plugin_places.add(folder.resolve())
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"{LOCAL_PREFIX}.{path.stem}"
        if module_name in sys.modules:
            continue
        load_file(path, module_name)


def load_file(path: Path, module_name: str) -> None:
    shown = _display(path)
    unusable = not_a_file(path, shown)
    if unusable is not None:  # a FIFO's import would wait for a writer for ever
        raise PluginError(unusable)
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
    """Anything a plugin's import raises becomes one line naming ``source``; a Ctrl-C or SIGTERM stays one."""
    start = os.getcwd()
    try:
        yield
    except SyntaxError as exc:
        raise PluginError(f"{source}: SyntaxError at line {exc.lineno}: {exc.msg}") from None
    except PluginError as exc:
        raise PluginError(f"{source}: {exc}") from None
    except SystemExit as exc:  # not the process's to end: a bare sys.exit(0) would end nnexp silently, exit 0
        raise PluginError(f"{source}: called {exit_call(exc)} while being imported; remove the exit") from None
    except KeyboardInterrupt as exc:
        raise stopped_while_importing(exc, source) from None
    except Exception as exc:
        stop = interruption(exc)  # Python 3.11 wraps one landing in a class's __set_name__ in a RuntimeError
        if stop is not None:
            raise stopped_while_importing(stop, source) from None
        raise PluginError(f"{source}: {type(exc).__name__}: {exc}") from None
    moved = os.getcwd()
    if moved != start:  # the run's folder, the store and the presets would all be found, or made, there
        os.chdir(start)
        raise PluginError(f"{source}: moves the working directory to {moved} while being imported; remove the chdir")


#: The modules whose threads Python's exit stops itself (by ``threading._register_atexit``), and nnexp's own, which
#: each job waits for: no others' are waited for for ever.
STOPPED_AT_EXIT = ("nnexp.", "concurrent.futures.", "joblib.externals.loky.")


def stray_threads() -> list[tuple[threading.Thread, str | None]]:
    """The threads still running that Python's exit would wait for (no daemons) and nothing stops: those a plugin
    started; each with its code's file when that is in a plugin folder or an entry point's package."""
    found = []
    for thread in threading.enumerate():
        if thread.daemon or thread is threading.current_thread() or not thread.is_alive():
            continue
        # Thread keeps its target in a private attribute until run() returns; a subclass's own run() is the code.
        target = getattr(thread, "_target", None)
        code = type(thread).run if target is None else getattr(target, "func", target)
        if str(getattr(code, "__module__", "")).startswith(STOPPED_AT_EXIT):
            continue
        found.append((thread, plugin_file(code)))
    return found


def plugin_file(code: object) -> str | None:
    """The file of a function ``code``, as messages show it, if it is a user's plugin's; else None."""
    try:
        file = Path(inspect.getfile(code)).resolve()  # type: ignore[arg-type]
    except TypeError:  # a built-in, or a callable object
        return None
    return _display(file) if any(file == place or file.is_relative_to(place) for place in plugin_places) else None


def leave_plugin_threads(code: object) -> None:
    """Exit with the status ``code`` (``sys.exit``'s argument) at once, without waiting for the threads a plugin
    started and left running (:func:`stray_threads`), as Python would, for ever for one that never ends; saying so
    in one line. A process whose plugins left none goes on to exit as usual."""
    threads = stray_threads()
    if not threads:
        return
    named = ", ".join(f"thread {thread.name!r}" + (f" ({file})" if file else "") for thread, file in threads)
    with contextlib.suppress(OSError):
        print(f"warning: not waiting for {named} to end: make a plugin's thread a daemon, or join it", file=sys.stderr)
    # What the interpreter's exit does besides waiting for them: executors' threads and processes stopped (a joblib
    # sweep's workers), logs closed, child processes awaited.
    for hook in reversed(getattr(threading, "_threading_atexits", [])):
        if getattr(hook, "func", None) is not leave_plugin_threads:  # this may be one, in a launcher's worker
            hook()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code if isinstance(code, int) else int(code is not None))


def leave_plugin_threads_at_exit() -> None:
    """Have this process's exit leave its plugins' threads (see :func:`leave_plugin_threads`): once Python starts to
    wait for them, before anything else of its exit. For a launcher's worker process, whose end nnexp does not
    reach; the command's own process leaves them in ``main``, with its exit status."""
    if not _leaving_at_exit:
        _leaving_at_exit.append(True)
        threading._register_atexit(leave_plugin_threads, 0)  # the hook concurrent.futures stops its threads with


#: Whether this process's exit leaves its plugins' threads.
_leaving_at_exit: list[bool] = []


def stopped_while_importing(stop: KeyboardInterrupt, source: str) -> Interrupted:
    """``stop`` (Ctrl-C, SIGTERM, a hang-up) with its own line and exit status, saying which plugin it stopped."""
    stop = Interrupted.of(stop)
    return Interrupted(f"{stop} while importing {source}", stop.exit_code)


def exit_call(exc: SystemExit) -> str:
    """``sys.exit(0)``: the call that raised ``exc``, as its author wrote it."""
    return f"sys.exit({'' if exc.code is None else repr(exc.code)})"


def not_a_file(path: Path, shown: str) -> str | None:
    """What is wrong with a plugin ``path`` (``shown`` as messages name it) that is no regular file: a symbolic link
    to nothing, a FIFO, a socket, a device, a folder; None for a regular file. Only its mode is read."""
    dangling = dangling_link(shown)  # relative to the working directory, as ``shown`` is
    if dangling is not None:
        return dangling
    kind = special_file(path) or ("a folder" if path.is_dir() else None)
    return None if kind is None else f"{shown}: {kind}, not a regular file"


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, so messages stay short; its last part
    is not resolved, so that a symbolic link is named as it stands in its folder."""
    try:
        return str((path.parent.resolve() / path.name).relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def blame(exc: BaseException) -> PluginError | None:
    """A one-line error naming where ``exc`` arose in a user's plugin file (the file, line and function of the
    innermost such frame of its traceback) and the plugin whose code that is, when one is; None when no frame is in
    a user's plugin file: an error of nnexp itself, which keeps its traceback."""
    plugins = [
        (registry, cls, file)
        for registry in REGISTRIES
        for _, cls in registry.items()
        if not is_builtin(cls) and (file := source_file(cls)) is not None
    ]
    files = {file for _, _, file in plugins}
    frames = [(frame, line) for frame, line in traceback.walk_tb(exc.__traceback__) if real_file(frame) in files]
    if not frames:
        return None
    frame, line = frames[-1]
    where = f"{_display(Path(frame.f_code.co_filename))}, line {line}, in {qualified_name(frame)}"
    owner = next((found for outer, _ in reversed(frames) if (found := plugin_of(outer, plugins))), "plugin")
    if isinstance(exc, SystemExit):
        return PluginError(f"{owner} ({where}) called {exit_call(exc)}; a plugin may not end nnexp, raise instead")
    reason = (str(exc).strip().splitlines() or [""])[0]
    said = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    return PluginError(f"{owner} ({where}) raised {said}")


def plugin_of(frame: FrameType, plugins: list[tuple[Registry, type, str]]) -> str | None:
    """``schedule halving``: the registered plugin whose method ``frame`` runs, known by the object it runs on (whose
    class may inherit the method) or else by the method's class; None for a plain function."""
    instance, qualname, file = frame.f_locals.get("self"), qualified_name(frame), real_file(frame)
    found = next((plugin for plugin in plugins if type(instance) is plugin[1]), None)
    found = found or next(
        (plugin for plugin in plugins if plugin[2] == file and qualname.startswith(f"{plugin[1].__qualname__}.")), None
    )
    if found is None:
        return None
    registry, cls, _ = found
    return f"{registry.kind} {next(name for name, registered in registry.items() if registered is cls)}"


def qualified_name(frame: FrameType) -> str:
    """``Halving.rate`` for a method, ``shrink`` for a function (Python 3.10 knows the function's name only)."""
    return getattr(frame.f_code, "co_qualname", frame.f_code.co_name)


def source_file(cls: type) -> str | None:
    """The real path of the file that defines ``cls``; None when no file holds it, as in an interactive session."""
    try:
        file = inspect.getsourcefile(cls)
    except TypeError:
        return None
    return os.path.realpath(file) if file is not None else None


def real_file(frame: FrameType) -> str:
    return os.path.realpath(frame.f_code.co_filename)
