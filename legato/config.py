"""One typed config tree per node kind: TOML in, frozen dataclasses out.

Every config class is a frozen dataclass whose fields all have defaults and a
one-line help in ``field(metadata={"help": ...})``.  ``load(cls, path)`` and
``build(cls, mapping)`` turn TOML into an instance and fail with
``ConfigError`` naming the dotted key path of the first problem (unknown key,
wrong type, bad value), so a node refuses to start on bad config instead of
failing later at request time.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad configuration; the message starts with the file and key path."""


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and its one-line help."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple default for sequences, a types.MappingProxyType for tables")
    if isinstance(default, types.MappingProxyType):  # read-only, but unhashable: dataclasses want a factory
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def section(cls: type, help: str) -> Any:
    """A nested config section whose default is the section's own defaults."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {type(value).__name__}")
        return build(tp, value, _prefix=path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: expected {_type_name(tp)}")
    if origin in (dict, collections.abc.Mapping):
        # a table of NAME = value (e.g. signing key id -> PEM file), read-only once loaded
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return types.MappingProxyType({k: _convert(item, v, f"{path}.{k}") for k, v in value.items()})
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected an array, got {type(value).__name__}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a path string, got {value!r}")
        return Path(value)
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def build(cls: type[T], data: dict[str, Any], _prefix: str = "") -> T:
    """Build a config dataclass from a mapping, checking every key and type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        path = f"{_prefix}.{key}" if _prefix else key
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{path}: unknown key (known keys here: {known})")
        kwargs[name] = _convert(hints[name], value, path)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        # a check in __post_init__ names its field first ("segment_duration 0.5 outside..."): point at it
        named = str(exc).split(" ", 1)[0]
        if named in fields:
            raise ConfigError(f"{_prefix + '.' if _prefix else ''}{named}: {exc}") from None
        raise ConfigError(f"{_prefix or '(top level)'}: {exc}") from None
    return obj


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables; ConfigError naming the file when it is missing, unreadable or not TOML."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def load(cls: type[T], path: str | Path) -> T:
    """Load and validate a TOML file into ``cls``; errors name file and key."""
    data = read_toml(path)
    try:
        return build(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_section(cls: type[T], path: str | Path, name: str, *, missing: str | None = None) -> T:
    """Table ``[name]`` of a TOML file into ``cls``, other tables ignored (so one node's file can
    serve several readers).  A missing table gives the defaults, or ConfigError(``missing``) when
    ``missing`` is given."""
    table = read_toml(path).get(name)
    if table is None and missing is not None:
        raise ConfigError(f"{path}: {missing}")
    if not isinstance(table, dict | None):
        raise ConfigError(f"{path}: {name}: expected a table")
    try:
        return build(cls, table or {}, _prefix=name)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` that skips ``None`` values (unset CLI flags)."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[type-var]


def describe(cls: type, _prefix: str = "") -> list[tuple[str, str, Any]]:
    """(key path, help, default) for every leaf setting: docs and --help use it."""
    rows = []
    for f in dataclasses.fields(cls):
        path = f"{_prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) or (f.default_factory is not dataclasses.MISSING):
            sub = typing.get_type_hints(cls)[f.name]
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                rows += describe(sub, path + ".")
                continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        rows.append((path, f.metadata.get("help", ""), default))
    return rows
