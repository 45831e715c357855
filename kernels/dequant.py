"""Dequantize a packed weight to a dense [N, K] fp16/bf16/fp32 matrix in one memory-bound pass.

Contract: ``dequantize(pw, dtype) -> [N, K]`` equals ``bitsweep.kernels.packing.dequantize``
(computed in fp32, rounded once to ``dtype``). Used by weight_only's
``dequant`` path for large M (prefill): dequantize once, then torch's own
matmul, which beats the fused GEMM there (kernels/NOTES.md); it costs a
temporary N*K*2-byte buffer.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitsweep.kernels._tuning import interpreting
from bitsweep.kernels.packing import PackedWeight, values_per_word
from bitsweep.kernels.wo_mma import MMA_BITS, _dequant_tile, dequant_asm


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


@triton.jit
def _dequant_dense_kernel(qw_ptr, s_ptr, sz_ptr, w_ptr, K, KW, G,
                          BITS: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_W: tl.constexpr, USE_ASM: tl.constexpr, ASM: tl.constexpr):
    """Dense layouts (no padded slots; N % BLOCK_N == 0, KW % BLOCK_W == 0): unmasked 16-byte loads and stores.

    The tile is dequantized by wo_mma's packed-half2 PTX into the natural K order (tl.join tree), so
    each row's BLOCK_W * P outputs are contiguous.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    w0 = tl.program_id(1) * BLOCK_W
    q = tl.load(qw_ptr + rows[:, None] * KW + (w0 + tl.arange(0, BLOCK_W))[None, :])
    if WPG % BLOCK_W == 0:
        soff = rows * G + w0 // WPG
        s = tl.load(s_ptr + soff)[:, None]
        sz = tl.load(sz_ptr + soff)[:, None]
    else:
        soff = rows[:, None] * G + ((w0 + tl.arange(0, BLOCK_W)) // WPG)[None, :]
        s = tl.load(s_ptr + soff)
        sz = tl.load(sz_ptr + soff)
    w = _dequant_tile(q, s, sz, w_ptr.dtype.element_ty, BITS, P, USE_ASM, ASM)  # [BN, BW * P]
    k = w0 * P + tl.arange(0, BLOCK_W * P)
    tl.store(w_ptr + rows[:, None] * K + k[None, :], w)


def _dense_ok(pw: PackedWeight, dtype: torch.dtype, bn: int, bw: int) -> bool:
    n, kw = pw.qweight.shape
    wpg = pw.words_per_group
    return (dtype in (torch.float16, torch.bfloat16) and pw.bits in MMA_BITS
            and pw.group_size % values_per_word(pw.bits) == 0 and n % bn == 0 and kw % bw == 0
            and (wpg % bw == 0 or bw % wpg == 0))


def dequantize(pw: PackedWeight, dtype: torch.dtype = torch.float16, dense_cfg: tuple[int, int] | None = (32, 16),
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Dense weight [N, K] in ``dtype`` (one Triton launch).

    ``dense_cfg`` = (BLOCK_N, BLOCK_W) of the vectorized kernel for dense layouts on CUDA (None: the
    general kernel, which also handles padded 3-bit groups and ragged shapes). ``out``: a contiguous
    [N, K] ``dtype`` tensor to write into (e.g. a reused chunk buffer) instead of a new one.
    """
    n, kw = pw.qweight.shape
    if out is None:
        w = torch.empty((n, pw.in_features), device=pw.qweight.device, dtype=dtype)
    else:
        if out.shape != (n, pw.in_features) or out.dtype != dtype or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous [{n}, {pw.in_features}] {dtype} tensor; got "
                             f"{tuple(out.shape)} {out.dtype} contiguous={out.is_contiguous()}")
        w = out
    if dense_cfg is not None and (pw.qweight.is_cuda or interpreting()) and _dense_ok(pw, dtype, *dense_cfg):
        bn, bw = dense_cfg
        _dequant_dense_kernel[(n // bn, kw // bw)](
            pw.qweight, pw.scale, pw.szero, w, pw.in_features, kw, pw.num_groups, BITS=pw.bits,
            WPG=pw.words_per_group, P=values_per_word(pw.bits), BLOCK_N=bn, BLOCK_W=bw, USE_ASM=not interpreting(),
            ASM=dequant_asm(pw.bits, dtype == torch.bfloat16), num_warps=4)
        return w
    p = values_per_word(pw.bits)
    bn, bw = 16, 64
    grid = (triton.cdiv(n, bn), triton.cdiv(kw, bw))
    _dequant_kernel[grid](pw.qweight, pw.scale, pw.szero, w, n, pw.in_features, kw, pw.num_groups,
                          BITS=pw.bits, GROUP=pw.group_size, WPG=pw.words_per_group, P=p,
                          PP=1 << (p - 1).bit_length(), BLOCK_N=bn, BLOCK_W=bw, num_warps=4)
    return w
