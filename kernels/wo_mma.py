"""Fused weight-only tensor-core GEMM (bits 2/4/8, dense layouts): dequantize in registers, then tl.dot.

Contract: ``mma(x2 [M, K], pw, bias, cfg, use_asm) -> [M, N]`` in x2's dtype,
the same function as ``bitsweep.kernels.reference.weight_only_linear``;
``supported(pw, dtype)`` says whether the layout is dense (no padded slots:
bits 2/4/8 with ``group % P == 0``; 3-bit groups pad their last word).

Design (kernels/NOTES.md, "v3 MMA"): a program owns a [BLOCK_N, BLOCK_W]
word tile per K step (BLOCK_K = BLOCK_W * P input columns). Each word is
dequantized with packed half2 PTX (one ``lop3`` with the fp16 magic number
0x6400, one ``sub.f16x2`` for the centre, one ``fma.f16x2`` with the
(scale, -scale*zero') pair: ``w = (q - 2^(b-1)) * s - sz``) into P fp16
values, returned as P separate [BN, BW] tensors in slot order; a tree of
``tl.join`` (evens, odds) followed by a reshape interleaves them into the
natural K order [BN, BK] without any data movement between threads. bf16
activations convert the fp16 result (exact fp16 dequant, one rounding to
bf16). The zero point is inside the dequantized weight, so no sum(x) term.

Two orientations:

* ``SWAP=False`` (large M): acc[BM, BN] += x[BM, BK] @ w[BN, BK]^T.
* ``SWAP=True`` (small M): acc[BN, BM] += w[BN, BK] @ x[BM, BK]^T, so the
  large N side is the MMA's M dimension (Hopper wgmma needs 64 rows there)
  and the small token count is its N dimension (16+). Stored transposed.

SPLIT_K > 1 accumulates fp32 partials with atomics. Under TRITON_INTERPRET=1
(no inline PTX) the same tiling runs with plain integer ops.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from bitsweep.kernels import _asm
from bitsweep.kernels._tiles import dot_acc, grouped_tile, store_or_add
from bitsweep.kernels.packing import PackedWeight, values_per_word

MMA_BITS = (2, 4, 8)


@functools.lru_cache(maxsize=None)
def dequant_asm(bits: int, bf16: bool) -> str:
    """PTX: outputs $0..$(P-1) (b16: fp16 or bf16) = (q_s - 2^(b-1)) * s - sz for each slot s of word $P.

    Inputs after the P outputs: $P = word, $(P+1) = half2(s, s), $(P+2) = half2(-sz, -sz).
    """
    p = values_per_word(bits)
    q, s2, z2 = f"${p}", f"${p + 1}", f"${p + 2}"
    cregs, clines = _asm.dequant_consts(bits, False)
    lines = ["{", f".reg .b32 t, h, {', '.join(cregs)};", ".reg .b16 lo, hi;", ".reg .f32 a, b;"] + clines
    shifted = {}
    for j in range(p // 2):
        lines += _asm.pair_lines(q, j, bits, False, "h", "t", shifted)
        lines.append(f"fma.rn.f16x2 h, h, {s2}, {z2};")
        if bf16:
            lines += ["mov.b32 {lo, hi}, h;", "cvt.f32.f16 a, lo;", "cvt.f32.f16 b, hi;",
                      "cvt.rn.bf16x2.f32 h, b, a;"]
        lines.append(f"mov.b32 {{${2 * j}, ${2 * j + 1}}}, h;")
    lines.append("}")
    return "\n".join(lines)


@triton.jit
def _interleave(vals, P: tl.constexpr):
    """Join P [BN, BW] tensors (slot order) into [BN, BW, P] with slot s at index s (P in 4, 8, 16)."""
    if P == 4:
        r = tl.join(tl.join(vals[0], vals[2]), tl.join(vals[1], vals[3]))
    elif P == 8:
        r = tl.join(tl.join(tl.join(vals[0], vals[4]), tl.join(vals[2], vals[6])),
                    tl.join(tl.join(vals[1], vals[5]), tl.join(vals[3], vals[7])))
    else:
        r = tl.join(
            tl.join(tl.join(tl.join(vals[0], vals[8]), tl.join(vals[4], vals[12])),
                    tl.join(tl.join(vals[2], vals[10]), tl.join(vals[6], vals[14]))),
            tl.join(tl.join(tl.join(vals[1], vals[9]), tl.join(vals[5], vals[13])),
                    tl.join(tl.join(vals[3], vals[11]), tl.join(vals[7], vals[15]))))
    return r


@triton.jit
def _asm_f16(q, s2, z2, P: tl.constexpr, ASM: tl.constexpr):
    if P == 4:
        r = tl.inline_asm_elementwise(ASM, "=h,=h,=h,=h,r,r,r", [q, s2, z2],
                                      dtype=(tl.float16, tl.float16, tl.float16, tl.float16), is_pure=True, pack=1)
    elif P == 8:
        r = tl.inline_asm_elementwise(ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r", [q, s2, z2],
                                      dtype=(tl.float16, tl.float16, tl.float16, tl.float16,
                                             tl.float16, tl.float16, tl.float16, tl.float16), is_pure=True, pack=1)
    else:
        r = tl.inline_asm_elementwise(ASM, "=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,r,r,r", [q, s2, z2],
                                      dtype=(tl.float16, tl.float16, tl.float16, tl.float16,
                                             tl.float16, tl.float16, tl.float16, tl.float16,
                                             tl.float16, tl.float16, tl.float16, tl.float16,
                                             tl.float16, tl.float16, tl.float16, tl.float16), is_pure=True, pack=1)
    return r


@triton.jit
def _asm_bf16(q, s2, z2, P: tl.constexpr, ASM: tl.constexpr):
    if P == 4:
        r = tl.inline_asm_elementwise(ASM, "=h,=h,=h,=h,r,r,r", [q, s2, z2],
                                      dtype=(tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16), is_pure=True,
                                      pack=1)
    elif P == 8:
        r = tl.inline_asm_elementwise(ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r", [q, s2, z2],
                                      dtype=(tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16,
                                             tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16), is_pure=True,
                                      pack=1)
    else:
        r = tl.inline_asm_elementwise(ASM, "=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,r,r,r", [q, s2, z2],
                                      dtype=(tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16,
                                             tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16,
                                             tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16,
                                             tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16), is_pure=True,
                                      pack=1)
    return r


@triton.jit
def _half2(v):
    """fp16 tensor -> int32 with the value's bits in both halves (a half2 of (v, v))."""
    b = v.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return b | (b << 16)


