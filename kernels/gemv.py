"""Weight-only GEMV v2 (M = 1, and M <= 4 for 3-bit; bits 2/3/4/8): group-tiled, long-K tiles, 16-byte loads.

Contract: ``gemv(x2 [M, K], pw, bias, cfg) -> [M, N]`` in x2's dtype, same
function as ``bitsweep.kernels.reference.weight_only_linear``; ``supported(pw)`` says
whether this kernel handles the packed layout (else weight_only's v1 GEMV runs).

Design (kernels/NOTES.md, v2): a program owns BLOCK_N output rows and walks
its K range in tiles of ``GT`` chunks x ``WT`` words (a chunk is one group's
words, WT = next power of two of WPG; for per-channel / large groups a chunk
is WT words of the one group). The int32 tile [BLOCK_N, GT, WT] is loaded
with 16-byte vectors (WT a multiple of 4, no padding); each word's x values
are loaded once per tile as one 16/32-byte vector ([GT, WT, P/2] int32 =
half2 pairs, X_VEC) and broadcast over the rows. Dequant + dot per word in
packed half2 PTX (kernels/_asm.py; magic number 0x6400 | code = 1024 + q),
the group scale applied per word in fp32 (one FFMA), the zero folded as
``- szero * sum(x)`` per (row, group). The interpreter / 8-bit path does the
same tiling with plain integer ops. SPLIT_K > 1 accumulates fp32
partials with atomics (only needed when N / BLOCK_N cannot fill the GPU).

Config keys besides the tile: ``EVICT`` (evict-first loads of the weight stream: 19.7 vs
21.9 us on the H100 at 8192^2), ``PREFETCH`` (register double buffer of the next tile; not
faster there), ``num_stages``, and the diagnostics ``DIAG`` = 1 (weight loads only, wrong
result: the memory-structure ceiling, 16.9 us) / 2 (no zero term). The index arithmetic of
non-padded layouts is written so Triton proves 16-byte contiguity (``_tile_words``); the
general form compiled to 4-byte loads.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitsweep.kernels import _asm
from bitsweep.kernels.packing import PackedWeight, values_per_word
from bitsweep.kernels._tiles import store_or_add

MAX_WT = 128  # words per chunk when a group is longer (per-channel)


@triton.jit
def _xpairs(x32_ptr, xoff, kbase, valid, wig, NP: tl.constexpr, X_VEC: tl.constexpr,
            GROUP: tl.constexpr, P: tl.constexpr):
    """x pairs (int32 half2) of each word: NP tensors shaped like kbase ([GT, WT]); 0 for padded slots.

    X_VEC (bits 2/4: no padded slots) loads a word's pairs as one 16/32-byte vector.
    """
    base = x32_ptr + xoff + kbase // 2
    if X_VEC:
        if NP == 4:
            v = tl.load(base[:, :, None] + tl.arange(0, 4)[None, None, :], mask=valid[:, :, None], other=0)
            e, o = tl.split(tl.reshape(v, [v.shape[0], v.shape[1], 2, 2]))
            a0, a2 = tl.split(e)
            a1, a3 = tl.split(o)
            return a0, a1, a2, a3, a0, a0, a0, a0
        else:
            v = tl.load(base[:, :, None] + tl.arange(0, 8)[None, None, :], mask=valid[:, :, None], other=0)
            e, o = tl.split(tl.reshape(v, [v.shape[0], v.shape[1], 2, 2, 2]))
            e0, e1 = tl.split(e)
            o0, o1 = tl.split(o)
            a0, a4 = tl.split(e0)
            a2, a6 = tl.split(e1)
            a1, a5 = tl.split(o0)
            a3, a7 = tl.split(o1)
            return a0, a1, a2, a3, a4, a5, a6, a7
    a0 = tl.load(base + 0, mask=valid & (wig * P < GROUP), other=0)
    a1 = tl.load(base + 1, mask=valid & (wig * P + 2 < GROUP), other=0)
    a2 = a0
    a3 = a0
    a4 = a0
    a5 = a0
    a6 = a0
    a7 = a0
    if NP >= 3:
        a2 = tl.load(base + 2, mask=valid & (wig * P + 4 < GROUP), other=0)
    if NP >= 4:
        a3 = tl.load(base + 3, mask=valid & (wig * P + 6 < GROUP), other=0)
    if NP >= 5:
        a4 = tl.load(base + 4, mask=valid & (wig * P + 8 < GROUP), other=0)
    if NP >= 8:
        a5 = tl.load(base + 5, mask=valid & (wig * P + 10 < GROUP), other=0)
        a6 = tl.load(base + 6, mask=valid & (wig * P + 12 < GROUP), other=0)
        a7 = tl.load(base + 7, mask=valid & (wig * P + 14 < GROUP), other=0)
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _dot_asm(q, a0, a1, a2, a3, a4, a5, a6, a7, NP: tl.constexpr, DOT_ASM: tl.constexpr,
             SUM_ASM: tl.constexpr):
    """(sum_slots (q - c) * x per word [BN, GT, WT] fp32, sum of the word's x [GT, WT] fp32)."""
    if NP == 4:
        p = tl.inline_asm_elementwise(DOT_ASM, "=r,r,r,r,r,r", [q, a0[None], a1[None], a2[None], a3[None]],
                                      dtype=tl.float32, is_pure=True, pack=1)
        xs = tl.inline_asm_elementwise(SUM_ASM, "=r,r,r,r,r", [a0, a1, a2, a3],
                                       dtype=tl.float32, is_pure=True, pack=1)
    elif NP == 5:
        p = tl.inline_asm_elementwise(DOT_ASM, "=r,r,r,r,r,r,r",
                                      [q, a0[None], a1[None], a2[None], a3[None], a4[None]],
                                      dtype=tl.float32, is_pure=True, pack=1)
        xs = tl.inline_asm_elementwise(SUM_ASM, "=r,r,r,r,r,r", [a0, a1, a2, a3, a4],
                                       dtype=tl.float32, is_pure=True, pack=1)
    else:
        p = tl.inline_asm_elementwise(DOT_ASM, "=r,r,r,r,r,r,r,r,r,r",
                                      [q, a0[None], a1[None], a2[None], a3[None], a4[None], a5[None],
                                       a6[None], a7[None]], dtype=tl.float32, is_pure=True, pack=1)
        xs = tl.inline_asm_elementwise(SUM_ASM, "=r,r,r,r,r,r,r,r,r", [a0, a1, a2, a3, a4, a5, a6, a7],
                                       dtype=tl.float32, is_pure=True, pack=1)
    return p, xs


@triton.jit
def _dot_plain(q, x_ptr, xrow, kbase, wvalid, wig, BITS: tl.constexpr, GROUP: tl.constexpr,
               P: tl.constexpr):
    """Integer-op version of _dot_asm (interpreter, 8-bit, fp32 activations)."""
    MASK: tl.constexpr = (1 << BITS) - 1
    CENTER: tl.constexpr = 1 << (BITS - 1)
    p = tl.zeros(q.shape, dtype=tl.float32)
    xs = tl.zeros(kbase.shape, dtype=tl.float32)
    for j in tl.static_range(P // 2):
        v0 = wvalid & (wig * P + 2 * j < GROUP)
        v1 = wvalid & (wig * P + 2 * j + 1 < GROUP)
        x0 = tl.load(x_ptr + xrow + kbase + 2 * j, mask=v0, other=0).to(tl.float32)
        x1 = tl.load(x_ptr + xrow + kbase + 2 * j + 1, mask=v1, other=0).to(tl.float32)
        c0 = ((q >> (BITS * j)) & MASK) - CENTER
        c1 = ((q >> (16 + BITS * j)) & MASK) - CENTER
        p += c0.to(tl.float32) * x0[None] + c1.to(tl.float32) * x1[None]
        xs += x0 + x1
    return p, xs


@triton.jit
def _tile_words(c0, c_end, WT: tl.constexpr, WPG: tl.constexpr, CPG: tl.constexpr, GT: tl.constexpr,
                GROUP: tl.constexpr, P: tl.constexpr):
    """Word indices of the tile of GT chunks starting at chunk c0 -> (ch, cvalid, grp, word, wvalid, wig, kbase)."""
    wt = tl.arange(0, WT)
    ch = c0 + tl.arange(0, GT)  # chunk ids [GT]
    cvalid = ch < c_end
    grp = ch // CPG
    if WT <= WPG:  # no padded words: chunk c is words [c*WT, (c+1)*WT) of the row, in order
        # (written so Triton sees WT contiguous, aligned words with one mask per chunk:
        # 16-byte loads; the general form below compiles to 4-byte loads)
        word = ch[:, None] * WT + wt[None, :]  # [GT, WT]
        wvalid = tl.broadcast_to(cvalid[:, None], [GT, WT])
        wig = word % WPG
        if WPG * P == GROUP:  # no padded slots either
            kbase = word * P
        else:
            kbase = (word // WPG) * GROUP + wig * P
    else:  # a group's WPG words padded to WT slots (3-bit): mask the padding
        wig = (ch % CPG)[:, None] * WT + wt[None, :]  # word in group [GT, WT]
        wvalid = cvalid[:, None] & (wig < WPG)
        word = grp[:, None] * WPG + wig  # [GT, WT]
        kbase = grp[:, None] * GROUP + wig * P  # first input column of each word [GT, WT]
    return ch, cvalid, grp, word, wvalid, wig, kbase


@triton.jit
def _load_words(qw_ptr, rows, KW, c0, c_end, WT: tl.constexpr, WPG: tl.constexpr, CPG: tl.constexpr,
                GT: tl.constexpr, EVICT: tl.constexpr):
    """int32 words [BN, GT, WT] of the tile at chunk c0 (0 outside [c0, c_end) and in padding)."""
    ch, cvalid, grp, word, wvalid, wig, kbase = _tile_words(c0, c_end, WT, WPG, CPG, GT, WPG, 1)
    ptr = qw_ptr + rows[:, None, None] * KW + word[None]
    if EVICT:  # the weights are read once: do not let them push x and the scales out of L2
        q = tl.load(ptr, mask=wvalid[None], other=0, eviction_policy="evict_first")
    else:
        q = tl.load(ptr, mask=wvalid[None], other=0)
    return q


@triton.jit
def _gemv2_kernel(x_ptr, x32_ptr, qw_ptr, s_ptr, sz_ptr, out_ptr, bias_ptr,
                  N, KW, G, NCH, CPS, stride_xm, stride_om,
                  BITS: tl.constexpr, GROUP: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr,
                  WT: tl.constexpr, CPG: tl.constexpr, GT: tl.constexpr, BLOCK_N: tl.constexpr,
                  SPLIT_K: tl.constexpr, USE_ASM: tl.constexpr, X_VEC: tl.constexpr,
                  DOT_ASM: tl.constexpr, SUM_ASM: tl.constexpr, HAS_BIAS: tl.constexpr,
                  DIAG: tl.constexpr, PREFETCH: tl.constexpr, EVICT: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows = tl.where(rmask, rows, 0)  # clamp: unmasked loads, stores masked
    c_start = pid_k * CPS
    c_end = tl.minimum(c_start + CPS, NCH)
    acc = tl.zeros([BLOCK_N, GT, WT], dtype=tl.float32)
    zacc = tl.zeros([BLOCK_N, GT], dtype=tl.float32)
    if PREFETCH:  # register double buffer: the next tile's loads are in flight during this tile's math
        q_next = _load_words(qw_ptr, rows, KW, c_start, c_end, WT, WPG, CPG, GT, EVICT)
    for c0 in range(c_start, c_end, GT):
        ch, cvalid, grp, word, wvalid, wig, kbase = _tile_words(c0, c_end, WT, WPG, CPG, GT, GROUP, P)
        if PREFETCH:
            q = q_next
            q_next = _load_words(qw_ptr, rows, KW, c0 + GT, c_end, WT, WPG, CPG, GT, EVICT)
        else:
            q = _load_words(qw_ptr, rows, KW, c0, c_end, WT, WPG, CPG, GT, EVICT)
        if DIAG == 1:  # diagnostic: the loads alone (no dequant, wrong result)
            p = q.to(tl.float32)
            xs = tl.zeros(kbase.shape, dtype=tl.float32)
        elif USE_ASM:
            a0, a1, a2, a3, a4, a5, a6, a7 = _xpairs(x32_ptr, m * (stride_xm // 2), kbase, wvalid, wig,
                                                     P // 2, X_VEC, GROUP, P)
            p, xs = _dot_asm(q, a0, a1, a2, a3, a4, a5, a6, a7, P // 2, DOT_ASM, SUM_ASM)
        else:
            p, xs = _dot_plain(q, x_ptr, m * stride_xm, kbase, wvalid, wig, BITS, GROUP, P)
        soff = rows[:, None] * G + grp[None, :]  # [BN, GT]
        s = tl.load(s_ptr + soff, mask=cvalid[None, :], other=0).to(tl.float32)
        acc += p * s[:, :, None]
        if DIAG != 2:  # diagnostic 2: no zero term (right only for symmetric weights)
            sz = tl.load(sz_ptr + soff, mask=cvalid[None, :], other=0).to(tl.float32)
            zacc += sz * tl.sum(xs, axis=1)[None, :]
    y = tl.sum(tl.sum(acc, axis=2), axis=1) - tl.sum(zacc, axis=1)
    if HAS_BIAS:
        if pid_k == 0:
            y += tl.load(bias_ptr + rows, mask=rmask, other=0).to(tl.float32)
    optr = out_ptr + m * stride_om + rows
    store_or_add(optr, y, rmask, SPLIT_K)


def _pow2_ceil(v: int) -> int:
    return 1 << (v - 1).bit_length()


def chunking(pw: PackedWeight) -> tuple[int, int] | None:
    """(WT, CPG) for this layout, or None when v2 cannot tile it (a long non-power-of-2 group)."""
    wpg = pw.words_per_group
    wt = _pow2_ceil(wpg)
    if wt <= MAX_WT:
        return wt, 1
    if wpg % MAX_WT == 0:
        return MAX_WT, wpg // MAX_WT
    return None


def supported(pw: PackedWeight) -> bool:
    return chunking(pw) is not None


def x_vec_ok(pw: PackedWeight) -> bool:
    """Vector x loads need every slot of every word real: bits 2/4 and no padded slot in a group.

    (A per-channel group of K=1000 at 2 bits pads 8 slots: there the vector load
    would read x past the group, which gave wrong results on the H100 check run.)
    """
    return pw.bits in (2, 4) and pw.group_size % values_per_word(pw.bits) == 0


def fixed_config() -> dict:
    """Interpreter config (small tiles, no timing possible)."""
    return dict(BLOCK_N=8, TILE_W=32, SPLIT_K=1, num_warps=4, X_VEC=False)


def default_config(n: int, pw: PackedWeight) -> dict:
    """Untuned CUDA default (from the H100 sweeps, kernels/NOTES.md)."""
    bn = 16 if n >= 4096 else 8
    split = 1 if n // bn >= 264 else max(1, min(8, (264 * bn) // max(n, 1)))
    return dict(BLOCK_N=bn, TILE_W=128, SPLIT_K=split, num_warps=4, X_VEC=pw.bits in (2, 4), num_stages=1,
                EVICT=True)


def candidates(n: int, pw: PackedWeight) -> list[dict]:
    xv = pw.bits in (2, 4)
    out = [dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=1, num_warps=4, X_VEC=xv, num_stages=1, EVICT=True)
           for bn, tw in ((16, 128), (8, 128), (32, 128), (8, 256), (16, 256))]
    out.append(dict(BLOCK_N=16, TILE_W=128, SPLIT_K=1, num_warps=4, X_VEC=xv, num_stages=1, EVICT=True,
                    PREFETCH=True))
    if n <= 4096:  # few row blocks: smaller blocks or split-K to fill 132 SMs
        out += [dict(BLOCK_N=4, TILE_W=tw, SPLIT_K=1, num_warps=wp, X_VEC=xv, num_stages=1, EVICT=True)
                for tw, wp in ((128, 4), (128, 2), (256, 4))]
        out += [dict(BLOCK_N=8, TILE_W=128, SPLIT_K=sp, num_warps=4, X_VEC=xv, num_stages=1, EVICT=True)
                for sp in (2, 4)]
    return out


def gemv(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: dict,
         use_asm: bool) -> torch.Tensor:
    """y [M, N] = x2 [M, K] @ dequant(pw).T + bias with the v2 kernel and config ``cfg``."""
    m, k = x2.shape
    n, kw = pw.qweight.shape
    wt, cpg = chunking(pw)
    nch = pw.num_groups * cpg  # chunks along K
    gt = max(1, cfg["TILE_W"] // wt)
    split = max(1, min(cfg["SPLIT_K"], -(-nch // gt)))
    cps = -(-(-(-nch // split)) // gt) * gt  # chunks per split, a multiple of GT
    split = -(-nch // cps)
    out_dtype = torch.float32 if split > 1 else x2.dtype
    out = (torch.zeros if split > 1 else torch.empty)((m, n), device=x2.device, dtype=out_dtype)
    bf16 = x2.dtype == torch.bfloat16
    x_vec = bool(cfg.get("X_VEC", False)) and use_asm and x_vec_ok(pw)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), split, m)
    _gemv2_kernel[grid](
        x2, x2.view(torch.int32) if use_asm else x2, pw.qweight, pw.scale, pw.szero, out,
        bias if bias is not None else out, n, kw, pw.num_groups, nch, cps, x2.stride(0), out.stride(0),
        BITS=pw.bits, GROUP=pw.group_size, WPG=pw.words_per_group, P=values_per_word(pw.bits),
        WT=wt, CPG=cpg, GT=gt, BLOCK_N=cfg["BLOCK_N"], SPLIT_K=split, USE_ASM=use_asm, X_VEC=x_vec,
        DOT_ASM=_asm.dot_word_asm(pw.bits, bf16) if use_asm else "",
        SUM_ASM=_asm.sum_pairs_asm(16 // pw.bits, bf16) if use_asm else "",
        HAS_BIAS=bias is not None, DIAG=int(cfg.get("DIAG", 0)), PREFETCH=bool(cfg.get("PREFETCH", False)),
        EVICT=bool(cfg.get("EVICT", False)), num_warps=cfg["num_warps"],
        num_stages=int(cfg.get("num_stages", 3)))
    return out.to(x2.dtype) if split > 1 else out
