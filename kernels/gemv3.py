"""Weight-only GEMV v3 (M = 1; bits 2/3/4, fp16/bf16 activations): flat word tiles, no layout conversions.

Contract: ``gemv3(x2 [M, K], pw, bias, cfg, use_asm) -> [M, N]`` in x2's dtype, the
same function as ``bitsweep.kernels.reference.weight_only_linear``; ``supported(pw, x2)`` says
whether this kernel takes the layout (else the v2 GEMV of kernels/gemv.py runs).

Why (kernels/NOTES.md, run 5): the v2 kernel's SASS showed ~10 ``BAR.SYNC`` and
shared-memory round trips (``STSM``/``LDS``) per K tile: Triton gave the x-pair and
scale loads their own layouts and converted them to the weight tile's layout through
shared memory, which also kept the 4 warps of a program in lock step. v3 keeps one
layout: the program's tile is [BLOCK_N rows, TILE_W consecutive words of the row]
(16-byte weight loads), and every other per-word quantity is computed from the word
index in that same layout. Each word's term is one inline-PTX block
(``bitsweep.kernels._asm.word_term_asm``) that loads the word's own x values (16/32 bytes,
read-only path, L1 hits after the first row) and its group's scale and szero, then
does the packed half2 dequant + dot and returns ``s * dot - szero * sum(x)`` in fp32.
Words are summed per row at the end (one reduction per program).

3-bit groups (10 codes per word, the last word of a group padded) are handled
word by word: the PTX loads only the word's valid x pairs (count passed per word).
Under TRITON_INTERPRET=1 (and for fp32 activations or 8-bit) the same tiling runs
with plain integer ops. SPLIT_K > 1 accumulates fp32 partials with atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from bitsweep.kernels import _asm
from bitsweep.kernels._tiles import store_or_add
from bitsweep.kernels.packing import PackedWeight, values_per_word


@triton.jit
def _load_tile(qw_ptr, rows, KW, w0, w_end, TILE_W: tl.constexpr, EVICT: tl.constexpr):
    """int32 words [BN, TILE_W] of the rows at word w0 (0 past w_end)."""
    w = w0 + tl.arange(0, TILE_W)
    ptr = qw_ptr + rows[:, None] * KW + w[None, :]
    if EVICT:  # the weights are read once: keep x and the scales in cache
        return tl.load(ptr, mask=(w < w_end)[None, :], other=0, eviction_policy="evict_first")
    return tl.load(ptr, mask=(w < w_end)[None, :], other=0)


@triton.jit
def _gemv3_kernel(x_ptr, qw_ptr, s_ptr, sz_ptr, out_ptr, bias_ptr,
                  N, KW, G, WPS, stride_xm, stride_om,
                  BITS: tl.constexpr, GROUP: tl.constexpr, WPG: tl.constexpr, P: tl.constexpr,
                  BLOCK_N: tl.constexpr, TILE_W: tl.constexpr, SPLIT_K: tl.constexpr,
                  USE_ASM: tl.constexpr, ASM: tl.constexpr, CONSTRAINTS: tl.constexpr, PACK: tl.constexpr,
                  HAS_BIAS: tl.constexpr, EVICT: tl.constexpr, PREFETCH: tl.constexpr, PDL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows = tl.where(rmask, rows, 0)  # clamp: unmasked row loads, masked stores
    w_start = pid_k * WPS
    w_end = tl.minimum(w_start + WPS, KW)
    acc = tl.zeros([BLOCK_N, TILE_W], dtype=tl.float32)
    xrow = x_ptr + m * stride_xm
    if PREFETCH:  # register double buffer: the next tile's loads are in flight during this tile's math
        q_next = _load_tile(qw_ptr, rows, KW, w_start, w_end, TILE_W, EVICT)
    if PDL:  # programmatic dependent launch: the first weight tile (a constant) is read before the
        # previous kernel (which wrote x, or reads our output buffer) has finished
        gdc_wait()
        gdc_launch_dependents()  # the next PDL kernel may start its own prologue now
    for w0 in range(w_start, w_end, TILE_W):
        w = w0 + tl.arange(0, TILE_W)  # word index in the row [TW]
        wmask = w < w_end
        if PREFETCH:
            q = q_next
            q_next = _load_tile(qw_ptr, rows, KW, w0 + TILE_W, w_end, TILE_W, EVICT)
        else:
            q = _load_tile(qw_ptr, rows, KW, w0, w_end, TILE_W, EVICT)
        wc = tl.minimum(w, w_end - PACK)  # clamped to the last pack: masked words read in bounds
        grp = wc // WPG
        wig = wc - grp * WPG
        k0 = grp * GROUP + wig * P  # first input column of each word [TW]
        soff = rows[:, None] * G + grp[None, :]  # [BN, TW]
        if USE_ASM and PACK > 1:  # PACK consecutive words of one group per PTX call (bits 2/4)
            y = tl.inline_asm_elementwise(ASM, CONSTRAINTS, [q, (xrow + k0)[None, :], s_ptr + soff, sz_ptr + soff],
                                          dtype=tl.float32, is_pure=True, pack=PACK)
        elif USE_ASM:
            nvalid = tl.minimum(GROUP - wig * P, P) // 2  # valid x pairs of each word (3-bit padding)
            y = tl.inline_asm_elementwise(ASM, CONSTRAINTS,
                                          [q, (xrow + k0)[None, :], s_ptr + soff, sz_ptr + soff, nvalid[None, :]],
                                          dtype=tl.float32, is_pure=True, pack=1)
        else:
            MASK: tl.constexpr = (1 << BITS) - 1
            CENTER: tl.constexpr = 1 << (BITS - 1)
            p = tl.zeros([BLOCK_N, TILE_W], dtype=tl.float32)
            xs = tl.zeros([TILE_W], dtype=tl.float32)
            for j in tl.static_range(P):
                xj = tl.load(xrow + k0 + j, mask=wmask & (wig * P + j < GROUP), other=0).to(tl.float32)
                c = ((q >> (16 * (j % 2) + BITS * (j // 2))) & MASK) - CENTER
                p += c.to(tl.float32) * xj[None, :]
                xs += xj
            s = tl.load(s_ptr + soff).to(tl.float32)
            sz = tl.load(sz_ptr + soff).to(tl.float32)
            y = p * s - sz * xs[None, :]
        acc += tl.where(wmask[None, :], y, 0.0)
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        if pid_k == 0:
            out += tl.load(bias_ptr + rows, mask=rmask, other=0).to(tl.float32)
    store_or_add(out_ptr + m * stride_om + rows, out, rmask, SPLIT_K)


def asm_ok(pw: PackedWeight, x2: torch.Tensor) -> bool:
    """The PTX path: bits 2/3/4, fp16/bf16 x, every word's x 16-byte (bits 2/4) or 4-byte (3) aligned."""
    if pw.bits not in _asm.ASM_BITS or x2.dtype not in (torch.float16, torch.bfloat16):
        return False
    p = values_per_word(pw.bits)
    if pw.bits == 3:  # pairs only: the last word of a group holds an even number of codes
        tail = pw.group_size - (pw.words_per_group - 1) * p
        align, ok = 4, tail % 2 == 0
    else:
        align, ok = 16, pw.group_size % p == 0
    row_bytes = x2.stride(0) * x2.element_size()
    return ok and x2.stride(1) == 1 and x2.data_ptr() % align == 0 and (x2.shape[0] == 1 or row_bytes % align == 0)