@triton.jit
def _dequant_tile(q, s, sz, DTYPE: tl.constexpr, BITS: tl.constexpr, P: tl.constexpr,
                  USE_ASM: tl.constexpr, ASM: tl.constexpr):
    """Words q [BN, BW] int32, s / sz fp16 broadcastable to q -> weights [BN, BW * P] in DTYPE."""
    BN: tl.constexpr = q.shape[0]
    BW: tl.constexpr = q.shape[1]
    if USE_ASM:
        s2 = _half2(s)
        z2 = _half2(-sz)
        if DTYPE == tl.bfloat16:
            outs = _asm_bf16(q, s2, z2, P, ASM)
        else:
            outs = _asm_f16(q, s2, z2, P, ASM)
        w = _interleave(outs, P)
    else:
        MASK: tl.constexpr = (1 << BITS) - 1
        CENTER: tl.constexpr = 1 << (BITS - 1)
        sf = s.to(tl.float32)
        zf = sz.to(tl.float32)
        if P == 4:
            outs = (_slot(q, 0, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 1, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 2, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 3, sf, zf, BITS, MASK, CENTER, DTYPE))
        elif P == 8:
            outs = (_slot(q, 0, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 1, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 2, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 3, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 4, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 5, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 6, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 7, sf, zf, BITS, MASK, CENTER, DTYPE))
        else:
            outs = (_slot(q, 0, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 1, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 2, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 3, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 4, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 5, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 6, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 7, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 8, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 9, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 10, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 11, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 12, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 13, sf, zf, BITS, MASK, CENTER, DTYPE),
                    _slot(q, 14, sf, zf, BITS, MASK, CENTER, DTYPE), _slot(q, 15, sf, zf, BITS, MASK, CENTER, DTYPE))
        w = _interleave(outs, P)
    return tl.reshape(w, [BN, BW * P])


