"""Evaluators: registered by name (``bitsweep.harness.eval.base``); built-ins import lazily.

Each built-in lives in its own module; importing this package registers the
lazy names so lookups (and "did you mean") see them all without importing
heavy dependencies (lm-eval) until used.
"""
from __future__ import annotations

from .base import EVALUATORS, EvalContext, Evaluator, MetricRow, build_evaluator, register_evaluator

# name -> module that registers it (imported on first lookup)
_BUILTIN = {
    "ppl": "bitsweep.harness.eval.ppl",
    "lmeval": "bitsweep.harness.eval.lmeval",
    "speed": "bitsweep.harness.eval.speed",
    "memory": "bitsweep.harness.eval.memory",
}
for _name, _mod in _BUILTIN.items():
    EVALUATORS.register_lazy(_name, _mod)

__all__ = ["EVALUATORS", "EvalContext", "Evaluator", "MetricRow", "build_evaluator",
           "register_evaluator"]
