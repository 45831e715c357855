"""Method ``none``: the 16-bit baseline. Leaves the model untouched.

Its QuantSpec is ignored (the runner normalises it away before hashing), so the
baseline of a model is computed once per model x evaluator and reused by every
column of a sweep.
"""
from __future__ import annotations

from dataclasses import dataclass

from bitsweep.methods.core.registry import Method, MethodConfig, register_method


@dataclass(frozen=True)
class NoneConfig(MethodConfig):
    name: str = "none"
    version: int = 1


@register_method("none")
class NoQuant(Method):
    Config = NoneConfig

    def validate(self) -> None:
        return None

    def convert(self, model):
        return model
