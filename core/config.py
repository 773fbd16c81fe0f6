"""`JsonConfig`: one base for dataclass configs that round-trip through JSON.

A config class is a (usually frozen) dataclass that also derives from `JsonConfig`::

    @dataclass(frozen=True)
    class NetConfig(JsonConfig):
        channels: tuple[int, ...] = (32, 64)
        dropout: float | None = None

    NetConfig.from_dict(NetConfig().to_dict()) == NetConfig()

`to_dict` gives plain JSON values (tuples become lists, nested dataclasses become dicts);
`from_dict` reads the field types from the class's type hints and turns lists back into
tuples and dicts back into nested dataclasses, so the round trip is exact.

One rule for unknown keys: a key that is not a field of the class is an error,
`ValueError("NetConfig: unknown keys ['chanels'] in run/config.json; known: [...]")`. A typo in a
hand-edited config, or a config of another kind, then fails where it is read instead of being
silently dropped. Missing keys take the field's default; a missing field without a default is a
`ValueError` naming it. A class that renamed a field keeps old files readable by overriding
`_upgrade(d)`, which maps an old dict onto the current fields before the check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from sciffusion.core.atomic import atomic_write_text

__all__ = ["JsonConfig", "from_jsonable", "to_jsonable"]

C = TypeVar("C", bound="JsonConfig")


def to_jsonable(value: Any) -> Any:
    """Plain JSON form of `value`: dataclasses -> dicts, tuples/lists -> lists, Paths -> strings.

    Dict keys become strings; other values (numbers, strings, booleans, None) pass unchanged.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType):
        return typing.get_args(hint)
    return None


def from_jsonable(hint: Any, value: Any, where: str = "value") -> Any:
    """Inverse of `to_jsonable` for a value whose type hint is `hint`.

    Lists become tuples where the hint is a tuple (`tuple[int, ...]` or `tuple[str, float]`),
    dicts become dataclasses where the hint is one (a `JsonConfig` through its own `from_dict`),
    and `X | None` / `Union` hints take the first member the value fits. Anything else is
    returned as it is.
    """
    if value is None:
        return None
    members = _union_args(hint)
    if members is not None:
        for member in members:
            if member is type(None):
                continue
            if _fits(member, value):
                return from_jsonable(member, value, where)
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        if issubclass(hint, JsonConfig):
            return hint.from_dict(value, source=where)
        return _build(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v, where) for v in value)
        if args and len(args) == len(value):
            return tuple(from_jsonable(a, v, where) for a, v in zip(args, value))
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)):
        return [from_jsonable(args[0] if args else Any, v, where) for v in value]
    if origin is dict and isinstance(value, Mapping) and len(args) == 2:
        return {k: from_jsonable(args[1], v, where) for k, v in value.items()}
    return value


def _fits(hint: Any, value: Any) -> bool:
    """Whether `value` (a JSON value) can stand for type `hint` (used to pick a Union member)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping) or isinstance(value, hint)
    origin = typing.get_origin(hint) or hint
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, Mapping)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(origin, type):
        return isinstance(value, origin)
    return True


def _check_keys(cls: type, d: Mapping[str, Any], where: str) -> None:
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields if f.init}
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise ValueError(
            f"{cls.__name__}: unknown keys {unknown} in {where}; known: {sorted(known)}"
        )
    required = [
        f.name
        for f in fields
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in d
    ]
    if required:
        raise ValueError(f"{cls.__name__}: missing keys {required} in {where}")


def _build(cls: type, d: Mapping[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a JSON dict, converting each field from its type hint."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{cls.__name__}: expected a JSON object in {where}, got {type(d).__name__}")
    _check_keys(cls, d, where)
    hints = typing.get_type_hints(cls)
    kwargs = {k: from_jsonable(hints.get(k, Any), v, f"{where}.{k}") for k, v in d.items()}
    return cls(**kwargs)


class JsonConfig:
    """Mixin for dataclass configs: `to_dict`/`from_dict` and `to_json`/`from_json`.

    Unknown keys are a `ValueError` naming the class, the unknown keys and the source.
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: tuples -> lists, nested configs -> dicts."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} derives from JsonConfig but is not a dataclass")
        return to_jsonable(self)

    @classmethod
    def _upgrade(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Map a dict written by an older version onto the current fields (default: unchanged)."""
        return d

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any], source: str = "dict") -> C:
        """Inverse of `to_dict`; `source` (a file name, say) is named in errors."""
        if not isinstance(d, Mapping):
            raise ValueError(
                f"{cls.__name__}: expected a JSON object in {source}, got {type(d).__name__}"
            )
        return _build(cls, cls._upgrade(dict(d)), source)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The config as indented JSON text with sorted keys; written atomically to `path` if given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls: type[C], path: str | os.PathLike) -> C:
        """Read a config file written by `to_json`; errors name the file."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cls.__name__}: {path} is not valid JSON: {err}") from err
        return cls.from_dict(d, source=str(path))
