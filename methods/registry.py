"""Registries: methods (and, through the same generic class, evaluators).

Contract
--------
A *method* is two things registered under one name:

* a frozen dataclass ``Config`` -- its identity: ``name``, ``version`` and every
  hyper-parameter. Building it from a dict rejects unknown keys, so a typo in a
  YAML file is an error, never a silently new key.
* a class with three steps that the runner always calls in order:
  ``prepare(model)`` attaches observers, ``calibrate(model, batches)`` feeds data,
  ``convert(model)`` writes quantized weights / swaps modules. Data-free methods
  leave the first two empty, so nothing downstream branches on a method name.

Lookup errors name the bad value and list the valid names ("did you mean").
Optional heavy methods register lazily: ``register_lazy(name, "module.path")``
imports the module only when the name is looked up.
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


# ---------------------------------------------------------------- methods ----

@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method config: identity fields. Subclasses add hyper-parameters."""

    name: str = ""
    version: int = 1


class Method:
    """Base class: the three steps. ``spec`` is the shared QuantSpec (what to quantize)."""

    Config: type[MethodConfig] = MethodConfig
    #: True if the method needs calibration batches (the runner loads them).
    needs_calibration: bool = False
    #: Activation quantization support: False -> specs with activations are rejected.
    supports_activations: bool = True

    def __init__(self, config: MethodConfig, spec: Any):
        self.config = config
        self.spec = spec

    def validate(self) -> None:
        """Raise ConfigError if this method cannot do ``self.spec`` (before any work)."""
        if self.spec.activations is not None and not self.supports_activations:
            raise ConfigError(
                f"method '{self.config.name}' does not support activation quantization "
                f"(quant.activations must be null)"
            )

    def require_int_weights(self) -> None:
        """ConfigError unless the spec quantizes weights with the INT format."""
        w = self.spec.weights
        if w is None or w.format != "int":
            raise ConfigError(f"method '{self.config.name}' supports quant.weights.format 'int' only "
                              f"(got {None if w is None else w.format!r})")

    def prepare(self, model) -> None:  # attach observers
        return None

    def calibrate(self, model, batches) -> None:  # feed data
        return None

    def convert(self, model):  # write quantized weights / swap modules
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a Method subclass under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass")
        return METHODS.register(name)(cls)

    return deco


def build_method(cfg: dict[str, Any], spec: Any) -> Method:
    """Build the registered method from a config dict ``{name: ..., <fields>}``."""
    cfg = dict(cfg)
    name = cfg.get("name")
    if not name:
        raise ConfigError(f"method: missing 'name'; valid: {', '.join(METHODS.names())}")
    cls = METHODS.get(name)
    config = build_dataclass(cls.Config, cfg, f"method[{name}]")
    method = cls(config, spec)
    method.validate()
    return method


def method_fields(name: str) -> list[tuple[str, str, Any]]:
    """(field, type, default) of a method's config, for `bitsweep methods`."""
    cls = METHODS.get(name)
    out = []
    for f in dataclasses.fields(cls.Config):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append((f.name, str(f.type), default))
    return out
