"""bitsweep methods: registry, QuantSpec, number formats, quantizers, methods, modules.

Importing this package registers the built-in methods. Methods that need heavy
optional dependencies register lazily (imported on first lookup).
"""
from __future__ import annotations

import importlib
import pkgutil

from .registry import (METHODS, ConfigError, Method, MethodConfig, UnknownNameError,
                       build_method, method_fields, register_method)
from .spec import ActSpec, KVSpec, QuantSpec, WeightSpec

# Every module in this package that registers a method is listed here.
_METHOD_MODULES = ("none", "rtn")
_OPTIONAL = ("gptq", "awq", "smoothquant", "llm_int8", "hqq", "rotation", "spqr", "adadim")


def _load_builtin() -> None:
    for mod in _METHOD_MODULES:
        importlib.import_module(f"{__name__}.{mod}")
    present = {m.name for m in pkgutil.iter_modules(__path__)}
    for mod in _OPTIONAL:
        if mod in present:
            importlib.import_module(f"{__name__}.{mod}")


_load_builtin()

__all__ = ["METHODS", "ConfigError", "Method", "MethodConfig", "UnknownNameError",
           "build_method", "method_fields", "register_method", "QuantSpec", "WeightSpec",
           "ActSpec", "KVSpec"]
