"""Turn Hydra's and OmegaConf's multi-line composition errors into one line naming the key and the choices."""

from __future__ import annotations

import enum
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from nnexp.config import (
    GROUPS,
    abbreviated,
    check_tag_key,
    config_fields,
    group_options,
    schema_for,
    unknown_key_message,
)
from nnexp.errors import ConfigError, one_line

#: Hydra options that an optional extra of nnexp installs, and how to install it.
OPTIONAL_PLUGINS = {"hydra/launcher/ray": 'pip install -e ".[ray]"'}

#: An override without a key (``=5``, ``+=x``), which Hydra takes for a config group's and fails on with a traceback.
_NO_KEY = re.compile(r"[+~]*=")

#: Hydra's prefix to an error merging one config: ``In 'experiment/unk': ConfigKeyError raised while composing``.
_IN_CONFIG = re.compile(r"In '([^']+)': \w+ raised while composing config")

#: The part of a logging config that ``logging.config.dictConfig`` could not set up, as its error names it.
_LOGGING_PART = re.compile(r"Unable to configure (?:(root) logger|(handler|formatter|filter|logger) '([^']*)')")

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

#: Real presets nest a few levels; composing one nested about 150 deep exhausts Python's stack.
DEEP_PRESET = 100

#: The longest file name (in bytes) of Linux's and macOS's file systems.
NAME_MAX = 255

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_override_keys(arguments: list[str]) -> None:
    """Raise a ConfigError for a command-line override that names no key, such as ``=5``, or a key that Hydra
    would look up as a file with a name too long for one (a long ``tags.<key>`` is checked against MLflow's limit)."""
    for item in arguments:
        if _NO_KEY.match(item):
            raise ConfigError(f"cannot parse override {item!r}: no key before '='; write key=value, such as seed=5")
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
        return None
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


def describe_logging_error(exc: BaseException) -> str | None:
    """``hydra.job_logging.handlers.file: Cannot resolve 'nope.Nope' ...`` for a logging setting of Hydra's that
    Python's logging refused; ``None`` for any other error."""
    import traceback

    match = _LOGGING_PART.fullmatch(str(exc)) if isinstance(exc, ValueError) else None
    if match is None:
        return None
    root, kind, name = match.groups()
    part = "root" if root else f"{kind}s.{name}"
    # Hydra sets up its own logging (hydra_logging) before it runs a job, and the job's (job_logging) in run_job.
    in_job = any(frame.name == "run_job" for frame in traceback.extract_tb(exc.__traceback__))
    reason = str(exc.__cause__ or exc).splitlines()[0]
    return f"hydra.{'job' if in_job else 'hydra'}_logging.{part}: {reason}"


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


def describe_preset_error(exc: BaseException, config_dir: Path | None) -> str | None:
    """One line naming the YAML preset that ``exc``, raised while composing, comes from, and what is wrong with it;
    ``None`` when ``exc`` is no such error."""
    import yaml
    from hydra.errors import ConfigCompositionException

    for cause in causes(exc):
        if isinstance(cause, yaml.YAMLError):
            return yaml_problem(cause)
        if isinstance(cause, RecursionError) and config_dir is not None:
            return deepest_preset(config_dir) or circular_preset(config_dir)
        if isinstance(cause, UnicodeDecodeError) and config_dir is not None:
            return undecodable_preset(config_dir)
        match = _IN_CONFIG.match(str(cause)) if isinstance(cause, ConfigCompositionException) else None
        if match and config_dir is not None and (config_dir / f"{match[1]}.yaml").is_file():
            return f"{shown_path(config_dir / f'{match[1]}.yaml')}: {merge_problem(match[1], cause.__context__)}"
    return None


