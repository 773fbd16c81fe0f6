"""`JsonConfig`: exact JSON round trips, tuples and nested configs restored from type hints,
one rule for unknown keys."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from sciffusion.core.config import JsonConfig


@dataclass(frozen=True)
class Inner(JsonConfig):
    hidden: int = 8
    kernel: tuple[int, int, int] = (3, 3, 3)


@dataclass
class Plain:
    """A nested dataclass that does not derive from JsonConfig."""

    a: float = 1.0
    b: tuple[str, ...] = ("x",)


@dataclass(frozen=True)
class Outer(JsonConfig):
    name: str
    channels: tuple[int, ...] = (32, 64)
    elements: tuple[str, ...] = ("H", "C")
    inner: Inner = field(default_factory=Inner)
    plain: Plain = field(default_factory=Plain)
    maybe: tuple[float, float] | None = None
    clip: float | None = 1.0
    layers: list[Inner] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def test_to_dict_is_plain_json():
    cfg = Outer(name="r", channels=(1, 2, 3), maybe=(0.5, 2.0), layers=[Inner(hidden=2)])
    assert cfg.to_dict() == {
        "name": "r",
        "channels": [1, 2, 3],
        "elements": ["H", "C"],
        "inner": {"hidden": 8, "kernel": [3, 3, 3]},
        "plain": {"a": 1.0, "b": ["x"]},
        "maybe": [0.5, 2.0],
        "clip": 1.0,
        "layers": [{"hidden": 2, "kernel": [3, 3, 3]}],
        "notes": {},
    }


def test_round_trip_through_json_text_is_exact():
    cfg = Outer(
        name="r",
        channels=(4,),
        inner=Inner(7, (1, 2, 3)),
        plain=Plain(2.5, ("p", "q")),
        maybe=(1.0, 3.0),
        clip=None,
        layers=[Inner(1), Inner(2)],
        notes={"k": [1, 2]},
    )
    back = Outer.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert type(back.channels) is tuple and back.inner.kernel == (1, 2, 3)
    assert type(back.plain) is Plain and back.plain.b == ("p", "q")
    assert type(back.maybe) is tuple and back.clip is None
    assert all(type(layer) is Inner for layer in back.layers)


def test_tuples_are_restored_from_lists():
    back = Outer.from_dict({"name": "r", "channels": [5, 6], "inner": {"kernel": [1, 1, 1]}})
    assert back.channels == (5, 6) and back.inner == Inner(8, (1, 1, 1))
    assert back.elements == ("H", "C")  # missing keys take their defaults


def test_unknown_keys_raise_naming_class_and_keys():
    with pytest.raises(ValueError) as err:
        Outer.from_dict({"name": "r", "chanels": [1], "zz": 0}, source="run/config.json")
    assert str(err.value).startswith(
        "Outer: unknown keys ['chanels', 'zz'] in run/config.json; known: ['channels', "
    )


def test_unknown_keys_of_a_nested_config_name_the_path():
    with pytest.raises(ValueError, match=r"^Inner: unknown keys \['depth'\] in cfg.json.inner;"):
        Outer.from_dict({"name": "r", "inner": {"depth": 3}}, source="cfg.json")


def test_missing_required_key_is_named():
    with pytest.raises(ValueError, match=r"^Outer: missing keys \['name'\] in dict$"):
        Outer.from_dict({})


def test_not_an_object_is_an_error():
    with pytest.raises(ValueError, match="Outer: expected a JSON object in dict, got list"):
        Outer.from_dict([1, 2])


def test_json_file_round_trip_and_errors_name_the_file(tmp_path):
    cfg = Outer(name="file", channels=(9,))
    path = tmp_path / "sub" / "config.json"
    text = cfg.to_json(path)
    assert path.read_text() == text and text.endswith("\n")
    assert json.loads(text)["channels"] == [9]
    assert Outer.from_json(path) == cfg
    path.write_text('{"name": "x", "bogus": 1}')
    with pytest.raises(ValueError, match=rf"unknown keys \['bogus'\] in {path}"):
        Outer.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"Outer: {path} is not valid JSON"):
        Outer.from_json(path)


def test_upgrade_hook_maps_old_names():
    @dataclass(frozen=True)
    class Renamed(JsonConfig):
        width: int = 1

        @classmethod
        def _upgrade(cls, d):
            if "hidden" in d:
                d["width"] = d.pop("hidden")
            return d

    assert Renamed.from_dict({"hidden": 4}) == Renamed(width=4)


def test_a_non_dataclass_subclass_cannot_serialise():
    class NotData(JsonConfig):
        pass

    with pytest.raises(TypeError, match="not a dataclass"):
        NotData().to_dict()
