"""Registry: names, duplicates, unknown names, constructor rules, build and validate.

Every test uses a fresh ``Registry("thing", Base)``, so the global registries are never touched.
"""

import enum
import inspect
from typing import Optional

import pytest

from nnexp.errors import ParameterError, PluginError, require
from nnexp.registry import Registry, config_parameters, registration_source


class Base:
    """A plugin base with no constructor of its own."""


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Sized(Base):
    def __init__(self, size: int = 3, scale: float = 1.0) -> None:
        require(size >= 1, "size", "must be >= 1", size)
        self.size, self.scale = size, scale


class Other(Base):
    pass


@pytest.fixture
def things() -> Registry:
    return Registry("thing", Base)


def test_register_returns_the_class_and_get_finds_it(things: Registry) -> None:
    assert things.register("sized")(Sized) is Sized
    assert things.get("sized") is Sized
    assert "sized" in things
    assert "other" not in things


def test_names_are_sorted(things: Registry) -> None:
    things.register("zeta")(Other)
    things.register("alpha")(Sized)
    assert things.names() == ["alpha", "zeta"]
    assert things.available() == "alpha, zeta"
    assert [name for name, _ in things.items()] == ["alpha", "zeta"]


def test_duplicate_name_raises_naming_the_first_registrant(things: Registry) -> None:
    things.register("sized")(Sized)
    with pytest.raises(PluginError, match=r"thing 'sized' is already registered by .*test_registry\.Sized"):
        things.register("sized")(Other)
    assert things.get("sized") is Sized


def test_duplicate_error_names_the_first_registrants_source(things: Registry) -> None:
    with registration_source("plugins/first.py"):
        things.register("sized")(Sized)
    with registration_source("plugins/second.py"), pytest.raises(PluginError, match=r"plugins/first\.py"):
        things.register("sized")(Other)
    assert things.source("sized") == "plugins/first.py"


def test_source_defaults_to_the_module(things: Registry) -> None:
    things.register("sized")(Sized)
    assert Sized.__module__ in things.source("sized")


def test_override_replaces_on_purpose(things: Registry) -> None:
    things.register("sized")(Sized)
    things.register("sized", override=True)(Other)
    assert things.get("sized") is Other


def test_unknown_name_lists_the_available_ones(things: Registry) -> None:
    things.register("sized")(Sized)
    things.register("other")(Other)
    with pytest.raises(PluginError, match=r"^thing 'sizd' is not registered; available: other, sized$"):
        things.get("sizd")


def test_non_subclass_is_rejected(things: Registry) -> None:
    class Stranger:
        pass

    with pytest.raises(PluginError, match="must subclass Base"):
        things.register("stranger")(Stranger)
    assert "stranger" not in things


def test_non_class_is_rejected(things: Registry) -> None:
    with pytest.raises(PluginError, match="must subclass Base"):
        things.register("function")(lambda: None)


@pytest.mark.parametrize("name", ["CamelCase", "has-dash", "1st", "two words"])
def test_names_must_be_snake_case(things: Registry, name: str) -> None:
    with pytest.raises(PluginError, match="snake_case"):
        things.register(name)(Sized)


UNTYPABLE = ["café", "\u0131", "x=y", "a,b", "a/b", "a b", "nan", "inf", "null", "true", "false", 7]


@pytest.mark.parametrize("name", UNTYPABLE)
def test_a_name_that_cannot_be_chosen_on_the_command_line_is_refused(things: Registry, name: object) -> None:
    """``café`` was accepted, then ``thing=café`` failed to parse; Hydra reads ``nan`` as a float, ``null`` as none."""
    with pytest.raises(PluginError) as refused:
        things.register(name)(Sized)  # type: ignore[arg-type]
    assert str(refused.value) == (
        f"Sized: thing name {name!r} cannot be chosen on the command line; a name must be snake_case ASCII matching "
        "[a-z_][a-z0-9_]*, as mnist_idx or two_layer, and not null, true, false, inf, nan"
    )
    assert name not in things


def test_every_built_in_name_can_be_chosen_on_the_command_line() -> None:
    from nnexp.plugins import load_builtins
    from nnexp.registry import HYDRA_WORDS, NAME_PATTERN, REGISTRIES

    load_builtins()
    names = [name for registry in REGISTRIES for name in registry.names()]
    assert "mnist_idx" in names
    assert all(NAME_PATTERN.fullmatch(name) and name not in HYDRA_WORDS for name in names)


def test_reserved_name_parameter_is_rejected(things: Registry) -> None:
    class Named(Base):
        def __init__(self, name: str = "x") -> None:
            self.label = name

    with pytest.raises(PluginError, match=r"Named\.__init__ parameter 'name'.*reserved"):
        things.register("named")(Named)
    assert "named" not in things


