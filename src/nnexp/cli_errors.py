"""Turn Hydra's and OmegaConf's multi-line composition errors into one line naming the key and the choices."""

from __future__ import annotations

import os
import re
import sys
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from nnexp.config import (
    GROUPS,
    check_tag_key,
    config_fields,
    describe_type,
    group_options,
    list_type,
    unknown_key_message,
)
from nnexp.errors import ConfigError, abbreviated, one_line

#: Hydra options that an optional extra of nnexp installs, and how to install it.
OPTIONAL_PLUGINS = {"hydra/launcher/ray": 'pip install -e ".[ray]"'}

#: The config groups whose choice is a plugin or a preset of one.
GROUP_KINDS = frozenset(registry.kind for registry, _ in GROUPS)

#: The config groups that take one choice: the plugins' and the presets'.
CHOICE_GROUPS = GROUP_KINDS | {"experiment", "hparams_search"}

#: An override without a key (``=5``, ``+=x``), which Hydra takes for a config group's and fails on with a traceback.
_NO_KEY = re.compile(r"[+~]*=")


#: The part of a logging config that ``logging.config.dictConfig`` could not set up, as its error names it.
_LOGGING_PART = re.compile(r"Unable to configure (?:(root) logger|(handler|formatter|filter|logger) '([^']*)')")

#: The file whose ``configure_log`` sets up Hydra's and a job's logging.
LOG_SETUP = ("hydra", "core", "utils.py")

#: Hydra's error for a preset whose defaults list names a config that does not exist.
_MISSING_DEFAULT = re.compile(r"In '([^']+)': Could not load '([^']+)'")

#: Hydra's refusal of ``~key`` for a key the config does not have.
_NOT_DELETED = re.compile(r"Could not delete from config\. '([^']+)' does not exist")

#: Hydra's refusal of ``key=a,b`` in a single run, and of ``+group=option`` / ``++group=option`` for a group
#: that has a choice already.
_AMBIGUOUS = re.compile(r"Ambiguous value for argument '([^'=]+)=([^']*)'")
_ADDED_GROUP = re.compile(
    r"Multiple values for [\w/]+\. To override a value use 'override ([\w/]+): ([^']*)'"
    r"|force-add of config groups is not supported: '\+\+([\w/]+)=([^']*)'"
)

#: Hydra's refusal of ``+key=value`` for a key the config has, and of a second choice of a group (``+dataset=x``).
_ADDED_KEY = re.compile(r"Could not append to config\. An item is already at '([^']+)'")
_CHOSEN_TWICE = re.compile(r"([\w/]+) appears more than once in the final defaults list")


#: Hydra's error for an override OmegaConf could not merge, whose error names the key but not the value.
_MERGING_OVERRIDE = re.compile(r"Error merging override (.*)")

#: The longest file name (in bytes) of Linux's and macOS's file systems.
NAME_MAX = 255


def check_override_keys(arguments: list[str]) -> None:
    """Raise a ConfigError for a command-line override that names no key, such as ``=5``, or a key that Hydra
    would look up as a file with a name too long for one (a long ``tags.<key>`` is checked against MLflow's limit)."""
    for item in arguments:
        if _NO_KEY.match(item):
            raise ConfigError(f"cannot parse override {item!r}: no key before '='; write key=value, such as seed=5")
        if item.startswith("-") or "=" not in item:
            continue
        option, value = item.split("=", 1)
        key = option.lstrip("+~").split("@", 1)[0]
        group = key.removesuffix(".name")
        if key in CHOICE_GROUPS and value.startswith("["):
            # Hydra's list of options merges several configs of the group into one, which no plugin takes.
            shown = value.strip("[]").replace(" ", "")
            raise ConfigError(f"{item}: {key} takes one choice; for a sweep use -m {key}={shown}")
        if group in GROUP_KINDS and (key != group or value in ("", "null")):
            # A node's name is its group's choice: set alone, it would build one plugin from another's settings.
            chosen = value if key != group else "NAME"
            raise ConfigError(f"{item}: choose the {group} with {group}={chosen}; python -m nnexp --help lists them")
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
    if parsed.experimental_rerun is not None:  # Hydra would read the file, which no run of nnexp's writes
        refuse(
            "--experimental-rerun: nnexp's runs keep no .hydra/config.pickle; run again with the overrides in the "
            "run's .hydra/overrides.yaml, or continue a stopped run with resume=<id>"
        )
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
    check_config_folder("--config-dir", parsed.config_dir, Path.cwd())
    if parsed.config_path is not None and not parsed.config_path.startswith("pkg://"):
        # Hydra reads a relative --config-path from the folder of the file that calls hydra.main: nnexp's package.
        check_config_folder("--config-path", parsed.config_path, Path(__file__).parent)


