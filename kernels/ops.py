"""bitsweep kernels as torch custom ops, so ``torch.compile`` treats them as opaque calls.

Two ops in the ``bitsweep`` namespace (``torch.ops.bitsweep.*``):

* ``weight_only_linear(x, qweight, scale, szero, bias, bits, group_size,
  in_features, out_features, sym) -> y``: ``bitsweep.kernels.weight_only_linear`` on the
  PackedWeight made of those fields; x [..., K] -> y [..., N], y.dtype == x.dtype.
* ``w8a8_linear(x, wq, w_scale, bias) -> y``: ``bitsweep.kernels.w8a8_linear``
  (per-token activation quantize + scaled GEMM); x [..., K], wq int8/fp8 [N, K],
  w_scale fp32 [N] -> y [..., N], y.dtype == x.dtype.

Each has a fake (meta) implementation giving the output shape, dtype and
contiguous strides, so dynamo/inductor never trace into Triton launches or
the per-shape config tuning (``bitsweep.kernels._tuning``). Tuning times candidates on
the first call per shape on CUDA, so run every shape once eagerly before
compiling or capturing a CUDA graph. Eager results are exactly those of the
wrapped functions (the op only forwards its arguments).

Schema annotations are evaluated by ``torch.library``, so this module does
not use ``from __future__ import annotations``.
"""
from typing import Optional

import torch

from bitsweep.kernels.packing import PackedWeight
from bitsweep.kernels.w8a8 import w8a8_linear as _w8a8_linear
from bitsweep.kernels.weight_only import weight_only_linear as _weight_only_linear

__all__ = ["weight_only_linear_op", "w8a8_linear_op"]


@torch.library.custom_op("bitsweep::weight_only_linear", mutates_args=())
def weight_only_linear_op(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, szero: torch.Tensor,
                          bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int,
                          out_features: int, sym: bool) -> torch.Tensor:
    """y [..., N] = x [..., K] @ dequant(packed).T + bias (see bitsweep.kernels.weight_only_linear)."""
    pw = PackedWeight(qweight, scale, szero, bits, group_size, in_features, out_features, sym)
    return _weight_only_linear(x, pw, bias)


@weight_only_linear_op.register_fake
def _weight_only_linear_fake(x, qweight, scale, szero, bias, bits, group_size, in_features, out_features, sym):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.custom_op("bitsweep::w8a8_linear", mutates_args=())
def w8a8_linear_op(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                   bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y [..., N] = int8/fp8 GEMM(quant(x), wq) * s_x * w_scale + bias (see bitsweep.kernels.w8a8_linear)."""
    return _w8a8_linear(x, wq, w_scale, bias)


@w8a8_linear_op.register_fake
def _w8a8_linear_fake(x, wq, w_scale, bias):
    return x.new_empty(*x.shape[:-1], wq.shape[0])
