"""The user's own presets in ``conf/``: checked before and after Hydra composes them, each fault named by its file.

Over 350 lines because every way a preset can go wrong, and the search for the preset that set a value, read the
same files by the same rules; split, the rules would drift apart.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nnexp.cli_errors import GROUP_KINDS, causes, describe_config_error, shown_path
from nnexp.config import (
    GROUPS,
    check_list_items,
    config_fields,
    describe_type,
    given_overrides,
    list_type,
    schema_for,
)
from nnexp.errors import ConfigError
from nnexp.registry import config_parameters
from nnexp.schema import MAX_ALIASED_VALUES, aliased_too_much, yaml_events

#: Real presets nest a few levels; composing one nested about 150 deep exhausts Python's stack.
DEEP_PRESET = 100
#: Hydra's prefix to an error merging one config: ``In 'experiment/unk': ConfigKeyError raised while composing``.
IN_CONFIG = re.compile(r"In '([^']+)': \w+ raised while composing config")


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
        match = IN_CONFIG.match(str(cause)) if isinstance(cause, ConfigCompositionException) else None
        if match and config_dir is not None and (config_dir / f"{match[1]}.yaml").is_file():
            path = config_dir / f"{match[1]}.yaml"
            return f"{shown_path(path)}: {merge_problem(path, match[1], cause.__context__)}"
    return None


def yaml_problem(exc: BaseException) -> str | None:
    """``FILE: not valid YAML: <the parser's reason> (line N)`` for a YAML error that names its file."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None or not mark.name or mark.name.startswith("<"):
        return None
    reason = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    return f"{shown_path(mark.name)}: not valid YAML: {reason} (line {mark.line + 1})"


def merge_problem(path: Path, config_path: str, exc: BaseException | None) -> str:
    """What is wrong with the preset ``config_path`` (``experiment/unk``) at ``path``, given the error merging it
    raised."""
    from omegaconf.errors import ConfigKeyError, ConfigTypeError

    group = config_path.partition("/")[0]
    # ``dataset: moons`` in an experiment: OmegaConf's error names neither the key nor the file.
    chosen = None if group in GROUP_KINDS else next(filter(None, map(partial(chosen_in_body, path), GROUP_KINDS)), None)
    if chosen is not None:
        return chosen
    if isinstance(exc, ConfigKeyError) and exc.full_key == group:
        # Without the header Hydra puts the preset's keys under its group's name, which the primary config lacks.
        return f"expected the header line '# @package _global_' that every {group} preset starts with"
    mismatched = mapping_for_list(path, group) if isinstance(exc, ConfigTypeError) and not exc.full_key else None
    if mismatched is not None:
        return mismatched
    described = describe_config_error(exc) if exc is not None else None
    return described or (str(exc).splitlines() or ["cannot be composed"])[0]


def mapping_for_list(path: Path, group: str) -> str | None:
    """``KEY expects TYPE, got VALUE`` for the first mapping that the preset at ``path``, of config group ``group``,
    gives a plugin's list parameter; OmegaConf's error merging it names neither the key nor the value."""
    text, data = preset_data(path)
    if text is None or not isinstance(data, dict):
        return None
    nodes = data.items() if GLOBAL_PACKAGE.search(text) else [(group, data)]
    for kind, node in nodes:
        registry = next((registry for registry, _ in GROUPS if registry.kind == kind), None)
        if registry is None or not isinstance(node, dict):
            continue
        parameters = (parameter for _, cls in registry.items() for parameter in config_parameters(cls))
        lists = {name: hint for name, hint, _ in parameters if list_type(hint)}
        for parameter, value in node.items():
            if isinstance(value, dict) and parameter in lists:
                return f"{kind}.{parameter} expects {describe_type(lists[parameter])}, got {value!r}"
    return None



def preset_depth(path: Path) -> int:
    """How deeply the YAML in ``path`` nests lists and mappings, read without recursion."""
    import yaml

    depth = deepest = 0
    for event in yaml_events(path):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            deepest = max(deepest, depth)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
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
        if not isinstance(node, DictConfig):
            continue
        name = node.get("name")
        schema = OmegaConf.get_type(node)
        if config_fields(schema):
            check_chosen_name(registry.kind, name, schema, presets)
            continue
        where = f"{shown_path(presets[registry.kind])}: " if registry.kind in presets else ""
        if name not in registry:
            expected = f"must name a registered {registry.kind} ({registry.available()})"
            raise ConfigError(f"{where}{registry.kind}.name {expected}, got {name!r}")
        typed = OmegaConf.create({registry.kind: OmegaConf.structured(schema_for(registry.get(name), name))})
        try:
            typed.merge_with({registry.kind: node})
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{where}{describe_config_error(exc) or str(exc).splitlines()[0]}") from None
        check_list_items(typed)