def max_pack(pw: PackedWeight) -> int:
    """Words per PTX call: 4 (or 2) when a group's words come in aligned fours (bits 2/4), else 1.

    A pack is the ``pack`` consecutive registers of a thread, which are consecutive words
    only when Triton gives the weight load its 16-byte layout (4 words per thread along K).
    It does so when it can prove 16-byte alignment: the row length KW a multiple of 16 (its
    launcher specializes such integers) and an aligned base. Anything else gets pack 1
    (seen on the H100: W2 g64 K=640, KW=40, gave wrong sums with pack 4).
    """
    kw = pw.qweight.shape[1]
    if (pw.bits in (2, 4) and pw.group_size % values_per_word(pw.bits) == 0 and kw % 16 == 0
            and pw.qweight.data_ptr() % 16 == 0 and pw.qweight.stride(1) == 1):
        for pack in (4, 2):
            if pw.words_per_group % pack == 0:
                return pack
    return 1


def _pack_for(cfg: dict, pw: PackedWeight) -> int:
    """The config's PACK (default 4) within max_pack, and only if every thread holds >= 4 words."""
    pack = min(int(cfg.get("PACK", 4)), max_pack(pw))
    if cfg["BLOCK_N"] * cfg["TILE_W"] < 4 * 32 * cfg["num_warps"]:
        return 1
    return pack


def supported(pw: PackedWeight, x2: torch.Tensor) -> bool:
    """Plain mode (CPU / interpreter): every layout. On CUDA: the packed-word PTX layouts
    (bits 2/4, ``max_pack`` > 1), where v3 is faster than v2; 3-bit and one-word packs
    ran slower than v2 on the H100 (W3 8192^2: 30 vs 19 us) and stay on v2."""
    if not x2.is_cuda:
        return True
    return asm_ok(pw, x2) and max_pack(pw) > 1