def check_config_folder(flag: str, value: str | None, base: Path) -> None:
    """Raise a ConfigError unless ``value`` of ``flag`` (relative to ``base``) is a folder nnexp can read: Hydra
    says "Primary config directory not found." without naming it, and reads an unreadable folder as an empty one."""
    if value is None:
        return
    expected = f"{flag} {value or repr(value)}: expected a folder of YAML configs"
    if not value:  # Hydra would read the working folder, or nnexp's package folder, for an unset shell variable
        raise ConfigError(f"{expected}, got an empty value")
    folder = base / value
    where = "" if base == Path.cwd() or Path(value).is_absolute() else f" (a relative {flag} is read from {base})"
    if not folder.exists():
        raise ConfigError(f"{expected}; there is no such folder{where}")
    if not folder.is_dir():
        raise ConfigError(f"{expected}, found {'a file' if folder.is_file() else 'no folder'}{where}")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise ConfigError(f"{expected}; nnexp cannot read it: permission denied")


def _field_types(object_type: Any) -> dict[str, Any]:
    """The annotated types of a config dataclass's user-facing fields, by name."""
    names = config_fields(object_type)
    hints = typing.get_type_hints(object_type) if names else {}
    return {name: hints[name] for name in names}


def parse_error(override: str, message: str) -> str:
    """One line for an override Hydra cannot parse, the override shown with its control characters escaped: Hydra's
    own message would break the line at a newline in the value, and name only the part before it."""
    control = next((char for char in override if not char.isprintable()), None)
    if control is None:
        return f"cannot parse override {override!r}: {one_line(message.splitlines()[0])}"
    key = override.split("=", 1)[0]
    return (
        f"cannot parse override {override!r}: {control!r} is allowed only inside a quoted value, "
        f"as in {key}='...'"
    )


