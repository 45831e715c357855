"""Weight-only quantized linear (W2/W3/W4/W8, fp16/bf16/fp32 activations): y = x @ w_hat.T + b.

Paths over the packed layout of kernels/packing.py, chosen by M (thresholds from the H100
sweeps, kernels/NOTES.md):

* Dense layouts (bits 2/4/8, no padded slots):
  M = 1: GEMV v3 (kernels/gemv3.py: flat word tiles, per-word PTX that loads its own x and
  group scales, 4 words per call) for bits 2/4 with 16-byte-aligned rows, else GEMV v2
  (kernels/gemv.py); 2 <= M <= 16 on CUDA: the tensor-core GEMV (kernels/gemv_tc.py: PTX
  dequant straight into mma.sync A fragments) where it takes the layout; up to MMA_MAX_M:
  the fused tensor-core GEMM (kernels/wo_mma.py: PTX dequant in registers, swap-AB, split-K); larger M on CUDA:
  ``dequant`` = one vectorized dequantize pass (kernels/dequant.py) + torch's matmul (an N*K
  16-bit temporary). On Hopper, for 4-bit layouts it takes (kernels/wo_wgmma.py: a Gluon GEMM
  that dequantizes straight into wgmma's register A operand), the tuner times that fused GEMM's
  configs against the dequant path once per shape and keeps the faster (``large_m``; the H100
  result differs by shape, NOTES.md run 8; BITSWEEP_WGMMA=0 keeps the dequant path). If Triton
  fails to compile the MMA kernel for a layout, the unfused path runs and a warning says so.
* Padded layouts (3-bit groups): M <= GEMV_MAX_M: GEMV v2; then the older fused GEMM below
  (``gemm``: plain-integer dequant of a [BLOCK_N, BLOCK_K] tile + ``tl.dot``) up to
  DEQUANT_MIN_M (on CUDA the tuner times it against ``dequant`` and keeps the faster), then
  ``dequant``.
* The v1 GEMV (``gemv_v1``) runs only for layouts v2 cannot tile (a long per-channel group
  whose word count is neither a power of two <= 128 nor a multiple of 128).

Configs: on CUDA each (kernel, shape, bits, group, dtype) is tuned once per
process by timing the candidates (``bitsweep.kernels._timing.gpu_time_us``), results are
cached in memory and in a JSON file (``BITSWEEP_KERNEL_CACHE``, default
~/.cache/bitsweep/kernel_configs.json). Under TRITON_INTERPRET=1 (no timing
possible) a fixed config is used, so CPU tests run the same kernels.
"""
from __future__ import annotations

import functools
import logging
import os

import torch
import triton
import triton.language as tl

from bitsweep.kernels import _asm
from bitsweep.kernels import dequant as _dequant
from bitsweep.kernels import gemv as _gemv2
from bitsweep.kernels import gemv3 as _gemv3
from bitsweep.kernels import gemv_tc as _gemv_tc
from bitsweep.kernels import wo_mma as _mma
from bitsweep.kernels import wo_wgmma as _wgmma
from bitsweep.kernels._tiles import dot_acc, grouped_tile, store_or_add
from bitsweep.kernels._tuning import interpreting, tuned
from bitsweep.kernels.packing import PackedWeight, values_per_word

log = logging.getLogger(__name__)

GEMV_MAX_M = 4  # GEMV for M <= this when the fused MMA kernel cannot take the layout
MMA_GEMV_MAX_M = 1  # with an MMA-capable layout only M = 1 stays on the GEMV
MMA_MAX_M = 64  # fused MMA up to this M on CUDA, dequant + torch matmul above (H100 sweep, NOTES.md)
DEQUANT_MIN_M = 32  # layouts without the MMA path: dequantize once + torch matmul from here on
PATHS = ("gemv_tc", "gemv3", "gemv", "gemv_plain", "gemv_v1", "mma", "gemm", "dequant", "wgmma")
# large M on Hopper: the fused wgmma GEMM competes with dequant + matmul in the tuner (NOTES.md run 8)
USE_WGMMA = os.environ.get("BITSWEEP_WGMMA", "1") not in ("", "0")
WGMMA_MARGIN = 0.05  # it replaces dequant + matmul only when timed >= 5% faster (its times spread more)
USE_GEMV3 = True  # M=1 (and small-M 3-bit) on the v3 GEMV where it takes the layout (NOTES.md run 5)
USE_GEMV_TC = True  # 2 <= M <= GEMV_TC_MAX_M on the mma.sync GEMV where it takes the layout (NOTES.md run 6)
GEMV_TC_MAX_M = 16  # one token block: above it the weights would be read once per 16 tokens
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Programmatic dependent launch for the M=1 GEMV (sm_90+): the GEMV starts reading its weights while
# the previous kernel finishes (kernels/gemv3.py). BITSWEEP_PDL=0 turns it off (NOTES.md run 7).
USE_PDL = os.environ.get("BITSWEEP_PDL", "1") not in ("", "0")


