"""Generic, neutral config machinery: registries, strict dataclass configs, user errors.

Used by every registry of bitsweep (methods, evaluators, models, studies, tables) and by
the harness; it imports nothing of bitsweep. ``ConfigError`` is a user mistake (the CLI
prints it as one line and exits 2); lookups name the bad value, the valid names and the
closest match; :func:`build_dataclass` rejects unknown keys.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import typing
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a configuration: names the field and the valid choices."""


class UnknownNameError(ConfigError, KeyError):
    """Lookup of a name that no registry entry has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(name), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Name -> object registry with helpful errors and lazy imports."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def register_lazy(self, name: str, module: str) -> None:
        self._lazy[name] = module

    def names(self) -> list[str]:
        lazy = {n for n, mod in self._lazy.items() if _module_exists(mod)}
        return sorted(set(self._items) | lazy)

    def get(self, name: str) -> T:
        if name not in self._items and name in self._lazy:
            try:
                importlib.import_module(self._lazy[name])
            except ModuleNotFoundError as exc:
                raise UnknownNameError(
                    f"{self.kind} '{name}' is not available: {exc}; "
                    f"valid: {', '.join(self.names())}") from None
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; valid: {', '.join(self.names())}"
                + did_you_mean(name, self.names())
            )
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._lazy


def build_dataclass(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, rejecting unknown keys.

    Nested dataclass fields (also ``X | None``) are built recursively from dicts;
    tuples are restored from lists (YAML has no tuples). ``where`` names the
    config path in errors.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        bad = unknown[0]
        raise ConfigError(
            f"{where}: unknown key '{bad}'; valid keys: {', '.join(sorted(fields))}"
            + did_you_mean(bad, list(fields))
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, val in values.items():
        sub = _nested_dataclass(hints.get(key))
        if sub is not None and isinstance(val, dict):
            val = build_dataclass(sub, val, f"{where}.{key}")
        elif isinstance(val, list) and _is_tuple(hints.get(key)):
            val = tuple(val)
        kwargs[key] = val
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required field
        raise ConfigError(f"{where}: {exc}") from None


def _nested_dataclass(hint: Any) -> type | None:
    """The dataclass named by a type hint, looking inside ``X | None``."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _is_tuple(hint: Any) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple or any(
        typing.get_origin(a) is tuple or a is tuple for a in typing.get_args(hint))