def describe_config_error(exc: BaseException) -> str | None:
    """A one-line message for a configuration error, or ``None`` when ``exc`` is not one."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    logging_problem = describe_logging_error(exc)
    if logging_problem is not None:
        return logging_problem
    missing_default = _MISSING_DEFAULT.match(str(exc)) if isinstance(exc, MissingConfigException) else None
    conf = Path.cwd() / "conf"
    if missing_default and (conf / f"{missing_default[1]}.yaml").is_file():
        if missing_default[2] in OPTIONAL_PLUGINS:  # a preset over a launcher whose extra is not installed
            group, _, option = missing_default[2].rpartition("/")
            return f"{group}={option} needs an optional extra: {OPTIONAL_PLUGINS[missing_default[2]]}"
        preset, missing = missing_default.groups()
        group = missing.rpartition("/")[0]
        available = ", ".join(group_options(group, conf)) or "none"
        return (
            f"{shown_path(conf / f'{preset}.yaml')}: its defaults name {missing}, which does not exist; "
            f"{group} options: {available}"
        )
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, option = exc.missing_cfg_file.rsplit("/", 1)
        if exc.options is None and exc.missing_cfg_file in OPTIONAL_PLUGINS:
            return f"{group}={option} needs an optional extra: {OPTIONAL_PLUGINS[exc.missing_cfg_file]}"
        available = ", ".join(exc.options or []) or "none"
        where = f"presets are read from conf/{group}/ of the folder you run nnexp from"
        if not (Path.cwd() / "conf" / group).is_dir():
            where += ", and there is none here"
        return f"{group}={option} is not an option; available: {available} ({where})"
    if isinstance(exc, ValueError) and str(exc).startswith("Only one of --run, --multirun"):
        return f"{exc}; to see a sweep's settings, drop -m (e.g. --cfg hydra -p hydra.launcher)"
    if isinstance(exc, OverrideParseException):
        return parse_error(exc.override, exc.message)
    hint = override_hint(str(exc))
    if hint is not None:
        return hint
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    if not isinstance(cause, OmegaConfBaseException) or not getattr(cause, "full_key", None):
        return hydra_refusal(exc)
    key, fields = cause.full_key, _field_types(cause.object_type)
    if key == "tags" and not isinstance(cause.value, Mapping):
        return (
            "tags is a mapping of tag names to values, not a list or a value; "
            "add a tag with +tags.NAME=VALUE, such as +tags.note=x"
        )
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        if key == "experiment":
            return "experiment presets live in conf/experiment/ of the directory you run nnexp from; none found here"
        return unknown_key_message(key, cause.object_type)
    expected = fields.get(str(cause.key))
    merged = _MERGING_OVERRIDE.match(str(exc))
    if merged and cause.value is None and list_type(cause.ref_type):  # a mapping given for a list
        return f"{key} expects {describe_type(cause.ref_type)}, got {merged[1].partition('=')[2]}"
    if isinstance(cause.value, Mapping) and str(cause.key).endswith(("activation", "initializer")):
        from nnexp.core.activations import ACTIVATIONS
        from nnexp.core.initializers import INITIALIZERS

        registry = INITIALIZERS if str(cause.key).endswith("initializer") else ACTIVATIONS
        return (
            f"{key} names an {registry.kind} ({', '.join(registry.names())}) and takes no settings; for other "
            f"constants register a variant under its own name (plugins/README.md)"
        )
    if expected is not None and cause.value is not None:
        return f"{key} expects {describe_type(expected)}, got {cause.value!r}"
    return f"{key}: {str(cause.msg).splitlines()[0]}"


def hydra_refusal(exc: BaseException) -> str | None:
    """The first line of an error Hydra raised itself on reading the command line (a primary config or a config
    folder that does not exist, a flag without its value, a defaults list it cannot build); ``None`` for any other."""
    import traceback

    import hydra
    from hydra.errors import HydraException

    frames = traceback.extract_tb(exc.__traceback__)
    raised_by_hydra = bool(frames) and Path(frames[-1].filename).is_relative_to(Path(hydra.__file__).parent)
    if not (isinstance(exc, HydraException | ValueError) and raised_by_hydra):
        return None
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def describe_logging_error(exc: BaseException, arguments: list[str] | None = None) -> str | None:
    """``hydra.job_logging.handlers.file: Cannot resolve 'nope.Nope' ...`` for a logging setting of Hydra's that
    Python's logging refused, naming the override of ``arguments`` (the command line) that set it when there is one;
    ``None`` for an error raised anywhere but where Hydra configures logging."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    # Hydra sets up its own logging (hydra_logging) before it runs a job, and the job's (job_logging) in run_job.
    setting = f"hydra.{'job' if any(frame.name == 'run_job' for frame in frames) else 'hydra'}_logging"
    match = _LOGGING_PART.fullmatch(str(exc)) if isinstance(exc, ValueError) else None
    if match is not None:
        root, kind, name = match.groups()
        reason = str(exc.__cause__ or exc).splitlines()[0]
        return f"{setting}.{'root' if root else f'{kind}s.{name}'}: {reason}"
    if not any(frame.name == "configure_log" and Path(frame.filename).parts[-3:] == LOG_SETUP for frame in frames):
        return None
    if isinstance(exc, AssertionError) and frames[-1].name == "configure_log":  # Hydra's check of hydra.verbose
        setting, reason = "hydra.verbose", "expects true, false, a logger name or a list of logger names"
    elif isinstance(exc, (ValueError, TypeError, KeyError, AttributeError, ImportError)):  # what dictConfig raises
        reason = f"missing {exc}" if isinstance(exc, KeyError) else (str(exc).splitlines() or [type(exc).__name__])[0]
    else:
        return None
    arguments = sys.argv[1:] if arguments is None else arguments
    given = [item for item in arguments if re.match(rf"[+~]*{re.escape(setting)}\b", item.replace("/", "."))]
    return f"{', '.join(given) or setting}: {reason}"


def override_hint(message: str) -> str | None:
    """The fix for an override Hydra refuses with a message of several lines: a comma list outside a sweep, a
    config group's choice added with ``+`` or ``++``, or a key removed with ``~`` that the config does not have."""
    ambiguous = _AMBIGUOUS.search(message)
    if ambiguous:
        key, value = ambiguous.groups()
        return (
            f"{key}={value} is ambiguous: for a list write '{key}=[{value}]' (quoted for the shell), to sweep over "
            f"the values add -m, for a string quote it: {key}=\"'{value}'\""
        )
    not_deleted = _NOT_DELETED.search(message)
    if not_deleted:
        return f"~{not_deleted[1]}: the config has no {not_deleted[1]} to remove; check its spelling"
    added_key = _ADDED_KEY.search(message)
    if added_key:
        key = added_key[1]
        return f"+{key}: the config has {key} already; write {key}=VALUE to change it (+ adds only a key it lacks)"
    twice = _CHOSEN_TWICE.search(message)
    if twice:
        group = twice[1]
        return f"{group} is chosen more than once (+{group}=... adds a choice); choose it once, as {group}=NAME"
    added = _ADDED_GROUP.search(message)
    if added:
        group, option = (added.group(1), added.group(2)) if added.group(1) else (added.group(3), added.group(4))
        return f"{group} is a config group with a choice already: write {group}={option}, without + or ++"
    return None


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when inside it, as the user would type it; else absolute."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__




















