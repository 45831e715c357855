"""QuantSpec: WHAT is quantized (shared by every method; HOW is the method).

A spec has three optional parts and a module filter:

* ``weights``: number format, bits, granularity (tensor / channel / group /
  input_channel) with group size, symmetric or not;
* ``activations``: format, bits, per-token dynamic or per-tensor (static or dynamic);
* ``kv_cache``: bits and granularity of keys and values (per-channel keys,
  per-token values, residual window, pre-RoPE keys);
* ``skip`` / ``only``: fnmatch patterns over module names (``lm_head`` skipped by default).

Everything is a frozen dataclass built from the Hydra dict with unknown keys
rejected (:func:`bitsweep.methods.core.registry.build_dataclass`); :meth:`QuantSpec.validate`
checks values and names the bad field. ``effective_bits`` counts storage of
scales and zero points: it is the leaderboard's bits axis.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from bitsweep.methods.core.formats import get_format
from bitsweep.methods.core.registry import ConfigError, build_dataclass

GRANULARITIES = ("tensor", "channel", "group", "input_channel")
ACT_GRANULARITIES = ("token", "tensor", "group")
KV_GRANULARITIES = ("token", "channel", "group")


@dataclass(frozen=True)
class WeightSpec:
    format: str = "int"
    bits: int = 4
    granularity: str = "group"  # tensor | channel | group | input_channel
    group_size: int = 128  # group: along K; input_channel: along N (-1 = whole column)
    sym: bool = False

    def validate(self, where: str = "quant.weights") -> None:
        fmt = get_format(self.format)
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise ConfigError(f"{where}.bits={self.bits!r}: must be an integer in 1..16")
        if not fmt.integer and self.bits != fmt.bits:
            raise ConfigError(f"{where}.bits={self.bits}: format '{self.format}' has {fmt.bits} bits")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"{where}.granularity={self.granularity!r}; valid: {', '.join(GRANULARITIES)}")
        if self.granularity in ("group", "input_channel") and not (self.group_size == -1 or self.group_size >= 1):
            raise ConfigError(f"{where}.group_size={self.group_size}: must be >= 1 or -1")
        if self.granularity == "group" and self.group_size == -1:
            raise ConfigError(f"{where}.group_size=-1 with granularity=group: use granularity=channel")
        if fmt.block_size is not None and self.granularity == "group" and self.group_size != fmt.block_size:
            raise ConfigError(f"{where}.group_size={self.group_size}: format '{self.format}' uses blocks of {fmt.block_size}")

    def group_elems(self, out_features: int, in_features: int) -> int:
        """Number of weights that share one scale (and zero)."""
        if self.granularity == "tensor":
            return out_features * in_features
        if self.granularity == "channel":
            return in_features
        if self.granularity == "group":
            return self.group_size
        return out_features if self.group_size == -1 else self.group_size

    def check_shape(self, name: str, out_features: int, in_features: int) -> None:
        """Group size must divide the grouped dimension of layer ``name``."""
        dim = {"group": in_features, "input_channel": out_features}.get(self.granularity)
        if dim is not None and self.group_size != -1 and dim % self.group_size:
            axis = "input" if self.granularity == "group" else "output"
            raise ConfigError(
                f"quant.weights.group_size={self.group_size} does not divide the {axis} "
                f"dimension {dim} of layer '{name}'")

    def effective_bits(self, out_features: int, in_features: int) -> float:
        fmt = get_format(self.format)
        n = self.group_elems(out_features, in_features)
        if fmt.integer:
            meta = 16 + (0 if self.sym else 16)  # fp16 scale (+ fp16 zero point)
        else:
            meta = fmt.scale_bits
        return self.bits + meta / n


@dataclass(frozen=True)
class ActSpec:
    format: str = "int"
    bits: int = 8
    granularity: str = "token"  # token (per-token) | tensor | group
    dynamic: bool = True  # False: static scale from calibration (per-tensor)
    sym: bool = True
    group_size: int = -1
    clip_ratio: float = 1.0

    def validate(self, where: str = "quant.activations") -> None:
        fmt = get_format(self.format)
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise ConfigError(f"{where}.bits={self.bits!r}: must be an integer in 1..16")
        if not fmt.integer and self.bits != fmt.bits:
            raise ConfigError(f"{where}.bits={self.bits}: format '{self.format}' has {fmt.bits} bits")
        if self.granularity not in ACT_GRANULARITIES:
            raise ConfigError(f"{where}.granularity={self.granularity!r}; valid: {', '.join(ACT_GRANULARITIES)}")
        if not self.dynamic and self.granularity != "tensor":
            raise ConfigError(f"{where}.dynamic=false needs granularity=tensor (static per-tensor scale)")
        if not 0.0 < self.clip_ratio <= 1.0:
            raise ConfigError(f"{where}.clip_ratio={self.clip_ratio}: must be in (0, 1]")


@dataclass(frozen=True)
class KVSpec:
    format: str = "int"
    bits: int = 8
    key_granularity: str = "channel"
    value_granularity: str = "token"
    group_size: int = -1
    sym: bool = False
    residual: int = 0  # KIVI: most recent tokens kept in 16-bit
    pre_rope: bool = False  # KVQuant: quantize keys before RoPE

    def validate(self, where: str = "quant.kv_cache") -> None:
        get_format(self.format)
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise ConfigError(f"{where}.bits={self.bits!r}: must be an integer in 1..16")
        for key in ("key_granularity", "value_granularity"):
            if getattr(self, key) not in KV_GRANULARITIES:
                raise ConfigError(f"{where}.{key}={getattr(self, key)!r}; valid: {', '.join(KV_GRANULARITIES)}")
        if self.residual < 0:
            raise ConfigError(f"{where}.residual={self.residual}: must be >= 0")


@dataclass(frozen=True)
class QuantSpec:
    weights: WeightSpec | None = None
    activations: ActSpec | None = None
    kv_cache: KVSpec | None = None
    skip: tuple[str, ...] = ("lm_head", "*.lm_head")
    only: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "QuantSpec":
        spec = build_dataclass(cls, d or {}, "quant")
        spec.validate()
        return spec

    def validate(self) -> None:
        for part in (self.weights, self.activations, self.kv_cache):
            if part is not None:
                part.validate()

    @property
    def is_noop(self) -> bool:
        return self.weights is None and self.activations is None and self.kv_cache is None

    def applies_to(self, name: str) -> bool:
        """Module filter: ``only`` (if given) must match, ``skip`` must not."""
        if self.only and not any(fnmatch.fnmatchcase(name, p) for p in self.only):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.skip)

    def label(self) -> str:
        """Short label, e.g. 'W4g128', 'W8A8', 'W4A16 ch', 'W16'."""
        w = self.weights
        if w is None:
            wl = "W16"
        else:
            fmt = "" if w.format == "int" else f"-{w.format}"
            gran = {"group": f"g{w.group_size}", "channel": "", "tensor": "t",
                    "input_channel": f"ic{w.group_size}"}[w.granularity]
            wl = f"W{w.bits}{fmt}{gran}"
        if self.activations is not None:
            wl += f"A{self.activations.bits}"
        if self.kv_cache is not None:
            wl += f"KV{self.kv_cache.bits}"
        return wl
