"""bitsweep methods: machinery in ``core/``, methods grouped by family, discovered.

Layout::

    core/          registry, QuantSpec, formats, quantizers, engine, structure, modules, ...
    weight_only/   none, rtn, gptq, awq, hqq, spqr, adadim, ...
    weight_act/    smoothquant, llm_int8, rotation, ...
    qat/           quantization-aware training
    diffusion/     diffusion-specific methods

A new method is one file in a family folder (decorated ``@register_method``) plus
``conf/method/<name>.yaml``: :func:`discover` imports every module of every family
folder (recursively), so nothing else needs editing. A module whose optional
dependency is missing is skipped with a debug log line and its methods are absent.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

from bitsweep.kernels._checkout import drop_checkout_root

drop_checkout_root()  # a checkout root on sys.path would shadow PyPI's `kernels`

# isort: split
from bitsweep.methods.core.registry import (METHODS, ConfigError, Method, MethodConfig,
                                            UnknownNameError, build_method, method_fields,
                                            register_method)
from bitsweep.methods.core.spec import ActSpec, KVSpec, QuantSpec, WeightSpec

log = logging.getLogger(__name__)

FAMILIES = ("weight_only", "weight_act", "qat", "diffusion")


def discover() -> list[str]:
    """Import every method module under the family folders; returns the module names."""
    found = []
    for family in FAMILIES:
        pkg = importlib.import_module(f"{__name__}.{family}")
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as exc:  # optional dependency missing
                if exc.name and exc.name.split(".")[0] == "bitsweep":
                    raise
                log.debug("method module %s skipped: %s", info.name, exc)
                continue
            found.append(info.name)
    return found


discover()

__all__ = ["METHODS", "ConfigError", "Method", "MethodConfig", "UnknownNameError",
           "build_method", "method_fields", "register_method", "QuantSpec", "WeightSpec",
           "ActSpec", "KVSpec", "discover", "FAMILIES"]
