"""The method registry and the method lifecycle (the generic registry is ``core.config``).

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
from typing import Any, Callable

from bitsweep.methods.core.config import (ConfigError, Registry, UnknownNameError, build_dataclass,
                                          did_you_mean)

__all__ = ["ConfigError", "UnknownNameError", "Registry", "build_dataclass", "did_you_mean",
           "MethodConfig", "Method", "METHODS", "register_method", "build_method", "method_fields"]


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
