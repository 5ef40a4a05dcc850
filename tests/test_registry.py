"""Tests of vgym/registry.py: registration, lookups, error messages and lazy entry points.

Every test builds its own local ``Registry`` so the global TASKS/TOOLS registries are never touched.
"""

from __future__ import annotations

import math

import pytest

from vgym.errors import UnknownNameError, VgymError
from vgym.registry import Registry


@pytest.fixture
def reg() -> Registry:
    return Registry("widget")


def test_register_then_get_returns_the_same_object(reg: Registry) -> None:
    obj = object()
    assert reg.register("thing", obj) is obj
    assert reg.get("thing") is obj
    assert "thing" in reg
    assert "other" not in reg
    assert len(reg) == 1


def test_decorator_form_registers_and_returns_the_function_unchanged(reg: Registry) -> None:
    @reg.register("double")
    def double(x: int) -> int:
        return 2 * x

    assert reg.get("double") is double
    assert double(3) == 6


def test_names_and_iteration_are_sorted(reg: Registry) -> None:
    for name in ("b", "c", "a"):
        reg.register(name, name.upper())
    assert reg.names() == ["a", "b", "c"]
    assert list(reg) == ["a", "b", "c"]


def test_registering_a_name_twice_raises_and_keeps_the_first(reg: Registry) -> None:
    reg.register("thing", 1)
    with pytest.raises(VgymError, match=r"widget 'thing' is already registered"):
        reg.register("thing", 2)
    with pytest.raises(VgymError, match=r"already registered"):
        reg.register("thing")(3)  # the decorator form is checked too
    assert reg.get("thing") == 1


def test_unknown_name_lists_valid_names_and_suggests_the_closest(reg: Registry) -> None:
    reg.register("crop", 1)
    reg.register("resize", 2)
    with pytest.raises(UnknownNameError, match=r"Unknown widget 'crpo'\. Did you mean 'crop'\?") as info:
        reg.get("crpo")
    assert "['crop', 'resize']" in str(info.value)
    # Callers that only know dict semantics can still catch it.
    assert isinstance(info.value, KeyError)


def test_unknown_name_without_a_close_match_has_no_hint(reg: Registry) -> None:
    reg.register("crop", 1)
    with pytest.raises(UnknownNameError, match=r"Registered widgets: \['crop'\]") as info:
        reg.get("zzzzzzzz")
    assert "Did you mean" not in str(info.value)


def test_unknown_name_in_an_empty_registry(reg: Registry) -> None:
    with pytest.raises(UnknownNameError, match=r"Registered widgets: \[\]"):
        reg.get("anything")


def test_lazy_entry_point_resolves_on_get(reg: Registry) -> None:
    reg.register("sqrt", "math:sqrt")
    assert reg.get("sqrt") is math.sqrt
    assert reg.get("sqrt")(16.0) == 4.0  # resolved once, then cached


def test_lazy_entry_point_to_a_missing_module_fails_on_get_not_on_register(reg: Registry) -> None:
    reg.register("ghost", "vgym_no_such_module_xyz:thing")  # registering must not import
    with pytest.raises(ModuleNotFoundError, match="vgym_no_such_module_xyz"):
        reg.get("ghost")


def test_plain_string_without_colon_is_stored_as_is(reg: Registry) -> None:
    reg.register("greeting", "hello")
    assert reg.get("greeting") == "hello"
