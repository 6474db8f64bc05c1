"""Turn Hydra's and OmegaConf's multi-line composition errors into one line naming the key and the choices."""

from __future__ import annotations

import enum
import re
import types
import typing
from typing import Any, NoReturn

from nnexp.config import abbreviated, check_tag_key, config_fields, unknown_key_message
from nnexp.errors import ConfigError

#: Hydra options that an optional extra of nnexp installs, and how to install it.
OPTIONAL_PLUGINS = {"hydra/launcher/ray": 'pip install -e ".[ray]"'}

#: An override without a key (``=5``, ``+=x``), which Hydra takes for a config group's and fails on with a traceback.
_NO_KEY = re.compile(r"[+~]*=")

#: The longest file name (in bytes) of Linux's and macOS's file systems.
NAME_MAX = 255

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_override_keys(arguments: list[str]) -> None:
    """Raise a ConfigError for a command-line override that names no key, such as ``=5``, or a key that Hydra
    would look up as a file with a name too long for one (a long ``tags.<key>`` is checked against MLflow's limit)."""
    for item in arguments:
        if _NO_KEY.match(item):
            raise ConfigError(f"cannot parse override '{item}': no key before '='; write key=value, such as seed=5")
        if item.startswith("-") or "=" not in item:
            continue
        option = item.split("=", 1)[0]
        key = option.lstrip("+~").split("@", 1)[0]
        if key.startswith("tags."):
            check_tag_key(key.removeprefix("tags."), option)
        for part in key.split("/"):
            if len(part.encode()) > NAME_MAX:
                raise ConfigError(
                    f"{abbreviated(option)}: name too long for a file name ({len(part.encode())} > {NAME_MAX} bytes), "
                    "and Hydra looks config keys up as files; use a shorter key"
                )


def check_command_line(arguments: list[str]) -> None:
    """Raise a ConfigError for a command line that Hydra's parser would refuse with a usage block: an unknown flag,
    a flag's bad value, or overrides on both sides of a flag (Hydra takes the overrides as one group)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def refuse(message: str) -> NoReturn:
        raise ConfigError(f"{message} (see python -m nnexp --help)")

    parser.error = refuse  # type: ignore[method-assign]
    parsed, unknown = parser.parse_known_args(arguments)
    flags = [item for item in unknown if item.startswith("-")]
    if flags:
        refuse(f"{flags[0]} is not an option of python -m nnexp")
    if unknown:
        rest = list(arguments)
        for item in [*parsed.overrides, *unknown]:
            rest.remove(item)
        together = " ".join([*parsed.overrides, *unknown, *rest])
        raise ConfigError(
            f"{unknown[0]}: overrides come together, not on both sides of a flag; write python -m nnexp {together}"
        )


def describe_type(annotation: Any) -> str:
    """``Optional[int]`` -> "an integer or null", ``List[int]`` -> "a list of integers, like [64, 32]"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = next(arg for arg in args if arg is not type(None))
        return f"{describe_type(inner)} or null"
    if origin is list:
        return f"a list of {describe_type(args[0]).split(' ', 1)[1]}s, like [64, 32]"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(member.name for member in annotation)
    return _TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _field_types(object_type: Any) -> dict[str, Any]:
    """The annotated types of a config dataclass's user-facing fields, by name."""
    names = config_fields(object_type)
    hints = typing.get_type_hints(object_type) if names else {}
    return {name: hints[name] for name in names}


def describe_config_error(exc: BaseException) -> str | None:
    """A one-line message for a configuration error, or ``None`` when ``exc`` is not one."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, option = exc.missing_cfg_file.rsplit("/", 1)
        if exc.options is None and exc.missing_cfg_file in OPTIONAL_PLUGINS:
            return f"{group}={option} needs an optional extra: {OPTIONAL_PLUGINS[exc.missing_cfg_file]}"
        available = ", ".join(exc.options or []) or f"none (presets live in conf/{group}/)"
        return f"{group}={option} is not an option; available: {available}"
    if isinstance(exc, ValueError) and str(exc).startswith("Only one of --run, --multirun"):
        return f"{exc}; to see a sweep's settings, drop -m (e.g. --cfg hydra -p hydra.launcher)"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override '{exc.override}': {exc.message.splitlines()[0]}"
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    if not isinstance(cause, OmegaConfBaseException) or not getattr(cause, "full_key", None):
        return None
    key, fields = cause.full_key, _field_types(cause.object_type)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        if key == "experiment":
            return "experiment presets live in conf/experiment/ of the directory you run nnexp from; none found here"
        return unknown_key_message(key, cause.object_type)
    expected = fields.get(str(cause.key))
    if expected is not None and cause.value is not None:
        return f"{key} expects {describe_type(expected)}, got {cause.value!r}"
    return f"{key}: {str(cause.msg).splitlines()[0]}"