def yaml_problem(exc: BaseException) -> str | None:
    """``FILE: not valid YAML: <the parser's reason> (line N)`` for a YAML error that names its file."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None or not mark.name or mark.name.startswith("<"):
        return None
    reason = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    return f"{shown_path(mark.name)}: not valid YAML: {reason} (line {mark.line + 1})"


def merge_problem(config_path: str, exc: BaseException | None) -> str:
    """What is wrong with the preset ``config_path`` (``experiment/unk``), given the error merging it raised."""
    from omegaconf.errors import ConfigKeyError

    group = config_path.partition("/")[0]
    if isinstance(exc, ConfigKeyError) and exc.full_key == group:
        # Without the header Hydra puts the preset's keys under its group's name, which the primary config lacks.
        return f"expected the header line '# @package _global_' that every {group} preset starts with"
    described = describe_config_error(exc) if exc is not None else None
    return described or (str(exc).splitlines() or ["cannot be composed"])[0]


def preset_depth(path: Path) -> int:
    """How deeply the YAML in ``path`` nests lists and mappings, read without recursion; 0 if it is not YAML."""
    import yaml

    depth = deepest = 0
    try:
        with path.open(encoding="utf-8") as file:
            for event in yaml.parse(file):
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                    deepest = max(deepest, depth)
                elif isinstance(event, yaml.CollectionEndEvent):
                    depth -= 1
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return 0
    return deepest


def deepest_preset(config_dir: Path) -> str | None:
    """The preset under ``config_dir`` nested too deeply to compose, the cause of a RecursionError while composing."""
    depths = {path: preset_depth(path) for path in sorted(config_dir.rglob("*.yaml"))}
    path = max(depths, key=depths.__getitem__, default=None)
    if path is None or depths[path] < DEEP_PRESET:
        return None
    depth = depths[path]
    return f"{shown_path(path)}: nested {depth} levels deep; Hydra composes presets nested fewer than {DEEP_PRESET}"


def preset_references(name: str, path: Path) -> list[str]:
    """The configs (``group/option``) that the defaults list of the preset ``name``, read from ``path``, names."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return []
    defaults = data.get("defaults") if isinstance(data, dict) else None
    group = name.rpartition("/")[0]
    found = []
    for entry in defaults if isinstance(defaults, list) else []:
        if isinstance(entry, str):
            key, option = "", entry
        elif isinstance(entry, dict) and len(entry) == 1:
            key, option = next(iter(entry.items()))
            key = str(key).removeprefix("override ").removeprefix("optional ").partition("@")[0].strip()
        else:
            continue
        if not isinstance(option, str) or option == "_self_":
            continue
        target = f"{key}/{option}".strip("/") if key else option
        found.append(target[1:] if (key or option).startswith("/") else f"{group}/{target}".strip("/"))
    return found


def circular_preset(config_dir: Path) -> str | None:
    """The preset under ``config_dir`` whose defaults list leads back to itself, the cause of a RecursionError
    while composing; Hydra follows such a list until Python's stack runs out."""
    paths = {path.relative_to(config_dir).with_suffix("").as_posix(): path for path in config_dir.rglob("*.yaml")}
    paths = dict(sorted(paths.items()))
    edges = {name: [to for to in preset_references(name, path) if to in paths] for name, path in paths.items()}

    def cycle_from(trail: list[str]) -> list[str] | None:
        for target in edges[trail[-1]]:
            if target == trail[0]:
                return [*trail, target]
            if target not in trail and (found := cycle_from([*trail, target])):
                return found
        return None

    for start in paths:
        cycle = cycle_from([start])
        if cycle:
            shown = " -> ".join(cycle)
            return f"{shown_path(paths[start])}: its defaults list leads back to itself ({shown}); remove that entry"
    return None


def undecodable_preset(config_dir: Path) -> str | None:
    """The preset under ``config_dir`` that is not UTF-8 text, the cause of a UnicodeDecodeError while composing."""
    for path in sorted(config_dir.rglob("*.yaml")):
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            return f"{shown_path(path)}: not valid YAML: not UTF-8 text ({exc.reason} at byte {exc.start})"
        except OSError:
            continue
    return None


def check_plugin_nodes(cfg: DictConfig, presets: Mapping[str, Path]) -> None:
    """Check each group's node that a YAML preset wrote without ``defaults: [plugin, _self_]``, and so without the
    plugin's types, against its plugin's signature; errors name the preset, given in ``presets`` by group."""
    from omegaconf.errors import OmegaConfBaseException

    for registry, _ in GROUPS:
        node = cfg.get(registry.kind)
        if not isinstance(node, DictConfig) or config_fields(OmegaConf.get_type(node)):
            continue
        where = f"{shown_path(presets[registry.kind])}: " if registry.kind in presets else ""
        name = node.get("name")
        if name not in registry:
            expected = f"must name a registered {registry.kind} ({registry.available()})"
            raise ConfigError(f"{where}{registry.kind}.name {expected}, got {name!r}")
        typed = OmegaConf.create({registry.kind: OmegaConf.structured(schema_for(registry.get(name), name))})
        try:
            typed.merge_with({registry.kind: node})
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{where}{describe_config_error(exc) or str(exc).splitlines()[0]}") from None


def check_preset_names(config_dir: Path | None) -> None:
    """Refuse a YAML preset named like a plugin of its group (``conf/model/mlp.yaml``): Hydra would merge it onto
    the plugin's node with a deprecation warning, and it would hide the plugin or build another one."""
    if config_dir is None:
        return
    for registry, _ in GROUPS:
        for name in registry.names():
            preset = config_dir / registry.kind / f"{name}.yaml"
            if preset.is_file():
                raise ConfigError(
                    f"{shown_path(preset)}: a preset may not reuse the name of the {registry.kind} plugin '{name}'; "
                    f"rename it (e.g. my_{name}.yaml) and start it with 'defaults: [{name}, _self_]'"
                )
