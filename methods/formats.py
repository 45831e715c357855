"""Number formats: one table with exact rounding semantics, shared by methods and kernels.

Contract
--------
``FORMATS`` maps a name to a :class:`NumberFormat`. A format answers:

* ``bits``: storage bits per element;
* ``scale_bits`` / ``block_size``: storage of its shared scale (a block format such
  as MXFP4 forces ``block_size`` = 32 and an 8-bit E8M0 scale; plain element
  formats use a 16-bit scale per group chosen by the spec);
* ``fake_quantize(x, group_size)``: ``x`` [N, K] -> dequantized [N, K], scaling each
  group of ``group_size`` consecutive elements of a row (``-1`` = whole row).

The integer family (``int``) is special-cased by :mod:`methods.quantizers`, which
produces integer codes + scale + zero point in GPTQ's convention so real kernels
can pack them; every other format is fake-quantized (dequantize then matmul).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import Registry

FORMATS: Registry["NumberFormat"] = Registry("number format")


@dataclass(frozen=True)
class NumberFormat:
    """Base description of a number format (see module docstring)."""

    name: str
    bits: int
    scale_bits: int = 16
    block_size: int | None = None
    integer: bool = False

    def fake_quantize(self, x: torch.Tensor, group_size: int) -> torch.Tensor:
        raise NotImplementedError(f"format '{self.name}' has no fake_quantize")


@dataclass(frozen=True)
class IntFormat(NumberFormat):
    """INT-k, symmetric or asymmetric; rounding is done by methods.quantizers."""

    integer: bool = True


def register_format(fmt: NumberFormat) -> NumberFormat:
    FORMATS.register(fmt.name)(fmt)
    return fmt


# INT-k: bits come from the spec (1..16); this entry's ``bits`` is a placeholder.
INT = register_format(IntFormat(name="int", bits=0))


def get_format(name: str) -> NumberFormat:
    return FORMATS.get(name)
