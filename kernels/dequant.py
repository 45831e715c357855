"""Dequantize a packed weight to a dense [N, K] fp16/bf16/fp32 matrix in one memory-bound pass.

Contract: ``dequantize(pw, dtype) -> [N, K]`` equals ``kernels.packing.dequantize``
(computed in fp32, rounded once to ``dtype``). Used by weight_only's
``dequant`` path for large M (prefill): dequantize once, then torch's own
matmul, which beats the fused GEMM there (kernels/NOTES.md); it costs a
temporary N*K*2-byte buffer.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.packing import PackedWeight, values_per_word


@triton.jit
def _dequant_kernel(qw_ptr, s_ptr, sz_ptr, w_ptr, N, K, KW, G,
                    BITS: tl.constexpr, GROUP: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr,
                    PP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    MASK: tl.constexpr = (1 << BITS) - 1
    CENTER: tl.constexpr = 1 << (BITS - 1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    wcol = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    rmask = rows < N
    wmask = wcol < KW
    q = tl.load(qw_ptr + rows[:, None] * KW + wcol[None, :], mask=rmask[:, None] & wmask[None, :], other=0)
    grp = wcol // WPG
    wig = wcol % WPG
    soff = rows[:, None] * G + grp[None, :]
    smask = rmask[:, None] & wmask[None, :]
    s = tl.load(s_ptr + soff, mask=smask, other=0).to(tl.float32)
    sz = tl.load(sz_ptr + soff, mask=smask, other=0).to(tl.float32)
    slots = tl.arange(0, PP)
    shifts = (slots % 2) * 16 + BITS * (slots // 2)  # [PP]
    c = ((q[:, :, None] >> shifts[None, None, :]) & MASK) - CENTER  # [BN, BW, PP]
    w = c.to(tl.float32) * s[:, :, None] - sz[:, :, None]
    kin = (wig * P)[:, None] + slots[None, :]  # column inside the group [BW, PP]
    k = (grp * GROUP)[:, None] + kin
    kvalid = wmask[:, None] & (slots[None, :] < P) & (kin < GROUP)
    ptr = w_ptr + rows[:, None, None] * K + k[None, :, :]
    tl.store(ptr, w.to(w_ptr.dtype.element_ty), mask=rmask[:, None, None] & kvalid[None, :, :])


def dequantize(pw: PackedWeight, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense weight [N, K] in ``dtype`` (one Triton launch)."""
    n, kw = pw.qweight.shape
    w = torch.empty((n, pw.in_features), device=pw.qweight.device, dtype=dtype)
    p = values_per_word(pw.bits)
    bn, bw = 16, 64
    grid = (triton.cdiv(n, bn), triton.cdiv(kw, bw))
    _dequant_kernel[grid](pw.qweight, pw.scale, pw.szero, w, n, pw.in_features, kw, pw.num_groups,
                          BITS=pw.bits, GROUP=pw.group_size, WPG=pw.words_per_group, P=p,
                          PP=1 << (p - 1).bit_length(), BLOCK_N=bn, BLOCK_W=bw, num_warps=4)
    return w