@triton.jit
def _slot(q, s: tl.constexpr, sf, zf, BITS: tl.constexpr, MASK: tl.constexpr, CENTER: tl.constexpr,
          DTYPE: tl.constexpr):
    """Plain-integer dequant of slot s of every word (half-word paired layout)."""
    SHIFT: tl.constexpr = (s % 2) * 16 + BITS * (s // 2)
    c = ((q >> SHIFT) & MASK) - CENTER
    return (c.to(tl.float32) * sf - zf).to(DTYPE)


@triton.jit
def _mma_kernel(x_ptr, qw_ptr, s_ptr, sz_ptr, out_ptr, bias_ptr,
                M, N, KW, G, WPS, stride_xm, stride_om,
                BITS: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
                SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, SWAP: tl.constexpr,
                USE_ASM: tl.constexpr, ASM: tl.constexpr, HAS_BIAS: tl.constexpr,
                NUM_STAGES: tl.constexpr, IEEE: tl.constexpr):
    BLOCK_K: tl.constexpr = BLOCK_W * P
    ONE_GROUP: tl.constexpr = WPG % BLOCK_W == 0  # every tile lies inside one group
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = rm < M
    rn = tl.where(rn < N, rn, 0)  # clamp rows: loads stay in bounds, the store is masked
    w_start = pid_k * WPS
    w_end = tl.minimum(w_start + WPS, KW)
    if SWAP:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    wl = tl.arange(0, BLOCK_W)
    kl = tl.arange(0, BLOCK_K)
    for w0 in tl.range(w_start, w_end, BLOCK_W, num_stages=NUM_STAGES):
        q = tl.load(qw_ptr + rn[:, None] * KW + (w0 + wl)[None, :])  # [BN, BW] (KW % BLOCK_W == 0)
        if ONE_GROUP:
            soff = rn * G + w0 // WPG
            s = tl.load(s_ptr + soff)[:, None]
            sz = tl.load(sz_ptr + soff)[:, None]
        else:
            soff = rn[:, None] * G + ((w0 + wl) // WPG)[None, :]
            s = tl.load(s_ptr + soff)
            sz = tl.load(sz_ptr + soff)
        w = _dequant_tile(q, s, sz, DTYPE, BITS, P, USE_ASM, ASM)  # [BN, BK]
        xt = tl.load(x_ptr + rm[:, None] * stride_xm + (w0 * P + kl)[None, :], mask=mmask[:, None], other=0)
        if SWAP:
            acc = dot_acc(acc, w, tl.trans(xt), IEEE)
        else:
            acc = dot_acc(acc, xt, tl.trans(w), IEEE)
    rn_out = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn_out < N
    if SWAP:
        if HAS_BIAS:
            if pid_k == 0:
                acc += tl.load(bias_ptr + rn_out, mask=nmask, other=0).to(tl.float32)[:, None]
        optr = out_ptr + rm[None, :] * stride_om + rn_out[:, None]
        store_or_add(optr, acc, nmask[:, None] & mmask[None, :], SPLIT_K)
    else:
        if HAS_BIAS:
            if pid_k == 0:
                acc += tl.load(bias_ptr + rn_out, mask=nmask, other=0).to(tl.float32)[None, :]
        optr = out_ptr + rm[:, None] * stride_om + rn_out[None, :]
        store_or_add(optr, acc, mmask[:, None] & nmask[None, :], SPLIT_K)


def supported(pw: PackedWeight, dtype: torch.dtype) -> bool:
    """Dense layout (no padded slots) and an activation dtype the MMA takes."""
    return (pw.bits in MMA_BITS and pw.group_size % values_per_word(pw.bits) == 0
            and dtype in (torch.float16, torch.bfloat16, torch.float32))


def _block_w_ok(pw: PackedWeight, bw: int) -> bool:
    """BLOCK_W must divide the row's word count and nest with the group (tile in one group or whole groups)."""
    kw, wpg = pw.qweight.shape[1], pw.words_per_group
    return kw % bw == 0 and (wpg % bw == 0 or bw % wpg == 0)


def _fit_block_w(pw: PackedWeight, bw: int) -> int | None:
    """The largest BLOCK_W <= bw that tiles this layout with BLOCK_K >= 16 (tl.dot's minimum), or None."""
    p = values_per_word(pw.bits)
    while bw >= 1 and bw * p >= 16:
        if _block_w_ok(pw, bw):
            return bw
        bw //= 2
    return None


def fixed_config(m: int) -> dict:
    """Interpreter config (small tiles)."""
    return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_W=4, SPLIT_K=1, GROUP_M=4, SWAP=m <= 16, num_warps=4,
                NUM_STAGES=1)


def default_config(m: int, n: int, pw: PackedWeight) -> dict:
    """Untuned CUDA default (H100 sweep, kernels/NOTES.md)."""
    p = values_per_word(pw.bits)
    bw = _fit_block_w(pw, max(1, 64 // p)) or fixed_config(m)["BLOCK_W"]
    if m <= 64:
        bm = 16 if m <= 16 else (32 if m <= 32 else 64)
        split = max(1, min(4, (4 * 132 * 128) // max(n, 1)))
        bwk = _fit_block_w(pw, max(1, 128 // p)) or bw
        return dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_W=bwk, SPLIT_K=split, GROUP_M=1, SWAP=True,
                    num_warps=8, NUM_STAGES=3)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_W=bw, SPLIT_K=1, GROUP_M=8, SWAP=True, num_warps=8,
                NUM_STAGES=3)


def candidates(m: int, n: int, pw: PackedWeight) -> list[dict]:
    p = values_per_word(pw.bits)
    out = []
    if m <= 64:
        bm = 16 if m <= 16 else (32 if m <= 32 else 64)
        for bn, bk, split, warps, stages in ((128, 128, 4, 8, 3), (128, 128, 8, 8, 3), (128, 128, 2, 8, 3),
                                             (128, 64, 4, 8, 3), (64, 128, 4, 4, 3), (64, 128, 2, 4, 3),
                                             (64, 128, 4, 4, 2), (64, 64, 2, 4, 4), (128, 256, 1, 8, 3)):
            out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_W=max(1, bk // p), SPLIT_K=split, GROUP_M=1,
                            SWAP=True, num_warps=warps, NUM_STAGES=stages))
        out.append(dict(BLOCK_M=max(bm, 16), BLOCK_N=64, BLOCK_W=max(1, 64 // p), SPLIT_K=2, GROUP_M=1,
                        SWAP=False, num_warps=4, NUM_STAGES=4))
    else:
        for bm, bn, bk, warps, stages, swap in ((128, 128, 64, 8, 3, False), (128, 256, 64, 8, 3, False),
                                                (128, 128, 128, 8, 3, False), (256, 128, 64, 8, 3, False),
                                                (128, 128, 64, 8, 3, True), (256, 128, 64, 8, 3, True),
                                                (128, 256, 64, 8, 3, True), (64, 128, 128, 4, 3, True),
                                                (128, 128, 128, 8, 3, True)):
            out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_W=max(1, bk // p), SPLIT_K=1, GROUP_M=8,
                            SWAP=swap, num_warps=warps, NUM_STAGES=stages))
    for c in out:
        c["BLOCK_W"] = _fit_block_w(pw, c["BLOCK_W"])
    out = [c for c in out if c["BLOCK_W"] is not None]
    uniq = list({tuple(sorted(c.items())): c for c in out}.values())  # dedupe, keep order
    return uniq or [fixed_config(m)]


def mma(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: dict,
        use_asm: bool) -> torch.Tensor:
    """y [M, N] = x2 [M, K] @ dequant(pw).T + bias with the fused MMA kernel and config ``cfg``."""
    m, k = x2.shape
    n, kw = pw.qweight.shape
    bw = cfg["BLOCK_W"]
    if not _block_w_ok(pw, bw):
        raise ValueError(f"BLOCK_W={bw} must divide the {kw} words per row and nest with "
                         f"the {pw.words_per_group} words per group")
    nblk = kw // bw
    split = max(1, min(cfg["SPLIT_K"], nblk))
    wps = -(-nblk // split) * bw  # words per split, a multiple of BLOCK_W
    split = -(-kw // wps)
    out_dtype = torch.float32 if split > 1 else x2.dtype
    out = (torch.zeros if split > 1 else torch.empty)((m, n), device=x2.device, dtype=out_dtype)
    p = values_per_word(pw.bits)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), split)
    _mma_kernel[grid](
        x2, pw.qweight, pw.scale, pw.szero, out, bias if bias is not None else out,
        m, n, kw, pw.num_groups, wps, x2.stride(0), out.stride(0),
        BITS=pw.bits, WPG=pw.words_per_group, P=p, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_W=bw, SPLIT_K=split, GROUP_M=cfg["GROUP_M"], SWAP=bool(cfg["SWAP"]), USE_ASM=use_asm,
        ASM=dequant_asm(pw.bits, x2.dtype == torch.bfloat16) if use_asm else "",
        HAS_BIAS=bias is not None, NUM_STAGES=cfg["NUM_STAGES"], IEEE=x2.dtype == torch.float32,
        num_warps=cfg["num_warps"])
    return out.to(x2.dtype) if split > 1 else out
