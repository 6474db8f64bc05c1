"""Registries map the snake_case names users type to plugin classes; pure Python, no Hydra."""

from __future__ import annotations

import contextlib
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from nnexp.errors import ParameterError, PluginError

T = TypeVar("T")

_SCALARS = (int, float, bool, str)
CONFIG_TYPES = "int, float, bool, str, an Enum, list[...] of those, or ... | None"

#: What a plugin's name may be: snake_case ASCII, as ``mnist_idx``, which Hydra's override grammar reads as a plain
#: name (its unquoted ID is ``[A-Za-z_][A-Za-z0-9_-]*``), so that ``dataset=<name>`` selects it.
NAME_PATTERN = re.compile(r"[a-z_][a-z0-9_]*")
#: Names of that pattern that Hydra reads as a value instead (``dataset=nan`` is a float): none can select a plugin.
HYDRA_WORDS = ("null", "true", "false", "inf", "nan")

#: Every registry, so that an error can be traced back to the plugin whose code raised it.
REGISTRIES: list[Registry[Any]] = []


def _supported(annotation: Any) -> bool:
    """Whether OmegaConf can type-check a field of this annotation."""
    if annotation in _SCALARS or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        return len(rest) == 1 and len(args) == 2 and _supported(rest[0])
    if origin in (list, typing.List):  # noqa: UP006
        return len(args) == 1 and _supported(args[0])
    return False


def config_parameters(cls: type) -> list[tuple[str, Any, Any]]:
    """The ``(name, annotation, default)`` triples of a plugin's constructor; raises if one cannot be config."""
    if cls.__init__ is object.__init__:
        return []
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception as exc:
        raise PluginError(f"{cls.__qualname__}: cannot resolve constructor annotations: {exc}") from None
    found = []
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        where = f"{cls.__qualname__}.__init__ parameter '{parameter.name}'"
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise PluginError(f"{where}: plugin constructors take named config fields only")
        if parameter.name == "name":
            raise PluginError(f"{where}: 'name' is reserved for the plugin's registered name")
        annotation = hints.get(parameter.name)
        if annotation is None or not _supported(annotation):
            raise PluginError(_annotation_hint(cls, parameter, annotation))
        found.append((parameter.name, annotation, parameter.default))
    return found


def _annotation_hint(cls: type, parameter: inspect.Parameter, annotation: Any) -> str:
    """What to write for a constructor parameter that lacks a config type, with an example its default suggests."""
    example = _example(parameter)
    if annotation is None:
        if example is None:
            example = f"{parameter.name}: float; config types are {CONFIG_TYPES}"
        return f"{cls.__qualname__}({parameter.name}) needs a type annotation, e.g. {example}"
    shown = inspect.formatannotation(annotation)
    instead = f", e.g. {example}" if example else ""
    return f"{cls.__qualname__}({parameter.name}: {shown}) is not a config type; use {CONFIG_TYPES}{instead}"


def _example(parameter: inspect.Parameter) -> str | None:
    """``name: type = default`` for a parameter whose default tells a config type; None when it tells none."""
    name, default = parameter.name, parameter.default
    if default is None:
        return f"{name}: float | None = None"
    if isinstance(default, enum.Enum):
        return f"{name}: {type(default).__name__} = {type(default).__name__}.{default.name}"
    if type(default) in _SCALARS:
        return f"{name}: {type(default).__name__} = {default!r}"
    if isinstance(default, list | tuple) and default and len({type(item) for item in default}) == 1:
        kind = type(default[0])
        if kind in _SCALARS:
            return f"{name}: list[{kind.__name__}] = {list(default)!r}"
    return None