def chosen_in_body(path: Path, group: str) -> str | None:
    """What is wrong when the preset at ``path`` chooses ``group``'s option in its body (``dataset: moons`` or
    ``dataset: {name: moons}``, or ``name: moons`` in a preset of the group) rather than in its defaults list;
    ``None`` when it does not."""
    data = preset_data(path)[1]
    if not isinstance(data, dict):
        return None
    in_group = path.parent.name == group
    node = data if in_group else data.get(group)
    if isinstance(node, str) and not in_group:
        found = f"{group}: {node} chooses the {group} where its settings go"
    elif isinstance(node, dict) and isinstance(node.get("name"), str):
        found = f"{'' if in_group else f'{group}.'}name: {node['name']} cannot choose the {group}"
    else:
        return None
    option = node if isinstance(node, str) else node["name"]
    fix = f"'defaults: [{option}, _self_]'" if in_group else f"'- override /{group}: {option}'"
    where = "start it with" if in_group else "choose it in defaults: with"
    return f"{found}; {where} {fix}"


def preset_data(path: Path) -> tuple[str | None, object]:
    """The text of the preset at ``path`` and its YAML read as data; ``(None, None)`` for one that cannot be read,
    whose error composing names."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        return text, yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None, None


def check_chosen_name(group: str, name: object, schema: type, presets: Mapping[str, Path]) -> None:
    """Refuse a group's node whose ``name`` is not its plugin's: set in a preset's body, it would build one plugin
    from another's settings (a TypeError, or a record naming the wrong plugin)."""
    expected = next(f.default for f in dataclasses.fields(schema) if f.name == "name")
    if name == expected:
        return
    files = [presets[key] for key in (group, "experiment", "hparams_search") if key in presets]
    for path in files:
        problem = chosen_in_body(path, group)
        if problem is not None:
            raise ConfigError(f"{shown_path(path)}: {problem}")
    raise ConfigError(f"{group}.name: {name} cannot choose the {group}; choose it with {group}={name}")


#: Hydra's header that puts a preset's keys at the config's top level instead of under its group.
GLOBAL_PACKAGE = re.compile(r"^#\s*@package\s+_global_\s*$", re.MULTILINE)


def chosen_presets(runtime: DictConfig) -> dict[str, Path]:
    """The YAML file of each config group's chosen preset, by group, from a composed config's ``hydra.runtime``."""
    folders = [Path(source.path) for source in runtime.config_sources if source.schema == "file"]
    found = {}
    for group, choice in runtime.choices.items():
        files = [folder / group / f"{choice}.yaml" for folder in folders] if choice else []
        file = next((file for file in files if file.is_file()), None)
        if file is not None:
            found[group] = file
    return found


def preset_setting(key: str, presets: Mapping[str, Path]) -> Path | None:
    """The preset of ``presets`` (by group) whose YAML sets the dotted ``key`` (``seed``, ``optimizer.name``),
    read as data; of several, the one merged last (an experiment's values beat its groups')."""
    parts = key.split("[", 1)[0].split(".")
    for group, path in reversed(presets.items()):
        text, data = preset_data(path)
        if text is None:
            continue
        package = [] if GLOBAL_PACKAGE.search(text) else group.split("/")
        if parts[: len(package)] == package and holds(data, parts[len(package) :]):
            return path
    return None


def holds(data: object, parts: list[str]) -> bool:
    """Whether the YAML ``data`` has the key of the dotted ``parts``, some of which may be one key of its own (a
    sweeper's ``params: {optimizer.learning_rate: ...}``)."""
    if not parts:
        return True
    if not isinstance(data, dict):
        return False
    keys = (".".join(parts[:end]) for end in range(len(parts), 0, -1))
    return any(key in data and holds(data[key], parts[key.count(".") + 1 :]) for key in keys)


