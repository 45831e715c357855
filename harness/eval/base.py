"""Evaluator registry and the metric-row contract.

An evaluator is a class registered by name with a nested frozen dataclass
``Config`` (fields from ``eval.<name>`` in the Hydra config; unknown keys are
errors) and ``evaluate(model, tokenizer, ctx) -> list[MetricRow]``. Every row
carries its stderr where one exists; a metric that cannot be computed here
(missing weights, no GPU) is a row with ``value=None`` and ``unavailable`` set to
the reason -- never a made-up number.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from bitsweep.methods.core.registry import Registry, build_dataclass


@dataclass
class MetricRow:
    name: str
    value: float | None
    stderr: float | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalContext:
    """What an evaluator may know about the run besides model and tokenizer."""

    device: str = "cpu"
    dtype: Any = None
    run_dir: str = "."
    seed: int = 0
    model_info: dict[str, Any] = field(default_factory=dict)
    record_extra: dict[str, Any] = field(default_factory=dict)
    #: {layer: "real" | "fake: <reason>"} when the run swapped in real kernels (``real=true``), else None
    real_layers: dict[str, str] | None = None
    #: {layer: "fused: ..." | "not fused: <reason>"} when the run fused siblings (``fuse=true``), else None
    fused_layers: dict[str, str] | None = None


class Evaluator:
    @dataclass(frozen=True)
    class Config:
        pass

    #: Protocol version: bump it when a change alters numbers for the same config
    #: (it is part of the config hash, so old records are not reused).
    version: int = 1
    #: Whether the evaluator needs the model on an accelerator (informational).
    needs_gpu: bool = False

    def __init__(self, config):
        self.config = config

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> list[MetricRow]:
        raise NotImplementedError


EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator")


def register_evaluator(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    return EVALUATORS.register(name)


def build_evaluator(name: str, values: dict[str, Any] | None) -> Evaluator:
    cls = EVALUATORS.get(name)
    return cls(build_dataclass(cls.Config, values or {}, f"eval.{name}"))