def test_var_positional_is_rejected(things: Registry) -> None:
    class Starred(Base):
        def __init__(self, *args: int) -> None:
            self.args = args

    with pytest.raises(PluginError, match=r"Starred\.__init__ parameter 'args'"):
        things.register("starred")(Starred)


def test_var_keyword_is_rejected(things: Registry) -> None:
    class Keywords(Base):
        def __init__(self, size: int = 1, **options: int) -> None:
            self.options = options

    with pytest.raises(PluginError, match=r"Keywords\.__init__ parameter 'options'"):
        things.register("keywords")(Keywords)


def test_unannotated_parameter_is_rejected(things: Registry) -> None:
    class Bare(Base):
        def __init__(self, size=3) -> None:  # the missing annotation is the point
            self.size = size

    with pytest.raises(PluginError, match=r"Bare\(size\) needs a type annotation, e.g. size: int = 3$"):
        things.register("bare")(Bare)


@pytest.mark.parametrize("annotation", [dict, dict[str, int], tuple[int, int], object, int | str, list])
def test_unsupported_annotation_is_rejected(things: Registry, annotation: object) -> None:
    def init(self, field: annotation = None) -> None:  # type: ignore[valid-type]
        self.field = field

    Odd = type("Odd", (Base,), {"__init__": init})
    with pytest.raises(PluginError, match=r"Odd\(field: .+\) is not a config type; use int, float"):
        things.register("odd")(Odd)
    assert "odd" not in things


def test_supported_annotations_are_accepted(things: Registry) -> None:
    class Rich(Base):
        def __init__(
            self,
            count: Optional[int] = None,  # noqa: UP045 - typing.Optional must be accepted as well
            sizes: list[int] = [1],  # noqa: B006 - never mutated
            color: Color = Color.RED,
            limit: int | None = None,
            label: str = "x",
            flag: bool = False,
            rate: float = 0.5,
            names: Optional[list[str]] = None,  # noqa: UP045
        ) -> None:
            self.count = count

    things.register("rich")(Rich)
    assert [name for name, _, _ in config_parameters(Rich)] == [
        "count",
        "sizes",
        "color",
        "limit",
        "label",
        "flag",
        "rate",
        "names",
    ]


def test_class_without_constructor_has_no_config_fields() -> None:
    assert config_parameters(Other) == []


def test_mandatory_parameter_keeps_an_empty_default(things: Registry) -> None:
    class Needs(Base):
        def __init__(self, path: str) -> None:
            self.path = path

    things.register("needs")(Needs)
    assert config_parameters(Needs) == [("path", str, inspect.Parameter.empty)]


def test_build_passes_the_fields(things: Registry) -> None:
    things.register("sized")(Sized)
    built = things.build({"name": "sized", "size": 5, "scale": 2.0})
    assert isinstance(built, Sized)
    assert (built.size, built.scale) == (5, 2.0)
    assert things.build({"name": "sized"}).size == 3


def test_build_qualifies_parameter_errors_with_the_kind(things: Registry) -> None:
    things.register("sized")(Sized)
    with pytest.raises(ParameterError, match=r"^thing\.size must be >= 1, got 0$") as info:
        things.build({"name": "sized", "size": 0})
    assert info.value.field == "thing.size"


def test_build_of_an_unknown_name_lists_the_available_ones(things: Registry) -> None:
    things.register("sized")(Sized)
    with pytest.raises(PluginError, match="available: sized"):
        things.build({"name": "nope"})


def test_validate_returns_a_registered_name(things: Registry) -> None:
    things.register("sized")(Sized)
    assert things.validate("sized", "model.thing") == "sized"


def test_validate_error_names_the_field_and_lists_the_available_names(things: Registry) -> None:
    things.register("sized")(Sized)
    things.register("other")(Other)
    with pytest.raises(ParameterError, match=r"^model\.thing must be a registered thing \(other, sized\), got 'nope'$"):
        things.validate("nope", "model.thing")


def test_snapshot_and_restore(things: Registry) -> None:
    things.register("sized")(Sized)
    state = things.snapshot()
    things.register("other")(Other)
    things.register("sized", override=True)(Other)
    things.restore(state)
    assert things.names() == ["sized"]
    assert things.get("sized") is Sized
    things.register("other")(Other)  # the restored registry no longer knows the later registration
    assert things.names() == ["other", "sized"]


def test_registries_are_independent() -> None:
    first, second = Registry("thing", Base), Registry("thing", Base)
    first.register("sized")(Sized)
    assert "sized" not in second