_MMA_BROKEN: set = set()  # (shape, bits, group, dtype) keys whose MMA kernel did not compile (a cache)


class KernelInputError(ValueError):
    """Inputs a kernel cannot take (dtype, shape, device), raised before launch."""


# ----------------------------------------------------------------------------- GEMV
@triton.jit
def _xpair(x32_ptr, xoff, kb, wig, j: tl.constexpr, GROUP: tl.constexpr, P: tl.constexpr, wmask):
    """x pair j of each word as an int32 (half2 bits); 0 for padded slots."""
    valid = wmask & (wig * P + 2 * j < GROUP)
    return tl.load(x32_ptr + xoff + kb // 2 + j, mask=valid, other=0)


@triton.jit
def _gemv_kernel(x_ptr, x32_ptr, qw_ptr, s_ptr, sz_ptr, out_ptr, bias_ptr,
                 N, K, KW, G, WPS, stride_xm, stride_om,
                 BITS: tl.constexpr, GROUP: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, SPLIT_K: tl.constexpr,
                 USE_ASM: tl.constexpr, DOT_ASM: tl.constexpr, SUM_ASM: tl.constexpr,
                 HAS_BIAS: tl.constexpr, NUM_STAGES: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    w_start = pid_k * WPS
    w_end = tl.minimum(w_start + WPS, KW)
    acc = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    zacc = tl.zeros([BLOCK_N], dtype=tl.float32)
    xoff = m * (stride_xm // 2)
    for w0 in tl.range(w_start, w_end, BLOCK_W, num_stages=NUM_STAGES):
        wcol = w0 + tl.arange(0, BLOCK_W)
        wmask = wcol < w_end
        q = tl.load(qw_ptr + rows[:, None] * KW + wcol[None, :],
                    mask=rmask[:, None] & wmask[None, :], other=0)  # int32 [BN, BW]
        grp = wcol // WPG
        wig = wcol % WPG
        kb = grp * GROUP + wig * P  # first input column of each word [BW]
        if USE_ASM:
            p, xs = _gemv_tile_asm(q, x32_ptr, xoff, kb, wig, wmask, BITS, GROUP, P, DOT_ASM, SUM_ASM)
        else:
            p, xs = _gemv_tile_plain(q, x_ptr, m * stride_xm, kb, wig, wmask, K, BITS, GROUP, P)
        if WPG % BLOCK_W == 0:  # the whole tile lies in one group: per-row scale
            g0 = w0 // WPG
            s = tl.load(s_ptr + rows * G + g0, mask=rmask, other=0).to(tl.float32)
            sz = tl.load(sz_ptr + rows * G + g0, mask=rmask, other=0).to(tl.float32)
            acc += p * s[:, None]
            zacc += sz * tl.sum(xs, axis=0)
        else:
            gmask = rmask[:, None] & wmask[None, :]
            soff = rows[:, None] * G + grp[None, :]
            s = tl.load(s_ptr + soff, mask=gmask, other=0).to(tl.float32)
            sz = tl.load(sz_ptr + soff, mask=gmask, other=0).to(tl.float32)
            acc += p * s - sz * xs[None, :]
    y = tl.sum(acc, axis=1) - zacc
    if HAS_BIAS:
        if pid_k == 0:
            y += tl.load(bias_ptr + rows, mask=rmask, other=0).to(tl.float32)
    optr = out_ptr + m * stride_om + rows
    store_or_add(optr, y, rmask, SPLIT_K)


@triton.jit
def _gemv_tile_plain(q, x_ptr, xrow, kb, wig, wmask, K, BITS: tl.constexpr, GROUP: tl.constexpr,
                     P: tl.constexpr):
    """Integer-op dequant + dot for one [BN, BW] word tile -> (partial [BN, BW], sum x [BW])."""
    MASK: tl.constexpr = (1 << BITS) - 1
    CENTER: tl.constexpr = 1 << (BITS - 1)
    p = tl.zeros(q.shape, dtype=tl.float32)
    xs = tl.zeros([q.shape[1]], dtype=tl.float32)
    for j in tl.static_range(P // 2):
        k0 = kb + 2 * j
        v0 = wmask & (wig * P + 2 * j < GROUP) & (k0 < K)
        v1 = wmask & (wig * P + 2 * j + 1 < GROUP) & (k0 + 1 < K)
        x0 = tl.load(x_ptr + xrow + k0, mask=v0, other=0).to(tl.float32)
        x1 = tl.load(x_ptr + xrow + k0 + 1, mask=v1, other=0).to(tl.float32)
        c0 = ((q >> (BITS * j)) & MASK) - CENTER
        c1 = ((q >> (16 + BITS * j)) & MASK) - CENTER
        p += c0.to(tl.float32) * x0[None, :] + c1.to(tl.float32) * x1[None, :]
        xs += x0 + x1
    return p, xs


@triton.jit
def _gemv_tile_asm(q, x32_ptr, xoff, kb, wig, wmask, BITS: tl.constexpr, GROUP: tl.constexpr,
                   P: tl.constexpr, DOT_ASM: tl.constexpr, SUM_ASM: tl.constexpr):
    """Packed-half2 PTX dequant + dot (bits 2/3/4) -> (partial [BN, BW], sum x [BW])."""
    a0 = _xpair(x32_ptr, xoff, kb, wig, 0, GROUP, P, wmask)
    a1 = _xpair(x32_ptr, xoff, kb, wig, 1, GROUP, P, wmask)
    if BITS == 4:
        a2 = _xpair(x32_ptr, xoff, kb, wig, 2, GROUP, P, wmask)
        a3 = _xpair(x32_ptr, xoff, kb, wig, 3, GROUP, P, wmask)
        p = tl.inline_asm_elementwise(DOT_ASM, "=r,r,r,r,r,r",
                                      [q, a0[None, :], a1[None, :], a2[None, :], a3[None, :]],
                                      dtype=tl.float32, is_pure=True, pack=1)
        xs = tl.inline_asm_elementwise(SUM_ASM, "=r,r,r,r,r", [a0, a1, a2, a3],
                                       dtype=tl.float32, is_pure=True, pack=1)
    elif BITS == 3:
        a2 = _xpair(x32_ptr, xoff, kb, wig, 2, GROUP, P, wmask)
        a3 = _xpair(x32_ptr, xoff, kb, wig, 3, GROUP, P, wmask)
        a4 = _xpair(x32_ptr, xoff, kb, wig, 4, GROUP, P, wmask)
        p = tl.inline_asm_elementwise(DOT_ASM, "=r,r,r,r,r,r,r",
                                      [q, a0[None, :], a1[None, :], a2[None, :], a3[None, :], a4[None, :]],
                                      dtype=tl.float32, is_pure=True, pack=1)
        xs = tl.inline_asm_elementwise(SUM_ASM, "=r,r,r,r,r,r", [a0, a1, a2, a3, a4],
                                       dtype=tl.float32, is_pure=True, pack=1)
    else:
        a2 = _xpair(x32_ptr, xoff, kb, wig, 2, GROUP, P, wmask)
        a3 = _xpair(x32_ptr, xoff, kb, wig, 3, GROUP, P, wmask)
        a4 = _xpair(x32_ptr, xoff, kb, wig, 4, GROUP, P, wmask)
        a5 = _xpair(x32_ptr, xoff, kb, wig, 5, GROUP, P, wmask)
        a6 = _xpair(x32_ptr, xoff, kb, wig, 6, GROUP, P, wmask)
        a7 = _xpair(x32_ptr, xoff, kb, wig, 7, GROUP, P, wmask)
        p = tl.inline_asm_elementwise(DOT_ASM, "=r,r,r,r,r,r,r,r,r,r",
                                      [q, a0[None, :], a1[None, :], a2[None, :], a3[None, :],
                                       a4[None, :], a5[None, :], a6[None, :], a7[None, :]],
                                      dtype=tl.float32, is_pure=True, pack=1)
        xs = tl.inline_asm_elementwise(SUM_ASM, "=r,r,r,r,r,r,r,r,r", [a0, a1, a2, a3, a4, a5, a6, a7],
                                       dtype=tl.float32, is_pure=True, pack=1)
    return p, xs


# ----------------------------------------------------------------------------- GEMM
@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, s_ptr, sz_ptr, out_ptr, bias_ptr,
                 M, N, K, KW, G, WPS, stride_xm, stride_om,
                 BITS: tl.constexpr, GROUP: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr,
                 PP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_W: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
                 HAS_BIAS: tl.constexpr, NUM_STAGES: tl.constexpr, IEEE: tl.constexpr):
    MASK: tl.constexpr = (1 << BITS) - 1
    CENTER: tl.constexpr = 1 << (BITS - 1)
    DENSE: tl.constexpr = (P == PP) and (GROUP % P == 0)  # no padded slots: contiguous K tile
    BLOCK_K: tl.constexpr = BLOCK_W * PP
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = rm < M
    nmask = rn < N
    slots = tl.arange(0, PP)
    shifts = (slots % 2) * 16 + BITS * (slots // 2)  # [PP]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    w_start = pid_k * WPS
    w_end = tl.minimum(w_start + WPS, KW)
    for w0 in tl.range(w_start, w_end, BLOCK_W, num_stages=NUM_STAGES):
        wcol = w0 + tl.arange(0, BLOCK_W)
        wmask = wcol < w_end
        q = tl.load(qw_ptr + rn[:, None] * KW + wcol[None, :],
                    mask=nmask[:, None] & wmask[None, :], other=0)  # [BN, BW]
        c = ((q[:, :, None] >> shifts[None, None, :]) & MASK) - CENTER  # [BN, BW, PP]
        grp = wcol // WPG
        wig = wcol % WPG
        if WPG % BLOCK_W == 0:
            g0 = w0 // WPG
            s = tl.load(s_ptr + rn * G + g0, mask=nmask, other=0).to(tl.float32)
            sz = tl.load(sz_ptr + rn * G + g0, mask=nmask, other=0).to(tl.float32)
            w = c.to(tl.float32) * s[:, None, None] - sz[:, None, None]
        else:
            soff = rn[:, None] * G + grp[None, :]
            smask = nmask[:, None] & wmask[None, :]
            s = tl.load(s_ptr + soff, mask=smask, other=0).to(tl.float32)
            sz = tl.load(sz_ptr + soff, mask=smask, other=0).to(tl.float32)
            w = c.to(tl.float32) * s[:, :, None] - sz[:, :, None]
        w = tl.reshape(w, [BLOCK_N, BLOCK_K]).to(x_ptr.dtype.element_ty)
        if DENSE:
            kk = w0 * P + tl.arange(0, BLOCK_K)
            kvalid = kk < w_end * P
        else:
            kk2 = (grp * GROUP + wig * P)[:, None] + slots[None, :]  # [BW, PP]
            kv2 = wmask[:, None] & (slots[None, :] < P) & ((wig * P)[:, None] + slots[None, :] < GROUP)
            kk = tl.reshape(kk2, [BLOCK_K])
            kvalid = tl.reshape(kv2, [BLOCK_K]) & (kk < K)
        xt = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                     mask=mmask[:, None] & kvalid[None, :], other=0)  # [BM, BK]
        acc = dot_acc(acc, xt, tl.trans(w), IEEE)
    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + rn, mask=nmask, other=0).to(tl.float32)[None, :]
    optr = out_ptr + rm[:, None] * stride_om + rn[None, :]
    omask = mmask[:, None] & nmask[None, :]
    store_or_add(optr, acc, omask, SPLIT_K)


# ----------------------------------------------------------------------------- host side
def check_inputs(x: torch.Tensor, pw: PackedWeight) -> None:
    """Raise KernelInputError naming the broken constraint (before any launch)."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise KernelInputError(f"activation dtype {x.dtype} is not supported; valid: {SUPPORTED_DTYPES}")
    if x.shape[-1] != pw.in_features:
        raise KernelInputError(f"x has K={x.shape[-1]} columns but the weight has in_features={pw.in_features}")
    if x.device != pw.qweight.device:
        raise KernelInputError(f"x is on {x.device} but the packed weight is on {pw.qweight.device}")


def _pow2_ceil(v: int) -> int:
    return 1 << (v - 1).bit_length()


def _gemv_candidates(n: int, kw: int, wpg: int) -> list[dict]:
    out = [dict(BLOCK_N=bn, BLOCK_W=bw, SPLIT_K=sp, num_warps=4, NUM_STAGES=3)
           for bn, bw, sp in ((8, 16, 1), (8, 32, 1), (16, 32, 1), (16, 16, 1), (32, 16, 1), (8, 32, 4))]
    return [c for c in out if kw >= c["BLOCK_W"] * c["SPLIT_K"]] or [_gemv_fixed()]


def _gemv_fixed() -> dict:
    return dict(BLOCK_N=16, BLOCK_W=16, SPLIT_K=1, num_warps=4, NUM_STAGES=2)


def _gemv_default(n: int, kw: int) -> dict:
    """Untuned CUDA default: enough programs to fill 132 SMs several times."""
    split = 4 if n < 2048 and kw >= 4 * 32 else 1
    return dict(BLOCK_N=8, BLOCK_W=32 if kw >= 32 else 16, SPLIT_K=split, num_warps=4, NUM_STAGES=3)


def _gemm_candidates(m: int, n: int, kw: int) -> list[dict]:
    if m <= 64:
        tiles = [(16, 64, 8, 4, 1), (16, 128, 8, 4, 1), (16, 64, 8, 4, 4), (32, 128, 4, 4, 4)]
    else:
        tiles = [(128, 128, 8, 8, 1), (128, 256, 4, 8, 1), (64, 128, 8, 4, 1), (128, 128, 4, 4, 1)]
    out = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_W=bw, SPLIT_K=sp, num_warps=w, NUM_STAGES=3, GROUP_M=8)
           for bm, bn, bw, w, sp in tiles]
    return [c for c in out if kw >= c["BLOCK_W"] * c["SPLIT_K"]] or [_gemm_fixed(m)]


def _gemm_fixed(m: int) -> dict:
    return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_W=4, SPLIT_K=1, num_warps=4, NUM_STAGES=1, GROUP_M=4)


def _gemm_default(m: int, n: int, kw: int) -> dict:
    if m <= 64:
        split = 4 if (n // 64) < 132 and kw >= 32 else 1
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_W=8 if kw >= 8 * split else 4, SPLIT_K=split,
                    num_warps=4, NUM_STAGES=3, GROUP_M=8)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_W=8, SPLIT_K=1, num_warps=8, NUM_STAGES=3, GROUP_M=8)


def _launch_gemv(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: dict,
                 use_asm: bool) -> torch.Tensor:
    m, k = x2.shape
    n, kw = pw.qweight.shape
    bn, bw, split = cfg["BLOCK_N"], cfg["BLOCK_W"], cfg["SPLIT_K"]
    wps = -(-(-(-kw // split)) // bw) * bw  # words per split, a multiple of BLOCK_W
    split = -(-kw // wps)
    out_dtype = torch.float32 if split > 1 else x2.dtype
    out = (torch.zeros if split > 1 else torch.empty)((m, n), device=x2.device, dtype=out_dtype)
    x32 = x2.view(torch.int32) if use_asm else x2
    bf16 = x2.dtype == torch.bfloat16
    grid = (triton.cdiv(n, bn), split, m)
    _gemv_kernel[grid](
        x2, x32, pw.qweight, pw.scale, pw.szero, out, bias if bias is not None else out,
        n, k, kw, pw.num_groups, wps, x2.stride(0), out.stride(0),
        BITS=pw.bits, GROUP=pw.group_size, WPG=pw.words_per_group, P=values_per_word(pw.bits),
        BLOCK_N=bn, BLOCK_W=bw, SPLIT_K=split, USE_ASM=use_asm,
        DOT_ASM=_asm.dot_word_asm(pw.bits, bf16) if use_asm else "",
        SUM_ASM=_asm.sum_pairs_asm(16 // pw.bits, bf16) if use_asm else "",
        HAS_BIAS=bias is not None, NUM_STAGES=cfg["NUM_STAGES"], num_warps=cfg["num_warps"])
    return out.to(x2.dtype) if split > 1 else out


def _launch_gemm(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: dict) -> torch.Tensor:
    m, k = x2.shape
    n, kw = pw.qweight.shape
    bm, bn, bw, split = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_W"], cfg["SPLIT_K"]
    wps = -(-(-(-kw // split)) // bw) * bw
    split = -(-kw // wps)
    out_dtype = torch.float32 if split > 1 else x2.dtype
    out = (torch.zeros if split > 1 else torch.empty)((m, n), device=x2.device, dtype=out_dtype)
    p = values_per_word(pw.bits)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn), split)
    _gemm_kernel[grid](
        x2, pw.qweight, pw.scale, pw.szero, out, bias if bias is not None else out,
        m, n, k, kw, pw.num_groups, wps, x2.stride(0), out.stride(0),
        BITS=pw.bits, GROUP=pw.group_size, WPG=pw.words_per_group, P=p, PP=_pow2_ceil(p),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_W=bw, SPLIT_K=split, GROUP_M=cfg["GROUP_M"],
        HAS_BIAS=bias is not None, NUM_STAGES=cfg["NUM_STAGES"], num_warps=cfg["num_warps"],
        IEEE=x2.dtype == torch.float32)
    return out.to(x2.dtype) if split > 1 else out


def _asm_ok(x2: torch.Tensor, pw: PackedWeight) -> bool:
    return (not interpreting() and x2.is_cuda and pw.bits in _asm.ASM_BITS
            and x2.dtype in (torch.float16, torch.bfloat16) and pw.in_features % 2 == 0)


def _mma_ok(x2: torch.Tensor, pw: PackedWeight) -> bool:
    return _mma.supported(pw, x2.dtype) and _mma._block_w_ok(pw, _mma.fixed_config(1)["BLOCK_W"])


def _run_mma(x2, pw, bias, config, key, m):
    """The fused MMA path, or None when Triton fails to compile it for this layout (logged once per key).

    (Triton 3.6 crashed in TritonGPUOptimizeDotOperands on one 2-bit tile shape on the H100:
    a compiler failure must not fail the user's run when an unfused path exists.)
    """
    use_asm = _asm_ok(x2, pw) or (pw.bits == 8 and _asm_ok8(x2))
    if key in _MMA_BROKEN:
        return None
    try:
        cfg = config or tuned(f"mma{'_asm' if use_asm else ''}", key, _mma.fixed_config(m),
                              _mma.default_config(m, pw.out_features, pw),
                              _mma.candidates(m, pw.out_features, pw),
                              lambda c: _mma.mma(x2, pw, bias, c, use_asm))
        return _mma.mma(x2, pw, bias, cfg, use_asm)
    except (triton.compiler.errors.CompilationError, RuntimeError) as err:
        if config is not None or torch.cuda.is_current_stream_capturing():
            raise
        log.warning("fused MMA kernel failed to compile for %s (%s); using the unfused path",
                    key, str(err).splitlines()[-1] if str(err) else type(err).__name__)
        _MMA_BROKEN.add(key)
        return None


def _run_wgmma(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: dict) -> torch.Tensor:
    """The Gluon wgmma GEMM; any failure of this experimental path surfaces as a RuntimeError (the tuner
    then drops the config)."""
    try:
        return _wgmma.wgmma_gemm(x2, pw, bias, cfg)
    except (RuntimeError, triton.compiler.errors.CompilationError):
        raise
    except Exception as err:  # noqa: BLE001 - e.g. a Gluon API change in another Triton version
        raise RuntimeError(f"wo_wgmma failed: {type(err).__name__}: {err}") from err


def _run_large_m(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, key: tuple, m: int) -> torch.Tensor:
    """M > MMA_MAX_M on CUDA: dequant + torch matmul, or the fused wgmma GEMM where the tuner timed it faster."""
    def run(c: dict) -> torch.Tensor:
        if c["path"] == "dequant":
            return torch.nn.functional.linear(x2, _dequant.dequantize(pw, x2.dtype), bias)
        return _run_wgmma(x2, pw, bias, {k: v for k, v in c.items() if k != "path"})

    if USE_WGMMA and _wgmma.supported(pw, x2):
        plain = {"path": "dequant"}
        cfg = tuned("large_m", key, plain, plain,
                    [plain] + [dict(path="wgmma", **c) for c in _wgmma.candidates(m, pw.out_features)], run,
                    margin=WGMMA_MARGIN)
        if cfg["path"] == "wgmma":
            try:
                return run(cfg)
            except RuntimeError as err:  # e.g. a cached config this Triton cannot build
                if torch.cuda.is_current_stream_capturing():
                    raise
                log.warning("wgmma GEMM failed for %s (%s); using dequant + matmul", key, err)
    return run({"path": "dequant"})


def _run_gemm_or_dequant(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, key: tuple,
                         m: int) -> torch.Tensor:
    """Layouts without the MMA path (3-bit groups) at GEMV_MAX_M < M < DEQUANT_MIN_M on CUDA: the tuner times
    the plain fused GEMM's configs against dequant + matmul and keeps the faster (the H100 bench had W3 8192^2
    M=16 at 179 us on the fused GEMM, NOTES.md run 9)."""
    def run(c: dict) -> torch.Tensor:
        if c["path"] == "dequant":
            return torch.nn.functional.linear(x2, _dequant.dequantize(pw, x2.dtype), bias)
        return _launch_gemm(x2, pw, bias, {k: v for k, v in c.items() if k != "path"})

    kw = pw.qweight.shape[1]
    default = dict(path="gemm", **_gemm_default(m, pw.out_features, kw))
    cands = [{"path": "dequant"}] + [dict(path="gemm", **c) for c in _gemm_candidates(m, pw.out_features, kw)]
    return run(tuned("gemm_or_dequant", key, default, default, cands, run))


def _asm_ok8(x2: torch.Tensor) -> bool:
    """8-bit codes dequantize exactly with the fp16 magic number (1024 + q), fp16/bf16 activations."""
    return not interpreting() and x2.is_cuda and x2.dtype in (torch.float16, torch.bfloat16)


def _default_path(m: int, x2: torch.Tensor, pw: PackedWeight) -> str:
    on_gpu = x2.is_cuda and not interpreting()
    if _mma_ok(x2, pw):
        if m <= MMA_GEMV_MAX_M:
            return "gemv"
        if USE_GEMV_TC and on_gpu and m <= GEMV_TC_MAX_M and _gemv_tc.asm_ok(pw, x2):
            return "gemv_tc"
        return "dequant" if on_gpu and m > MMA_MAX_M else "mma"
    if m <= GEMV_MAX_M:
        return "gemv"
    return "dequant" if on_gpu and m >= DEQUANT_MIN_M else "gemm"


@functools.lru_cache(maxsize=8)
def _sm90(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_ok(x2: torch.Tensor) -> bool:
    """PDL launches for this input: enabled, on a CUDA device of compute capability 9.0 or newer."""
    return USE_PDL and x2.is_cuda and not interpreting() and _sm90(x2.device.index or 0)


TUNE_ROTATE_BYTES = 160 * 2 ** 20  # weight copies the GEMV tuner rotates over: together > 3x the H100's L2


def _weight_copies(pw: PackedWeight) -> list[PackedWeight]:
    """pw plus clones, together >= TUNE_ROTATE_BYTES (at most 16), or [pw] alone when they would not fit
    comfortably in free GPU memory (the tuner then times with a read flush)."""
    n = min(16, -(-TUNE_ROTATE_BYTES // max(pw.nbytes(), 1)))
    if n <= 1:
        return [pw]
    free, _ = torch.cuda.mem_get_info(pw.qweight.device)
    if free < 4 * n * pw.nbytes():
        return [pw]
    import dataclasses
    return [pw] + [dataclasses.replace(pw, qweight=pw.qweight.clone(), scale=pw.scale.clone(), szero=pw.szero.clone())
                   for _ in range(n - 1)]


def _tuned_gemv(name: str, mod, fn, use_asm: bool, x2: torch.Tensor, pw: PackedWeight,
                bias: torch.Tensor | None, key: tuple, config: dict | None) -> torch.Tensor:
    """Run a GEMV module's kernel ``fn`` with ``config``, or with its tuned config (the module gives the
    fixed / default configs and the candidates; tuned once per key, cached under ``name[_asm]``) timed
    over rotating copies of the weights (``_weight_copies``), as a decode step streams them."""
    def copies():
        return [lambda c, p=p: fn(x2, p, bias, c, use_asm) for p in _weight_copies(pw)]
    cfg = config or tuned(f"{name}{'_asm' if use_asm else ''}", key, mod.fixed_config(),
                          mod.default_config(pw.out_features, pw), mod.candidates(pw.out_features, pw),
                          lambda c: fn(x2, pw, bias, c, use_asm), copies=copies)
    return fn(x2, pw, bias, cfg, use_asm)


def weight_only_linear(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None = None,
                       config: dict | None = None, path: str | None = None) -> torch.Tensor:
    """y = x @ dequant(pw).T + bias for x [..., K]; dispatch by M (module docstring).

    ``path`` forces one of PATHS ("gemv_plain": v2 without PTX, "gemv_v1": the first GEMV,
    "mma": the fused tensor-core GEMM); ``config`` forces a config.
    """
    check_inputs(x, pw)
    if path is not None and path not in PATHS:
        raise KernelInputError(f"path={path!r} is not valid; valid: {PATHS}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, pw.in_features)
    if x2.stride(-1) != 1 or x2.stride(0) != pw.in_features:
        x2 = x2.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    m = x2.shape[0]
    if m == 0:
        return x.new_zeros(*lead, pw.out_features)
    auto = path is None and config is None
    if path is None:
        path = _default_path(m, x2, pw)
        if path == "gemv" and USE_GEMV3 and _gemv3.supported(pw, x2):
            path = "gemv3"
    if path == "gemv_tc" and not _gemv_tc.supported(pw, x2):
        path = "gemv"
    if path == "gemv3" and not _gemv3.supported(pw, x2):
        path = "gemv"
    if path in ("gemv", "gemv_plain") and not _gemv2.supported(pw):
        path = "gemv_v1"
    if path == "mma" and not _mma_ok(x2, pw):
        path = "gemm"
    key = (m, pw.out_features, pw.in_features, pw.bits, pw.group_size, str(x2.dtype))
    on_gpu = x2.is_cuda and not interpreting()
    if path == "gemv_tc":
        y = _tuned_gemv("gemv_tc", _gemv_tc, _gemv_tc.gemv_tc, on_gpu and _gemv_tc.asm_ok(pw, x2), x2, pw, bias,
                        key, config)
    elif path == "gemv3":
        pdl = pdl_ok(x2)
        y = _tuned_gemv("gemv3", _gemv3, functools.partial(_gemv3.gemv3, pdl=pdl), on_gpu and _gemv3.asm_ok(pw, x2),
                        x2, pw, bias, key, config)
    elif path in ("gemv", "gemv_plain"):
        y = _tuned_gemv("gemv2", _gemv2, _gemv2.gemv, path == "gemv" and _asm_ok(x2, pw), x2, pw, bias, key,
                        config)
    elif path == "gemv_v1":
        use_asm = _asm_ok(x2, pw)
        cfg = config or tuned(f"gemv{'_asm' if use_asm else ''}", key, _gemv_fixed(),
                              _gemv_default(pw.out_features, pw.qweight.shape[1]),
                              _gemv_candidates(pw.out_features, pw.qweight.shape[1], pw.words_per_group),
                              lambda c: _launch_gemv(x2, pw, bias, c, use_asm))
        y = _launch_gemv(x2, pw, bias, cfg, use_asm)
    elif path == "mma":
        y = _run_mma(x2, pw, bias, config, key, m)
        if y is None:  # the compiler rejected every config for this layout: the unfused path
            return weight_only_linear(x, pw, bias, path="dequant" if x2.is_cuda else "gemm")
    elif path == "gemm" and on_gpu and auto:
        y = _run_gemm_or_dequant(x2, pw, bias, key, m)
    elif path == "gemm":
        cfg = config or tuned("gemm", key, _gemm_fixed(m),
                              _gemm_default(m, pw.out_features, pw.qweight.shape[1]),
                              _gemm_candidates(m, pw.out_features, pw.qweight.shape[1]),
                              lambda c: _launch_gemm(x2, pw, bias, c))
        y = _launch_gemm(x2, pw, bias, cfg)
    elif path == "wgmma":
        if not _wgmma.supported(pw, x2):
            raise KernelInputError("path='wgmma' needs a 4-bit layout with N % 64 == 0, K % 128 == 0 and fp16/bf16 "
                                   "x on a compute capability 9.x GPU (kernels/wo_wgmma.py)")
        y = _run_wgmma(x2, pw, bias, config or _wgmma.default_config(m, pw.out_features))
    elif on_gpu and auto:  # dequant (or the fused wgmma GEMM where the tuner found it faster)
        y = _run_large_m(x2, pw, bias, key, m)
    else:  # dequant
        w = _dequant.dequantize(pw, x2.dtype)
        y = torch.nn.functional.linear(x2, w, bias)
    return y.view(*lead, pw.out_features)