def fixed_config() -> dict:
    """Interpreter config (small tiles, no timing possible)."""
    return dict(BLOCK_N=8, TILE_W=32, SPLIT_K=1, num_warps=4)


def default_config(n: int, pw: PackedWeight) -> dict:
    """Untuned CUDA default: the config with the best geometric-mean time over the H100 sweep's
    shapes (kernels/NOTES.md run 5: 16 rows x 128 words, 4 warps, prefetch); small N: 4 rows."""
    return dict(BLOCK_N=16 if n >= 2048 else 4, TILE_W=128, SPLIT_K=1, num_warps=4, EVICT=True, PREFETCH=True)


def candidates(n: int, pw: PackedWeight) -> list[dict]:
    out = [dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=1, num_warps=wp, EVICT=True, PREFETCH=pf)
           for bn, tw, wp in ((8, 128, 4), (4, 256, 4), (4, 128, 2), (16, 128, 4), (8, 256, 4), (8, 128, 8))
           for pf in (False, True)]
    # the best configs of the wider H100 grid (sweep part v3grid, kernels/NOTES.md run 6) on the decode shapes
    out += [dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=1, num_warps=wp, EVICT=True, PREFETCH=True)
            for bn, tw, wp in ((16, 128, 8), (16, 64, 2), (8, 256, 8), (8, 128, 2), (32, 64, 8))]
    if pw.bits == 2:  # the best two of the 2-bit grid on 8192^2 (sweep part v3grid2, NOTES.md run 7)
        out += [dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=1, num_warps=2, EVICT=True, PREFETCH=True)
                for bn, tw in ((8, 256), (16, 128))]
    if n <= 4096:  # few row blocks: split K to fill 132 SMs
        out += [dict(BLOCK_N=bn, TILE_W=128, SPLIT_K=sp, num_warps=4, EVICT=True, PREFETCH=True)
                for bn in (4, 8) for sp in (2, 4)]
    return out


def gemv3(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: dict, use_asm: bool,
          pdl: bool = False) -> torch.Tensor:
    """y [M, N] = x2 [M, K] @ dequant(pw).T + bias with the v3 kernel and config ``cfg``.

    ``pdl``: launch with programmatic dependent launch (CUDA, sm_90+): the kernel may start while
    the previous kernel in the stream finishes, reads its first weight tile, then waits for it
    (``griddepcontrol.wait``) before touching x or its output. Off under the interpreter.
    """
    m, _ = x2.shape
    n, kw = pw.qweight.shape
    tw = cfg["TILE_W"]
    split = max(1, min(cfg["SPLIT_K"], -(-kw // tw)))
    wps = -(-(-(-kw // split)) // tw) * tw  # words per split, a multiple of TILE_W
    split = -(-kw // wps)
    out_dtype = torch.float32 if split > 1 else x2.dtype
    out = (torch.zeros if split > 1 else torch.empty)((m, n), device=x2.device, dtype=out_dtype)
    pack = _pack_for(cfg, pw) if use_asm else 1
    bf16 = x2.dtype == torch.bfloat16
    if pack > 1:
        asm = _asm.words_term_asm(pw.bits, bf16, pack)
        constraints = ",".join(["=r"] * pack + ["r"] * pack + ["l"] * (3 * pack))
    else:
        asm = _asm.word_term_asm(pw.bits, bf16) if use_asm else ""
        constraints = "=r,r,l,l,l,r"
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), split, m)
    _gemv3_kernel[grid](
        x2, pw.qweight, pw.scale, pw.szero, out, bias if bias is not None else out,
        n, kw, pw.num_groups, wps, x2.stride(0), out.stride(0),
        BITS=pw.bits, GROUP=pw.group_size, WPG=pw.words_per_group, P=values_per_word(pw.bits),
        BLOCK_N=cfg["BLOCK_N"], TILE_W=tw, SPLIT_K=split, USE_ASM=use_asm, ASM=asm, CONSTRAINTS=constraints,
        PACK=pack, HAS_BIAS=bias is not None, EVICT=bool(cfg.get("EVICT", False)),
        PREFETCH=bool(cfg.get("PREFETCH", False)), PDL=pdl, num_warps=cfg["num_warps"],
        num_stages=int(cfg.get("num_stages", 1)), **({"launch_pdl": True} if pdl else {}))
    return out.to(x2.dtype) if split > 1 else out