def where_set(key: str, presets: Mapping[str, Path], overrides: Iterable[str] = ()) -> str:
    """``FILE: `` naming the preset that sets ``key``, to start an error's line; ``""`` when no preset does, or an
    override of ``overrides`` sets it, as the command line's value beats a preset's."""
    for item in overrides:
        given, _, value = item.lstrip("+~").partition("=")
        if given == key or (key.startswith(f"{given}.") and value.startswith("{")):  # or a mapping holding it
            return ""
    path = preset_setting(key, presets)
    return f"{shown_path(path)}: " if path is not None else ""


def where_hydra_set(key: str, hydra: DictConfig) -> str:
    """:func:`where_set` for a composed config whose Hydra node is ``hydra``: its chosen presets, and every override
    it was given, Hydra's own included."""
    given = given_overrides(hydra.overrides.hydra) + given_overrides(hydra.overrides.task)
    return where_set(key, chosen_presets(hydra.runtime), given)


def named_by_preset(exc: OmegaConfBaseException, presets: Mapping[str, Path], overrides: Iterable[str]) -> None:
    """Raise a ConfigError naming the preset that set the value ``exc`` (an interpolation that cannot be resolved)
    names; return when no preset set it."""
    where = where_set(str(exc.full_key), presets, overrides)
    if where:
        raise ConfigError(f"{where}{describe_config_error(exc)}") from None


def check_interpolations(config_dir: Path | None, overrides: list[str], shown: str) -> None:
    """Resolve the job's config as ``--cfg SHOWN --resolve`` will, so that an interpolation that cannot be resolved
    is named by its key (and its preset): Hydra resolves the config whole, losing the key, with a traceback. With
    Hydra's settings (``shown``: hydra or all), Hydra resolves its list of the overrides too, each a string."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import InterpolationResolutionError

    from nnexp.config import PRIMARY, composing

    with composing(config_dir):
        cfg = compose(config_name=PRIMARY, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # for ${hydra:...}, as Hydra's --cfg resolves it
        job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        try:
            OmegaConf.to_container(job, resolve=True)
        except InterpolationResolutionError as exc:
            named_by_preset(exc, chosen_presets(cfg.hydra.runtime), overrides)
            raise
        if shown == "job":
            return
        settings = cfg if shown == "all" else OmegaConf.masked_copy(cfg, ["hydra"])
        for index, item in enumerate(overrides):
            try:
                settings.hydra.overrides.task[index]
            except InterpolationResolutionError as exc:
                reason = (describe_config_error(exc) or str(exc)).partition(": ")[2]
                raise ConfigError(
                    f"{item}: {reason} (--cfg {shown} --resolve resolves Hydra's list of the overrides too, each a "
                    "string; show it without --resolve)"
                ) from None


def check_command_line_options(config: DictConfig) -> None:
    """Refuse, before a run or sweep starts, a setting that only the command line may give: ``resume`` (a preset
    holding it would send every run that chooses it into another's folder) and MLflow's variables in
    ``hydra.job.env_set`` (the job would record in a store other than the one nnexp checks, names and shows)."""
    presets = chosen_presets(config.hydra.runtime)
    given = given_overrides(config.hydra.overrides.task)
    if OmegaConf.select(config, "resume") and not any(item.startswith("resume=") for item in given):
        raise ConfigError(
            f"{where_set('resume', presets)}resume is an option of the command line only, "
            "as in python -m nnexp resume=<run id>; remove it from the preset"
        )
    env_set = OmegaConf.select(config, "hydra.job.env_set") or {}
    for variable in env_set:
        if str(variable).startswith("MLFLOW_"):
            key = f"hydra.job.env_set.{variable}"
            if variable == "MLFLOW_TRACKING_URI":
                fix = f"to record runs elsewhere write tracking.uri={OmegaConf.select(config, key)}"
            else:
                fix = f"set {variable} in the environment that starts python -m nnexp"
            raise ConfigError(
                f"{where_set(key, presets, given)}{key}: MLflow's settings are nnexp's to make, not the job's "
                f"(nnexp checks and names the store before the job starts); {fix}"
            )


def check_preset_aliases(config_dir: Path | None, limit: int = MAX_ALIASED_VALUES) -> None:
    """Refuse a YAML preset whose aliases copy more than ``limit`` values, before Hydra composes (and expands) it."""
    for path in sorted(config_dir.rglob("*.yaml")) if config_dir is not None else ():
        problem = aliased_too_much(path, limit) if path.is_file() else None  # a FIFO would block; composing names it
        if problem is not None:
            raise ConfigError(
                f"{shown_path(path)}: {problem}, which composing would build one by one; write the values out"
            )


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
