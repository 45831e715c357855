"""Tensor-core GEMV (1 <= M <= 16 per token block; bits 2/4, and 8 with fp16): mma.sync on dequantized registers.

Contract: ``gemv_tc(x2 [M, K], pw, bias, cfg, use_asm) -> [M, N]`` in x2's dtype, the
same function as ``bitsweep.kernels.reference.weight_only_linear``; ``supported(pw, x2)`` says
whether this kernel takes the layout (CUDA path) and ``plain_ok(pw)`` whether its
plain-integer tiling (interpreter) does.

Why (kernels/NOTES.md, run 6): a tensor-core GEMM in Triton sends the dequantized tile
through shared memory before ``wgmma`` (the M=16 MMA kernel: 31 us at 8192^2, twice the M=1
time). Here the tensor core is fed straight from registers: one warp-collective inline-PTX
block per 4 words of two rows (``bitsweep.kernels._asm.mma_words_asm``, pack=8) dequantizes each half2
pair (lop3 / sub / fma) into exactly an A-fragment register of ``mma.sync.m16n8k16`` (weights
as the 16-row side) and issues the MMAs with x as B (8 tokens per mma; a second set for tokens
8-15 when M > 8). No weight repacking: in the half-word paired layout a word's pairs are
consecutive column pairs, and the 16 k slots of an mma are mapped to the 4 columns each lane
of a quad holds, a permutation of K that B (loaded by the PTX with the same mapping) shares.

Layout contract (checked on the TTGIR by tests/test_kernels_gemv_tc.py, compiled for sm_90
on the CPU): the word tile is [BLOCK_N, 16] int32 in Triton's 16-byte blocked layout,
sizePerThread [1, 4], threadsPerWarp [8, 4], warpsPerCTA [WARPS, 1], order [1, 0], so tile
row r = 8 * (WARPS * rep + warp) + g is held by lane (g, t) (words 4t..4t+3) and a pack of 8
registers is rows of reps 2i and 2i + 1. The kernel maps them to weight rows g and g + 8 of a
16-row block, and warp % KS picks the block's K part (KS parts of the split, summed once at the
end with a reshape, no atomics). The accumulators are a [BLOCK_N, 16] fp32 tensor in the same
layout: element (r, c), with t = c // 4, j = c % 4, par = rep % 2, is
out[token 8 * par + 2t + j % 2][block row g + 8 * (j // 2)] (the mma's D fragment).
``PACK`` = 16 (config key, default 8) hands a thread's 16 registers, two 16-row blocks, to one PTX
call that loads the x fragments once for both (half the x traffic through L1; the H100 sweep,
NOTES.md run 9: 8192x28672 M=16 86.5 -> 62.2 us, other shapes within 2-7%, so the tuner chooses).
U unrolled steps per iteration have independent accumulators; PREFETCH loads the next
iteration's words (and, with SV, each row's (scale | szero) pair through a small PTX load
block, ``_asm.scale_pair_asm``) before this iteration's MMAs.

Under TRITON_INTERPRET=1 (no PTX) the same tiling, K parts and output mapping run with plain
integer ops that compute each element's (token, row) dot directly. SPLIT_K > 1 accumulates
fp32 partials with atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitsweep.kernels import _asm
from bitsweep.kernels._tiles import store_or_add
from bitsweep.kernels.packing import PackedWeight, values_per_word

TILE_W = 16  # words per row per step: 4 lanes x 4 words (the quad of an mma B fragment)
TOKENS = 16  # tokens per program (the mma's M)


@triton.jit
def _plain_words(x_ptr, qw_ptr, s_ptr, sz_ptr, tok, orow, wb, valid, KW, G, stride_xm,
                 BITS: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr):
    """Interpreter path: 16 words from word wb [BN, 1] of each element's (token, row) dot, [BN, 16] fp32."""
    MASK: tl.constexpr = (1 << BITS) - 1
    CENTER: tl.constexpr = 1 << (BITS - 1)
    acc = tl.zeros(tok.shape, dtype=tl.float32)
    for u in tl.static_range(16):
        w = wb + u
        q = tl.load(qw_ptr + orow * KW + w)  # [BN, 16] gather: the element's output row
        s = tl.load(s_ptr + orow * G + w // WPG).to(tl.float32)
        sz = tl.load(sz_ptr + orow * G + w // WPG).to(tl.float32)
        for j in tl.static_range(P):
            c = ((q >> (16 * (j % 2) + BITS * (j // 2))) & MASK) - CENTER
            xj = tl.load(x_ptr + tok * stride_xm + w * P + j).to(tl.float32)
            acc += (c.to(tl.float32) * s - sz) * xj
    return tl.where(valid, acc, 0.0)


@triton.jit
def _where(kbase, w, w_start, span, WPK):
    """(valid [BN, 1], wb [BN, 1]): the step at offset w of each element's K part, and its first word.

    A step past the part's end (or the split's) is invalid: it re-reads the split's first step (in
    bounds) and contributes 0 (zero scales in the PTX, masked in the plain path).
    """
    valid = ((kbase + w) < span) & (w < WPK)
    return valid, w_start + tl.where(valid, kbase + w, 0)


@triton.jit
def _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, wb, c, valid, EVICT: tl.constexpr, SV: tl.constexpr,
           WPG: tl.constexpr, SCALE_ASM: tl.constexpr, SCALE_CONSTRAINTS: tl.constexpr, PACK: tl.constexpr):
    """(int32 words [BN, 16], scales [BN, 16]) of the step at wb. Each row's 16 words start at a multiple
    of 16 (KW % 16 == 0, whole steps); Triton cannot prove it through the per-warp K-part offset, and
    without the hint the loads are 4-byte instead of 16-byte (seen in the SASS). With SV the group's
    (scale | szero << 16) per row comes from a small PTX load block in the same layout (so it can be
    issued a step ahead with the words); else the second value is a placeholder."""
    qp = qw_ptr + tl.multiple_of(qrow + wb + c[None, :], [1, 16])
    if EVICT:  # the weights are read once: keep x and the scales in cache
        q = tl.load(qp, eviction_policy="evict_first")
    else:
        q = tl.load(qp)
    sc = q
    if SV:
        so = srow + (wb + c[None, :]) // WPG
        v = (valid + c[None, :] * 0).to(tl.int32)
        sc = tl.inline_asm_elementwise(SCALE_ASM, SCALE_CONSTRAINTS, [s_ptr + so, sz_ptr + so, v], dtype=tl.int32,
                                       is_pure=True, pack=PACK)
    return q, sc


@triton.jit
def _step(acc, q, sc, valid, wb, x_ptr, qw_ptr, s_ptr, sz_ptr, xlo, xhi, srow, c, tok, orow, KW, G, stride_xm,
          BITS: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr, HI: tl.constexpr,
          USE_ASM: tl.constexpr, ASM: tl.constexpr, CONSTRAINTS: tl.constexpr, SV: tl.constexpr, PACK: tl.constexpr):
    """One 16-word step (words q [BN, 16] at wb [BN, 1]): acc [BN, 16] fp32 updated."""
    if USE_ASM:
        if SV:  # (scale | szero << 16) per row, loaded a step ahead (_words)
            if HI:
                acc = tl.inline_asm_elementwise(ASM, CONSTRAINTS, [q, acc, xlo + wb * P, xhi + wb * P, sc],
                                                dtype=tl.float32, is_pure=True, pack=PACK)
            else:
                acc = tl.inline_asm_elementwise(ASM, CONSTRAINTS, [q, acc, xlo + wb * P, sc],
                                                dtype=tl.float32, is_pure=True, pack=PACK)
        else:
            so = srow + (wb + c[None, :]) // WPG
            v = (valid + c[None, :] * 0).to(tl.int32)
            if HI:
                acc = tl.inline_asm_elementwise(ASM, CONSTRAINTS, [q, acc, xlo + wb * P, xhi + wb * P, s_ptr + so,
                                                                   sz_ptr + so, v],
                                                dtype=tl.float32, is_pure=True, pack=PACK)
            else:
                acc = tl.inline_asm_elementwise(ASM, CONSTRAINTS, [q, acc, xlo + wb * P, s_ptr + so, sz_ptr + so,
                                                                   v],
                                                dtype=tl.float32, is_pure=True, pack=PACK)
    else:
        acc += _plain_words(x_ptr, qw_ptr, s_ptr, sz_ptr, tok, orow, wb, valid, KW, G, stride_xm, BITS, WPG, P)
    return acc


@triton.jit
def _gemv_tc_kernel(x_ptr, qw_ptr, s_ptr, sz_ptr, out_ptr, bias_ptr,
                    M, N, KW, G, WPS, WPK, stride_xm, stride_om,
                    BITS: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr,
                    BLOCK_N: tl.constexpr, WARPS: tl.constexpr, KS: tl.constexpr, U: tl.constexpr,
                    SPLIT_K: tl.constexpr, HI: tl.constexpr,
                    USE_ASM: tl.constexpr, ASM: tl.constexpr, CONSTRAINTS: tl.constexpr,
                    HAS_BIAS: tl.constexpr, EVICT: tl.constexpr, PREFETCH: tl.constexpr, SV: tl.constexpr,
                    SCALE_ASM: tl.constexpr, SCALE_CONSTRAINTS: tl.constexpr, PACK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    tok0 = tl.program_id(2) * 16
    ROWS: tl.constexpr = BLOCK_N // KS  # weight rows per program
    WQ: tl.constexpr = WARPS // KS  # warps per K part
    # tile row r = 8 * (WARPS * rep + warp) + g (Triton's layout, see the module docstring); reps pair up
    # (the pack of 8 registers) into 16-row blocks; warp % KS picks the block's K part
    r = tl.arange(0, BLOCK_N)
    c = tl.arange(0, 16)
    g = r % 8
    warp = (r // 8) % WARPS
    rep = r // (8 * WARPS)
    par = rep % 2  # 0: rows 0-7 of the block / tokens 0-7 of the outputs, 1: rows 8-15 / tokens 8-15
    rblk = (rep // 2) * WQ + warp // KS  # the element's 16-row block
    kpart = warp % KS
    rows = pid_n * ROWS + rblk * 16 + 8 * par + g  # weight row whose words the element holds
    rows = tl.where(rows < N, rows, N - 1)  # clamp: row loads stay in bounds, those outputs are masked
    tt = c // 4
    jj = c % 4
    # element (r, c) accumulates out[token][row]
    tok = tok0 + (8 * par)[:, None] + (2 * tt + jj % 2)[None, :]  # [BN, 16]
    orow = pid_n * ROWS + (rblk * 16 + g)[:, None] + (8 * (jj // 2))[None, :]  # [BN, 16]
    orow_c = tl.minimum(orow, N - 1)
    tok_c = tl.minimum(tok, M - 1)
    w_start = pid_k * WPS
    span = tl.minimum(WPS, KW - w_start)  # words of this split
    kbase = (kpart * WPK)[:, None]  # [BN, 1] first word of the element's K part within the split
    qrow = (rows * KW)[:, None]
    srow = (rows * G)[:, None]
    tlo = tl.minimum(tok0 + g, M - 1)  # the lane's B columns (tokens g, g + 8), clamped
    thi = tl.minimum(tok0 + g + 8, M - 1)
    xlo = x_ptr + (tlo * stride_xm)[:, None] + (c * P)[None, :]  # [BN, 16]: x of word c at word 0
    xhi = x_ptr + (thi * stride_xm)[:, None] + (c * P)[None, :]
    acc0 = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    # U independent steps (accumulator chains) per iteration; with PREFETCH the next iteration's
    # words are loaded (register double buffer) before this iteration's PTX runs
    if PREFETCH:
        v0n, b0n = _where(kbase, 0, w_start, span, WPK)
        q0n, c0n = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b0n, c, v0n, EVICT, SV, WPG,
                          SCALE_ASM, SCALE_CONSTRAINTS, PACK)
        v1n, b1n = _where(kbase, 16, w_start, span, WPK)
        q1n, c1n = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b1n, c, v1n, EVICT, SV, WPG,
                          SCALE_ASM, SCALE_CONSTRAINTS, PACK)
        v2n, b2n = _where(kbase, 32, w_start, span, WPK)
        q2n, c2n = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b2n, c, v2n, EVICT, SV, WPG,
                          SCALE_ASM, SCALE_CONSTRAINTS, PACK)
        v3n, b3n = _where(kbase, 48, w_start, span, WPK)
        q3n, c3n = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b3n, c, v3n, EVICT, SV, WPG,
                          SCALE_ASM, SCALE_CONSTRAINTS, PACK)
    for w in range(0, WPK, 16 * U):
        if PREFETCH:
            v0, b0, q0, c0 = v0n, b0n, q0n, c0n
            v0n, b0n = _where(kbase, w + 16 * U, w_start, span, WPK)
            q0n, c0n = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b0n, c, v0n, EVICT, SV, WPG,
                              SCALE_ASM, SCALE_CONSTRAINTS, PACK)
            if U >= 2:
                v1, b1, q1, c1 = v1n, b1n, q1n, c1n
                v1n, b1n = _where(kbase, w + 16 * U + 16, w_start, span, WPK)
                q1n, c1n = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b1n, c, v1n, EVICT, SV, WPG,
                                  SCALE_ASM, SCALE_CONSTRAINTS, PACK)
            if U >= 4:
                v2, b2, q2, c2 = v2n, b2n, q2n, c2n
                v2n, b2n = _where(kbase, w + 16 * U + 32, w_start, span, WPK)
                q2n, c2n = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b2n, c, v2n, EVICT, SV, WPG,
                                  SCALE_ASM, SCALE_CONSTRAINTS, PACK)
                v3, b3, q3, c3 = v3n, b3n, q3n, c3n
                v3n, b3n = _where(kbase, w + 16 * U + 48, w_start, span, WPK)
                q3n, c3n = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b3n, c, v3n, EVICT, SV, WPG,
                                  SCALE_ASM, SCALE_CONSTRAINTS, PACK)
        else:
            v0, b0 = _where(kbase, w, w_start, span, WPK)
            q0, c0 = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b0, c, v0, EVICT, SV, WPG,
                            SCALE_ASM, SCALE_CONSTRAINTS, PACK)
            if U >= 2:
                v1, b1 = _where(kbase, w + 16, w_start, span, WPK)
                q1, c1 = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b1, c, v1, EVICT, SV, WPG,
                                SCALE_ASM, SCALE_CONSTRAINTS, PACK)
            if U >= 4:
                v2, b2 = _where(kbase, w + 32, w_start, span, WPK)
                q2, c2 = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b2, c, v2, EVICT, SV, WPG,
                                SCALE_ASM, SCALE_CONSTRAINTS, PACK)
                v3, b3 = _where(kbase, w + 48, w_start, span, WPK)
                q3, c3 = _words(qw_ptr, s_ptr, sz_ptr, qrow, srow, b3, c, v3, EVICT, SV, WPG,
                                SCALE_ASM, SCALE_CONSTRAINTS, PACK)
        acc0 = _step(acc0, q0, c0, v0, b0, x_ptr, qw_ptr, s_ptr, sz_ptr, xlo, xhi, srow, c, tok_c, orow_c, KW, G,
                     stride_xm, BITS, WPG, P, HI, USE_ASM, ASM, CONSTRAINTS, SV, PACK)
        if U >= 2:
            acc1 = _step(acc1, q1, c1, v1, b1, x_ptr, qw_ptr, s_ptr, sz_ptr, xlo, xhi, srow, c, tok_c, orow_c, KW, G,
                         stride_xm, BITS, WPG, P, HI, USE_ASM, ASM, CONSTRAINTS, SV, PACK)
        if U >= 4:
            acc2 = _step(acc2, q2, c2, v2, b2, x_ptr, qw_ptr, s_ptr, sz_ptr, xlo, xhi, srow, c, tok_c, orow_c, KW, G,
                         stride_xm, BITS, WPG, P, HI, USE_ASM, ASM, CONSTRAINTS, SV, PACK)
            acc3 = _step(acc3, q3, c3, v3, b3, x_ptr, qw_ptr, s_ptr, sz_ptr, xlo, xhi, srow, c, tok_c, orow_c, KW, G,
                         stride_xm, BITS, WPG, P, HI, USE_ASM, ASM, CONSTRAINTS, SV, PACK)
    acc = (acc0 + acc1) + (acc2 + acc3)
    # sum the K parts: r = 8 * KS * (rep * WQ + warp // KS) + 8 * kpart + g
    acc = tl.sum(tl.reshape(acc, [BLOCK_N // (8 * KS), KS, 8, 16]), axis=1)  # [A, 8, 16]
    a = tl.arange(0, BLOCK_N // (8 * KS))
    rep_a = a // WQ
    blk_a = (rep_a // 2) * WQ + a % WQ
    g8 = tl.arange(0, 8)
    tok3 = tok0 + (8 * (rep_a % 2))[:, None, None] + (2 * tt + jj % 2)[None, None, :]  # [A, 1, 16]
    orow3 = pid_n * ROWS + (blk_a * 16)[:, None, None] + g8[None, :, None] + (8 * (jj // 2))[None, None, :]
    omask = (tok3 < M) & (orow3 < N)  # [A, 8, 16]
    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + orow3, mask=omask, other=0).to(tl.float32)
    store_or_add(out_ptr + tok3 * stride_om + orow3, acc, omask, SPLIT_K)


def plain_ok(pw: PackedWeight) -> bool:
    """The tiling: whole 16-word steps, each lane's 4 words in one group, no padded slots."""
    kw = pw.qweight.shape[1]
    return (pw.bits in (2, 4, 8) and pw.group_size % values_per_word(pw.bits) == 0 and kw % TILE_W == 0
            and pw.words_per_group % 4 == 0 and pw.qweight.stride(1) == 1)


def asm_ok(pw: PackedWeight, x2: torch.Tensor) -> bool:
    """The PTX path: fp16 (bits 2/4/8) or bf16 (bits 2/4) x with 16-byte aligned rows, aligned words."""
    if x2.dtype == torch.float16:
        ok_bits = pw.bits in (2, 4, 8)
    elif x2.dtype == torch.bfloat16:
        ok_bits = pw.bits in (2, 4)
    else:
        return False
    row_bytes = x2.stride(0) * x2.element_size()
    return (ok_bits and plain_ok(pw) and x2.stride(1) == 1 and x2.data_ptr() % 16 == 0
            and (x2.shape[0] == 1 or row_bytes % 16 == 0) and pw.qweight.data_ptr() % 16 == 0)


def supported(pw: PackedWeight, x2: torch.Tensor) -> bool:
    """CUDA: the PTX path's layouts; elsewhere (interpreter): the plain tiling's."""
    return asm_ok(pw, x2) if x2.is_cuda else plain_ok(pw)


def fixed_config() -> dict:
    """Interpreter config (2 K parts and 2 unrolled steps, so the CPU tests cover both reductions)."""
    return dict(BLOCK_N=64, KS=2, U=2, SPLIT_K=1, num_warps=2, PREFETCH=True)


def default_config(n: int, pw: PackedWeight) -> dict:
    """Untuned CUDA default."""
    return dict(BLOCK_N=128, KS=4, U=4, SPLIT_K=1, num_warps=4, EVICT=True, PREFETCH=True)


def candidates(n: int, pw: PackedWeight) -> list[dict]:
    out = [dict(BLOCK_N=bn, KS=ks, U=u, SPLIT_K=1, num_warps=wp, EVICT=True, PREFETCH=True)
           for bn, wp, ks in ((64, 4, 4), (128, 4, 4), (128, 8, 4), (128, 8, 8), (64, 4, 2)) for u in (2, 4)]
    out.append(dict(BLOCK_N=128, KS=4, U=4, SPLIT_K=1, num_warps=4, EVICT=True, PREFETCH=False))
    # two 16-row blocks per PTX call sharing one x fragment load (half the x traffic through L1)
    out += [dict(BLOCK_N=bn, KS=ks, U=u, SPLIT_K=1, num_warps=wp, EVICT=True, PREFETCH=True, PACK=16)
            for bn, wp, ks in ((128, 4, 4), (128, 4, 2), (256, 8, 8), (256, 8, 4), (128, 2, 2)) for u in (2, 4)]
    # scales loaded inside the mma PTX block instead of a step ahead (equal at 8192^2, NOTES.md run 6)
    out += [dict(BLOCK_N=bn, KS=4, U=u, SPLIT_K=1, num_warps=4, EVICT=True, PREFETCH=True, SV=False)
            for bn, u in ((64, 4), (128, 2))]
    return out


def asm_constraints(pack: int, hi: bool, sv: bool) -> tuple[str, str]:
    """Constraint strings of the mma block (``_asm.mma_words_asm``) and the scale-pair block
    (``_asm.scale_pair_asm``) for ``pack`` = 8 * blocks registers per call."""
    x_ops = ["l"] * pack * (2 if hi else 1)
    scale_ops = ["r"] * pack if sv else ["l"] * 2 * pack + ["r"] * pack
    return (",".join(["=f"] * pack + ["r"] * pack + ["f"] * pack + x_ops + scale_ops),
            ",".join(["=r"] * pack + ["l"] * 2 * pack + ["r"] * pack))


def gemv_tc(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: dict, use_asm: bool) -> torch.Tensor:
    """y [M, N] = x2 [M, K] @ dequant(pw).T + bias with the tensor-core GEMV and config ``cfg``."""
    m, _ = x2.shape
    n, kw = pw.qweight.shape
    bn, wp, ks, u = cfg["BLOCK_N"], cfg["num_warps"], int(cfg.get("KS", 1)), int(cfg.get("U", 1))
    pack = int(cfg.get("PACK", 8))
    if bn % (16 * wp) or wp % ks or u not in (1, 2, 4):
        raise ValueError(f"gemv_tc config {cfg}: BLOCK_N must be a multiple of 16 x num_warps, KS must divide "
                         f"num_warps and U be 1, 2 or 4")
    if pack not in (8, 16) or (pack == 16 and bn % (32 * wp)):
        raise ValueError(f"gemv_tc config {cfg}: PACK must be 8 or 16, and PACK=16 (two 16-row blocks per PTX "
                         f"call) needs BLOCK_N a multiple of 32 x num_warps")
    steps = kw // TILE_W
    split = max(1, min(cfg["SPLIT_K"], steps))
    sps = -(-steps // split)  # steps per split
    split = -(-steps // sps)
    spk = -(-sps // ks)  # steps per K part
    wps, wpk = sps * TILE_W, spk * TILE_W
    out_dtype = torch.float32 if split > 1 else x2.dtype
    out = (torch.zeros if split > 1 else torch.empty)((m, n), device=x2.device, dtype=out_dtype)
    hi = m > 8
    sv = use_asm and bool(cfg.get("SV", True))  # scales loaded a step ahead by their own PTX block
    blocks = pack // 8
    if use_asm:
        asm = _asm.mma_words_asm(pw.bits, x2.dtype == torch.bfloat16, hi, sv, blocks)
        constraints, scale_constraints = asm_constraints(pack, hi, sv)
    else:
        asm, constraints, scale_constraints = "", "", ""
    grid = (triton.cdiv(n, bn // ks), split, triton.cdiv(m, TOKENS))
    _gemv_tc_kernel[grid](
        x2, pw.qweight, pw.scale, pw.szero, out, bias if bias is not None else out,
        m, n, kw, pw.num_groups, wps, wpk, x2.stride(0), out.stride(0),
        BITS=pw.bits, WPG=pw.words_per_group, P=values_per_word(pw.bits), BLOCK_N=bn, WARPS=wp, KS=ks, U=u,
        SPLIT_K=split, HI=hi, USE_ASM=use_asm, ASM=asm, CONSTRAINTS=constraints, HAS_BIAS=bias is not None,
        EVICT=bool(cfg.get("EVICT", False)), PREFETCH=bool(cfg.get("PREFETCH", False)), SV=sv,
        SCALE_ASM=_asm.scale_pair_asm(blocks) if sv else "", SCALE_CONSTRAINTS=scale_constraints, PACK=pack,
        num_warps=wp,
        num_stages=1)
    return out.to(x2.dtype) if split > 1 else out