class Registry(Generic[T]):
    """Maps plugin names of one kind (a Hydra config group, or activations and initializers) to classes."""

    def __init__(self, kind: str, base: type[T], *, by_name_only: bool = False) -> None:
        """``by_name_only``: a plugin is chosen by its name alone (``model.activation=relu``), never given settings,
        so each constructor parameter needs a default."""
        self.kind, self.base, self.by_name_only = kind, base, by_name_only
        self._classes: dict[str, type[T]] = {}
        self._sources: dict[str, str] = {}
        REGISTRIES.append(self)

    def register(self, name: str, *, override: bool = False) -> Callable[[type[T]], type[T]]:
        """Class decorator adding ``cls`` under ``name``; ``override=True`` replaces an existing entry on purpose."""

        def add(cls: type[T]) -> type[T]:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise PluginError(f"{cls!r}: a {self.kind} plugin must subclass {self.base.__name__}")
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in HYDRA_WORDS:
                raise PluginError(
                    f"{cls.__qualname__}: {self.kind} name {name!r} cannot be chosen on the command line; a name must "
                    f"be snake_case ASCII matching {NAME_PATTERN.pattern}, as mnist_idx or two_layer, and not "
                    f"{', '.join(HYDRA_WORDS)}"
                )
            if name in self._classes and not override:
                first = self._classes[name]
                raise PluginError(
                    f"{self.kind} '{name}' is already registered by {self._sources[name]} "
                    f"({first.__module__}.{first.__qualname__}); pass override=True to replace it"
                )
            for parameter, annotation, default in config_parameters(cls):
                if self.by_name_only and default is inspect.Parameter.empty:
                    raise PluginError(
                        f"{cls.__qualname__}({parameter}) needs a default: {self.kind}s are chosen by name alone and "
                        f"take no settings; write {parameter}: {inspect.formatannotation(annotation)} = <value>, or "
                        "register one variant per value under its own name"
                    )
            self._classes[name] = cls
            self._sources[name] = _current_source or cls.__module__
            return cls

        return add

    def get(self, name: str) -> type[T]:
        try:
            return self._classes[name]
        except KeyError:
            raise PluginError(f"{self.kind} '{name}' is not registered; available: {self.available()}") from None

    def build(self, cfg: Mapping[str, Any]) -> T:
        """Instantiate the plugin a composed config node names; range errors are qualified by ``kind``."""
        fields = dict(cfg)
        cls = self.get(fields.pop("name"))
        try:
            return cls(**fields)
        except ParameterError as exc:
            raise exc.within(self.kind) from None

    def validate(self, name: str, field: str) -> str:
        """Check that ``name``, the value of config field ``field``, is registered here; return it."""
        if name not in self._classes:
            raise ParameterError(field, f"must be a registered {self.kind} ({self.available()})", name)
        return name

    def names(self) -> list[str]:
        return sorted(self._classes)

    def available(self) -> str:
        return ", ".join(self.names())

    def source(self, name: str) -> str:
        """Where ``name`` was registered from: a built-in module, an installed distribution or a file."""
        return self._sources[name]

    def label(self, cls: type) -> str:
        """``activation narrow (plugins/narrow.py)``: the kind, name and source of ``cls``, to name a plugin in an
        error; its class name when this registry does not hold it."""
        name = next((name for name, registered in self.items() if registered is cls), None)
        if name is None:
            return f"{self.kind} class {cls.__module__}.{cls.__qualname__}"
        return f"{self.kind} {name} ({self.source(name).removeprefix('file ')})"

    def items(self) -> Iterator[tuple[str, type[T]]]:
        yield from sorted(self._classes.items())

    def snapshot(self) -> tuple[dict[str, type[T]], dict[str, str]]:
        return dict(self._classes), dict(self._sources)

    def restore(self, state: tuple[dict[str, type[T]], dict[str, str]]) -> None:
        self._classes, self._sources = dict(state[0]), dict(state[1])

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {self.available()})"


_current_source: str | None = None


@contextlib.contextmanager
def registration_source(source: str) -> Iterator[None]:
    """Label every registration made inside the block with ``source`` (a file or a distribution)."""
    global _current_source
    previous, _current_source = _current_source, source
    try:
        yield
    finally:
        _current_source = previous


def is_builtin(cls: type) -> bool:
    """Whether ``cls`` is one of nnexp's own plugins."""
    return cls.__module__.partition(".")[0] == "nnexp"
