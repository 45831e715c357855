"""GPU variant sweep for the weight-only and W8A8 kernels: one call checks and times many configs.

Usage: python scripts/kernels_sweep.py [--out DIR] [--part check,gemv,lowbit,mma,fp8]
Prints one line per (case, variant) and a summary last; writes DIR/sweep.json after every part.
Every timed variant is first checked against the fp32 reference on fresh random inputs (rel err).
Times: bitsweep.kernels._timing.gpu_time_us (CUDA-graph replays, L2 flushed, device time only).
"""
import argparse
import itertools
import json
import os
import pathlib
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from bitsweep.kernels import reference as R
from bitsweep.kernels import wo_mma
from bitsweep.kernels._timing import gpu_time_rotating_us, gpu_time_us
from bitsweep.kernels.packing import random_packed
from bitsweep.kernels.w8a8 import _mm_candidates, quantize_activation, scaled_mm
from bitsweep.kernels.weight_only import weight_only_linear


def bench(fn) -> float:
    return gpu_time_us(fn, n=10, reps=5)


def rel(y, r) -> float:
    y, r = y.float(), r.float()
    return float("nan") if not torch.isfinite(y).all() else float((y - r).norm() / r.norm())


def run_case(rows, label, pw, x, path, cfg=None, check=True):
    try:
        y = weight_only_linear(x, pw, path=path, config=cfg)
        err = rel(y, R.weight_only_linear(x, pw)) if check else float("nan")
        us = bench(lambda: weight_only_linear(x, pw, path=path, config=cfg))
    except Exception as e:  # noqa: BLE001 - a sweep records failures and goes on
        print(f"{label} {path} {cfg}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        rows.append(dict(label=label, path=path, cfg=cfg, us=None, err=None, fail=str(e)[:300]))
        return None
    rows.append(dict(label=label, path=path, cfg=cfg, us=us, err=err))
    print(f"{label:<26} {path:<6} {us:9.2f} us err={err:.1e} {cfg}", flush=True)
    return us


def best_of(rows, label, pw, x, path, cfgs, check=True):
    best = (None, float("inf"))
    for cfg in cfgs:
        us = run_case(rows, label, pw, x, path, cfg, check)
        if us is not None and us < best[1]:
            best = (cfg, us)
    return best


def check_case(rows, label, pw, x, b, path, cfg, tol) -> bool:
    """One GPU correctness case vs the fp32 reference (a failure to run counts as wrong); records a row."""
    try:
        e = rel(weight_only_linear(x, pw, b, path=path, config=cfg), R.weight_only_linear(x, pw, b))
    except Exception as err:  # noqa: BLE001 - a sweep records failures and goes on
        e = float("nan")
        print(f"{label} FAILED", type(err).__name__, str(err)[:300], flush=True)
    ok = e < tol
    rows.append(dict(label=f"check {label}", err=e, ok=ok))
    if not ok:
        print(f"{label}: rel={e:.2e} FAIL", flush=True)
    return ok


TOL = {torch.float16: 3e-3, torch.bfloat16: 1.5e-2}
TC_LAYOUTS = ((32, 256), (64, 640), (128, 1024), (None, 512), (128, 4096))  # (group, K)


def _check_grid(rows, tag, path, asm_ok, bits_list, layouts, m_cfgs, device="cuda"):
    """GPU correctness grid shared by the GEMV parts: for each bits, (group, K) layout (group None:
    per channel), activation dtype and (M, config), one ``check_case`` vs the fp32 reference, skipping
    inputs ``asm_ok(pw, x)`` rejects. Returns (failures, cases)."""
    bad = n_cases = 0
    for bits in bits_list:
        for g, k in layouts:
            g = g or k
            pw, *_ = random_packed(200, k, bits, g, device=device, seed=bits + k, fractional_zero=True)
            for dtype in (torch.float16, torch.bfloat16):
                for m, cfg in m_cfgs:
                    x = torch.randn(m, k, device=device, dtype=dtype)
                    b = torch.randn(200, device=device, dtype=dtype)
                    if not asm_ok(pw, x):
                        continue
                    n_cases += 1
                    bad += not check_case(rows, f"{tag} w{bits} g{g} K={k} {dtype} M={m} {cfg}", pw, x, b, path,
                                          cfg, TOL[dtype])
    return bad, n_cases


def part_check(rows, summary):
    """Correctness of the MMA kernel (PTX dequant) on the GPU, then the old check script."""
    os.environ["BITSWEEP_TUNE"] = "0"
    tol = {torch.float16: 3e-3, torch.bfloat16: 1.5e-2, torch.float32: 1e-4}
    bad = 0
    for bits in (2, 4, 8):
        for g, k in ((32, 256), (128, 1024), (None, 512)):
            g = g or k
            pw, *_ = random_packed(200, k, bits, g, device="cuda", seed=bits + k, fractional_zero=True)
            for dtype in (torch.float16, torch.bfloat16):
                for m, swap, bm, bn in ((16, True, 16, 64), (77, True, 32, 128), (300, False, 128, 128)):
                    bw = wo_mma._fit_block_w(pw, 64 // (32 // bits))
                    cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_W=bw, SPLIT_K=2 if swap else 1, GROUP_M=8,
                               SWAP=swap, num_warps=4, NUM_STAGES=3)
                    x = torch.randn(m, k, device="cuda", dtype=dtype)
                    b = torch.randn(200, device="cuda", dtype=dtype)
                    bad += not check_case(rows, f"mma w{bits} g{g} K={k} {dtype} M={m} swap={swap}", pw, x, b,
                                          "mma", cfg, tol[dtype])
    summary.append(f"mma check failures: {bad}")
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import kernels_check
    summary.append(f"kernels_check (default paths, BITSWEEP_TUNE=0) exit: {kernels_check.main()}")
    os.environ["BITSWEEP_TUNE"] = "1"


def part_gemv(rows, summary):
    k = n = 8192
    pw, *_ = random_packed(n, k, 4, 128, device="cuda", seed=1)
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
    t_torch = bench(lambda: F.linear(x, w16))
    del w16
    cfgs = [dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=1, num_warps=wp, X_VEC=True, num_stages=1, PREFETCH=pf, EVICT=ev)
            for pf, ev, bn, tw, wp in itertools.product((False, True), (False, True), (8, 16, 32), (128, 256), (4, 8))]
    cfgs += [dict(BLOCK_N=16, TILE_W=128, SPLIT_K=1, num_warps=4, X_VEC=True, num_stages=3),
             dict(BLOCK_N=4, TILE_W=128, SPLIT_K=1, num_warps=2, X_VEC=True, num_stages=1, PREFETCH=True)]
    cfg, us = best_of(rows, "w4 M=1 8192^2 gemv", pw, x, "gemv", cfgs)
    summary.append(f"W4 M=1 8192^2 gemv v2 best {us:.2f} us ({pw.nbytes() / us / 1e6:.2f} TB/s) {cfg}; "
                   f"torch fp16 {t_torch:.2f} us -> {t_torch / us:.2f}x")
    for diag in (1, 2):
        d = run_case(rows, f"w4 M=1 diag{diag}", pw, x, "gemv", dict(cfg, DIAG=diag), check=False)
        summary.append(f"  DIAG={diag} ({'loads only' if diag == 1 else 'no zero term'}): {d and round(d, 2)} us")
    xb = x.to(torch.bfloat16)
    ub = run_case(rows, "w4 bf16 M=1 8192^2 gemv", pw, xb, "gemv", cfg)
    summary.append(f"  bf16 with that config: {ub and round(ub, 2)} us")
    for kk, nn in ((8192, 28672), (28672, 8192)):
        pw2, *_ = random_packed(nn, kk, 4, 128, device="cuda", seed=2)
        x2 = torch.randn(1, kk, device="cuda", dtype=torch.float16)
        top = sorted((r for r in rows if r.get("label") == "w4 M=1 8192^2 gemv" and r.get("us")),
                     key=lambda r: r["us"])[:6]
        c2, u2 = best_of(rows, f"w4 M=1 {kk}x{nn} gemv", pw2, x2, "gemv", [r["cfg"] for r in top])
        summary.append(f"W4 M=1 K={kk} N={nn}: best {u2:.2f} us ({pw2.nbytes() / u2 / 1e6:.2f} TB/s) {c2}")
    return cfg


def part_lowbit(rows, summary, base_cfg):
    for bits in (3, 2):
        pw, *_ = random_packed(8192, 8192, bits, 128, device="cuda", seed=bits)
        x = torch.randn(1, 8192, device="cuda", dtype=torch.float16)
        if bits == 3:
            cfgs = [dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=1, num_warps=wp, X_VEC=False, num_stages=1, PREFETCH=pf,
                         FLAT=True)
                    for pf, bn, tw, wp in itertools.product((False, True), (8, 16, 32), (32, 64, 128), (4, 8))]
            cfgs.append(dict(BLOCK_N=16, TILE_W=128, SPLIT_K=1, num_warps=4, X_VEC=False))  # padded chunks
        else:
            cfgs = [dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=1, num_warps=wp, X_VEC=True, num_stages=1, PREFETCH=pf,
                         EVICT=ev)
                    for pf, ev, bn, tw, wp in itertools.product((False, True), (False, True), (8, 16, 32),
                                                                (128, 256), (4,))]
        cfg, us = best_of(rows, f"w{bits} M=1 8192^2 gemv", pw, x, "gemv", cfgs)
        summary.append(f"W{bits} M=1 8192^2: best {us:.2f} us ({pw.nbytes() / us / 1e6:.2f} TB/s) {cfg}")


def part_repeat(rows, summary):
    """Run-to-run spread of the best M=1 configs (a one-off fast timing must repeat to count)."""
    pw, *_ = random_packed(8192, 8192, 4, 128, device="cuda", seed=1)
    x = torch.randn(1, 8192, device="cuda", dtype=torch.float16)
    base = dict(BLOCK_N=16, TILE_W=128, SPLIT_K=1, num_warps=4, X_VEC=True, num_stages=1, PREFETCH=False, EVICT=True)
    for name, cfg in (("best", base), ("bn8", dict(base, BLOCK_N=8)), ("no-evict", dict(base, EVICT=False)),
                      ("stages3", dict(base, num_stages=3))):
        ts = [run_case(rows, f"repeat {name}", pw, x, "gemv", cfg) for _ in range(4)]
        summary.append(f"repeat W4 M=1 {name}: {[round(t, 2) for t in ts if t]}")
    for bits in (2, 3):
        pwb, *_ = random_packed(8192, 8192, bits, 128, device="cuda", seed=bits)
        for bn in (16, 32):
            cfg = dict(base, BLOCK_N=bn, X_VEC=bits == 2)
            ts = [run_case(rows, f"repeat w{bits} bn{bn}", pwb, x, "gemv", cfg) for _ in range(3)]
            summary.append(f"repeat W{bits} M=1 bn{bn} evict: {[round(t, 2) for t in ts if t]}")


def part_small(rows, summary):
    """M = 16: swap-AB MMA variants, including N-tiles below 64 (Triton falls back from wgmma to mma.sync)."""
    k = n = 8192
    pw, *_ = random_packed(n, k, 4, 128, device="cuda", seed=5)
    x = torch.randn(16, k, device="cuda", dtype=torch.float16)
    cfgs = [dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_W=bk // 8, SPLIT_K=sp, GROUP_M=1, SWAP=True, num_warps=wp, NUM_STAGES=st)
            for bn, bk, sp, wp, st in ((16, 128, 4, 2, 3), (32, 128, 4, 2, 3), (32, 128, 2, 4, 3), (32, 256, 2, 4, 3),
                                       (64, 128, 4, 4, 2), (64, 128, 4, 4, 4), (64, 128, 8, 4, 3), (64, 256, 4, 4, 3),
                                       (128, 128, 4, 8, 3), (128, 128, 2, 4, 3), (32, 128, 8, 2, 3), (16, 256, 2, 2, 3))]
    cfg, us = best_of(rows, "w4 M=16 8192^2 mma", pw, x, "mma", cfgs)
    summary.append(f"M=16 8192^2 best mma {us:.1f} us {cfg}")
    xa = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for fmt in ("int8", "fp8"):
        t = bench(lambda: quantize_activation(xa, fmt))
        q, s_ = quantize_activation(xa, fmt)
        rq, rs = (R.quantize_activation_int8 if fmt == "int8" else R.quantize_activation_fp8)(xa)
        diff = (q.float() - rq.float()).abs().max().item()
        summary.append(f"act quant {fmt} 8192^2: {t:.1f} us = {3 * 8192 * 8192 / t / 1e6:.2f} TB/s; max code diff {diff}")


def part_mma(rows, summary):
    k = n = 8192
    pw, *_ = random_packed(n, k, 4, 128, device="cuda", seed=5)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
    from bitsweep.kernels.dequant import dequantize
    for dc in ((32, 16), (16, 32), (64, 16), (16, 16), None):
        summary.append(f"dequant 8192^2 fp16 dense_cfg={dc}: {bench(lambda: dequantize(pw, torch.float16, dc)):.1f} us")
    for m in (2, 16, 64, 256, 1024, 4096):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        t = bench(lambda: F.linear(x, w16))
        cfgs = wo_mma.candidates(m, n, pw)
        cfg, us = best_of(rows, f"w4 M={m} 8192^2 mma", pw, x, "mma", cfgs)
        d = run_case(rows, f"w4 M={m} 8192^2", pw, x, "dequant")
        g = run_case(rows, f"w4 M={m} 8192^2", pw, x, "gemm") if m <= 64 else None
        summary.append(f"M={m}: torch {t:.1f} us | mma {us:.1f} ({t / us:.2f}x) {cfg} | dequant {d and round(d, 1)}"
                       f" | gemm {g and round(g, 1)}")
    del w16
    for kk, nn in ((8192, 28672), (28672, 8192)):
        pw2, *_ = random_packed(nn, kk, 4, 128, device="cuda", seed=2)
        w2 = torch.randn(nn, kk, device="cuda", dtype=torch.float16)
        for m in (16, 1024):
            x = torch.randn(m, kk, device="cuda", dtype=torch.float16)
            t = bench(lambda: F.linear(x, w2))
            cfg, us = best_of(rows, f"w4 M={m} {kk}x{nn} mma", pw2, x, "mma", wo_mma.candidates(m, nn, pw2))
            summary.append(f"M={m} K={kk} N={nn}: torch {t:.1f} us | mma {us:.1f} ({t / us:.2f}x) {cfg}")
        del w2


@triton.jit
def _read_kernel(p, out, NW, BLOCK: tl.constexpr, ITERS: tl.constexpr, UNROLL: tl.constexpr):
    """Diagnostic: sum NW int32 words, each program BLOCK x ITERS consecutive words."""
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    base = pid * (BLOCK * ITERS)
    if UNROLL:
        for i in tl.static_range(ITERS):
            offs = base + i * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(p + offs, mask=offs < NW, other=0, eviction_policy="evict_first")
    else:
        for i in range(ITERS):
            offs = base + i * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(p + offs, mask=offs < NW, other=0, eviction_policy="evict_first")
    tl.store(out + pid, tl.sum(acc))


def _copies(make, nbytes, min_total=400 * 2 ** 20, most=32):
    """Enough independent copies of an input (each from make(i)) to total > min_total bytes."""
    return [make(i) for i in range(max(2, min(most, -(-min_total // nbytes))))]


def part_timing(rows, summary):
    """Three timers on the same calls: write-flush (old), read-flush, rotating copies (no flush)."""
    def timers(label, make_fn, nbytes):
        fns = _copies(make_fn, nbytes)
        res = dict(write=gpu_time_us(fns[0], n=10, reps=5, flush="write"),
                   read=gpu_time_us(fns[0], n=10, reps=5, flush="read"),
                   rotating=gpu_time_rotating_us(fns, n=max(40, len(fns)), reps=7))
        rows.append(dict(label=f"timing {label}", nbytes=nbytes, **res))
        line = f"{label:<34} " + " ".join(f"{k} {v:7.2f} us ({nbytes / v / 1e6:.2f} TB/s)" for k, v in res.items())
        print(line, flush=True)
        summary.append(line)
        del fns
        torch.cuda.empty_cache()
        return res

    nw = 8192 * 8192 // 8  # int32 words of a W4 8192^2 weight (33.5 MB)
    for block, iters, wp, unroll in ((1024, 1, 4, False), (1024, 4, 4, True), (2048, 4, 8, True),
                                     (4096, 4, 8, True), (1024, 16, 4, False), (4096, 1, 8, False),
                                     (512, 8, 4, True), (2048, 8, 4, True)):
        grid = (triton.cdiv(nw, block * iters),)

        def make(i, block=block, iters=iters, wp=wp, unroll=unroll, grid=grid):
            buf = torch.randint(-2 ** 30, 2 ** 30, (nw,), device="cuda", dtype=torch.int32)
            out = torch.empty(grid[0], device="cuda", dtype=torch.int32)
            return lambda: _read_kernel[grid](buf, out, nw, BLOCK=block, ITERS=iters, UNROLL=unroll, num_warps=wp)
        timers(f"read 33.5MB blk{block} it{iters} w{wp} u{int(unroll)}", make, nw * 4)
    big = torch.empty(2 ** 28, device="cuda", dtype=torch.float16)

    def make_copy(i):
        a = torch.randn(2 ** 24, device="cuda", dtype=torch.float16)
        b = torch.empty_like(a)
        return lambda: b.copy_(a)
    timers("copy 32MB (bytes r+w)", make_copy, 2 * 2 ** 25)
    del big
    for k, n in ((8192, 8192), (4096, 4096), (8192, 28672)):
        def make_t(i, k=k, n=n):
            x = torch.randn(1, k, device="cuda", dtype=torch.float16)
            w = torch.randn(n, k, device="cuda", dtype=torch.float16)
            return lambda: F.linear(x, w)
        timers(f"torch fp16 M=1 {k}x{n}", make_t, 2 * n * k)
        for bits in ((4, 3, 2) if k == n == 8192 else (4,)):
            pws = []

            def make_w(i, k=k, n=n, bits=bits, pws=pws):
                pw, *_ = random_packed(n, k, bits, 128, device="cuda", seed=i)
                x = torch.randn(1, k, device="cuda", dtype=torch.float16)
                pws.append(pw)
                return lambda: weight_only_linear(x, pw, path="gemv")
            timers(f"W{bits} gemv M=1 {k}x{n}", make_w, random_packed(8, k, bits, 128)[0].nbytes() * n // 8)
            if bits == 4 and k == n == 8192:
                from bitsweep.kernels._tuning import _cache
                cfg = next((v for kk, v in _cache().items() if "gemv2" in kk), None)
                summary.append(f"  tuned cfg {cfg}")

                def make_d(i, k=k, n=n, cfg=cfg):
                    pw, *_ = random_packed(n, k, 4, 128, device="cuda", seed=i)
                    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
                    return lambda: weight_only_linear(x, pw, path="gemv", config=dict(cfg, DIAG=1))
                timers("W4 gemv DIAG=1 (loads only)", make_d, pws[0].nbytes())
    for m in (16,):
        def make_m(i, m=m):
            pw, *_ = random_packed(8192, 8192, 4, 128, device="cuda", seed=i)
            x = torch.randn(m, 8192, device="cuda", dtype=torch.float16)
            return lambda: weight_only_linear(x, pw)
        timers(f"W4 default path M={m} 8192^2", make_m, 8192 * 8192 // 2)


def part_gemv_rot(rows, summary):
    """GEMV v2 configs timed by the rotating timer (8 weight copies, no flush)."""
    for k, n in ((8192, 8192), (4096, 4096), (8192, 28672)):
        ncop = 12 if n * k <= 8192 * 8192 else 4
        pws = [random_packed(n, k, 4, 128, device="cuda", seed=i)[0] for i in range(ncop)]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        ref = R.weight_only_linear(x, pws[0])
        cfgs = [dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=sp, num_warps=wp, X_VEC=True, num_stages=1, EVICT=True,
                     PREFETCH=pf)
                for bn, tw, wp, sp, pf in itertools.product((8, 16, 32), (128, 256), (4, 8), (1, 2), (False, True))
                if not (n > 4096 and sp > 1)]
        best = (None, float("inf"))
        for cfg in cfgs:
            try:
                err = rel(weight_only_linear(x, pws[0], path="gemv", config=cfg), ref)
                us = gpu_time_rotating_us([lambda pw=pw: weight_only_linear(x, pw, path="gemv", config=cfg)
                                           for pw in pws], n=48)
            except Exception as e:  # noqa: BLE001
                print("FAILED", cfg, str(e)[:200], flush=True)
                continue
            rows.append(dict(label=f"gemv rot {k}x{n}", cfg=cfg, us=us, err=err))
            print(f"gemv rot {k}x{n} {us:8.2f} us err={err:.1e} {cfg}", flush=True)
            if us < best[1]:
                best = (cfg, us)
        summary.append(f"gemv rotating {k}x{n}: best {best[1]:.2f} us ({pws[0].nbytes() / best[1] / 1e6:.2f} TB/s) "
                       f"{best[0]}")
        del pws
        torch.cuda.empty_cache()


def _rot_us(fn_of_pw, pws):
    return gpu_time_rotating_us([lambda pw=pw: fn_of_pw(pw) for pw in pws], n=48)


def _time_cfgs(rows, label, x, pws, path, cfgs):
    """Check (vs the fp32 reference) and time (rotating copies) each config of ``path``; records a row per
    config, prints it, and returns [(us, cfg, err)] fastest first (failures are printed and skipped)."""
    ref = R.weight_only_linear(x, pws[0])
    res = []
    for cfg in cfgs:
        try:
            err = rel(weight_only_linear(x, pws[0], path=path, config=cfg), ref)
            us = _rot_us(lambda pw: weight_only_linear(x, pw, path=path, config=cfg), pws)
        except Exception as e:  # noqa: BLE001 - a sweep records failures and goes on
            print("FAILED", label, cfg, str(e)[:300], flush=True)
            continue
        rows.append(dict(label=label, cfg=cfg, us=us, err=err))
        print(f"{label} {us:8.2f} us err={err:.1e} {cfg}", flush=True)
        res.append((us, cfg, err))
    return sorted(res, key=lambda t: t[0])


def part_v3(rows, summary, timing=True):
    """GEMV v3 (kernels/gemv3.py): GPU correctness grid, then v3 configs vs v2 vs torch (rotating timer)."""
    from bitsweep.kernels import gemv3
    os.environ["BITSWEEP_TUNE"] = "0"
    bad, _ = _check_grid(
        rows, "v3", "gemv3", gemv3.asm_ok, (2, 3, 4), ((32, 256), (64, 640), (128, 1024), (None, 512), (None, 1000)),
        ((1, dict(BLOCK_N=8, TILE_W=128, SPLIT_K=1, num_warps=4, EVICT=True)),
         (1, dict(BLOCK_N=16, TILE_W=64, SPLIT_K=2, num_warps=4, EVICT=True, PREFETCH=True)),
         (1, dict(BLOCK_N=8, TILE_W=128, SPLIT_K=1, num_warps=4, PACK=1)),
         (1, dict(BLOCK_N=4, TILE_W=256, SPLIT_K=3, num_warps=4, PACK=2, PREFETCH=True)),
         (3, dict(BLOCK_N=4, TILE_W=256, SPLIT_K=1, num_warps=2, EVICT=False))))
    summary.append(f"v3 check failures: {bad}")
    os.environ["BITSWEEP_TUNE"] = "1"
    if not timing:
        return
    cases = [(4, 8192, 8192, torch.float16), (4, 4096, 4096, torch.float16), (4, 8192, 28672, torch.float16),
             (4, 28672, 8192, torch.float16), (4, 4096, 11008, torch.float16), (4, 11008, 4096, torch.float16),
             (3, 8192, 8192, torch.float16), (2, 8192, 8192, torch.float16), (4, 8192, 8192, torch.bfloat16)]
    for bits, k, n, dtype in cases:
        ncop = max(2, min(24, (400 * 2 ** 20) // (n * k // 2)))
        pws = [random_packed(n, k, bits, 128, device="cuda", seed=i)[0] for i in range(ncop)]
        x = torch.randn(1, k, device="cuda", dtype=dtype)
        label = f"W{bits} {k}x{n} {str(dtype)[6:]}"
        cfgs = gemv3.candidates(n, pws[0]) + [dict(BLOCK_N=8, TILE_W=128, SPLIT_K=1, num_warps=4, EVICT=False),
                                              dict(BLOCK_N=8, TILE_W=128, SPLIT_K=1, num_warps=8, EVICT=True),
                                              dict(BLOCK_N=32, TILE_W=128, SPLIT_K=1, num_warps=8, EVICT=True)]
        res = _time_cfgs(rows, f"v3 {label}", x, pws, "gemv3", cfgs)
        best = (res[0][1], res[0][0]) if res else (None, float("inf"))
        v2 = _rot_us(lambda pw: weight_only_linear(x, pw, path="gemv"), pws)
        del pws
        torch.cuda.empty_cache()
        ws = [torch.randn(n, k, device="cuda", dtype=dtype) for _ in range(max(2, min(8, (400 * 2 ** 20) // (2 * n * k))))]
        t = gpu_time_rotating_us([lambda w=w: F.linear(x, w) for w in ws], n=48)
        del ws
        torch.cuda.empty_cache()
        nbytes = random_packed(8, k, bits, 128)[0].nbytes() * n // 8
        summary.append(f"{label}: v3 {best[1]:.2f} us ({nbytes / best[1] / 1e6:.2f} TB/s) {best[0]} | v2 {v2:.2f} | "
                       f"torch {t:.2f} -> {t / best[1]:.2f}x")


def part_tc(rows, summary, timing=True):
    """Tensor-core GEMV (kernels/gemv_tc.py): GPU correctness grid, then configs vs v3 / MMA / torch at M=1..16."""
    from bitsweep.kernels import gemv_tc
    os.environ["BITSWEEP_TUNE"] = "0"
    bad, n_cases = _check_grid(
        rows, "tc", "gemv_tc", gemv_tc.asm_ok, (2, 4, 8), TC_LAYOUTS,
        ((1, dict(BLOCK_N=64, KS=4, U=4, SPLIT_K=1, num_warps=4, EVICT=True, PREFETCH=True)),
         (5, dict(BLOCK_N=32, SPLIT_K=2, num_warps=2, EVICT=True)),
         (16, dict(BLOCK_N=128, KS=4, U=2, SPLIT_K=1, num_warps=4, EVICT=True, PREFETCH=True)),
         (9, dict(BLOCK_N=128, KS=2, U=4, SPLIT_K=3, num_warps=4, PREFETCH=True)),
         (37, dict(BLOCK_N=128, KS=8, U=1, SPLIT_K=1, num_warps=8, EVICT=True, PREFETCH=True))))
    summary.append(f"tc check failures: {bad} of {n_cases}")
    os.environ["BITSWEEP_TUNE"] = "1"
    if not timing:
        return
    cases = [(4, 8192, 8192, torch.float16), (4, 4096, 4096, torch.float16), (4, 8192, 28672, torch.float16),
             (4, 28672, 8192, torch.float16), (4, 4096, 12288, torch.float16), (4, 11008, 4096, torch.float16),
             (2, 8192, 8192, torch.float16), (4, 8192, 8192, torch.bfloat16), (8, 8192, 8192, torch.float16)]
    for bits, k, n, dtype in cases:
        ncop = max(2, min(24, (400 * 2 ** 20) // (n * k * bits // 8)))
        pws = [random_packed(n, k, bits, 128, device="cuda", seed=i)[0] for i in range(ncop)]
        label = f"W{bits} {k}x{n} {str(dtype)[6:]}"
        for m in (1, 16) if bits == 4 else (1,):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            res = _time_cfgs(rows, f"tc {label} M={m}", x, pws, "gemv_tc", gemv_tc.candidates(n, pws[0]))
            best = (res[0][1], res[0][0]) if res else (None, float("inf"))
            other = "gemv3" if m == 1 else "mma"
            if bits == 8 and m == 1:
                other = "gemv"
            try:
                o = _rot_us(lambda pw: weight_only_linear(x, pw, path=other), pws)
            except Exception as e:  # noqa: BLE001
                o = float("nan")
                print("FAILED", other, str(e)[:200], flush=True)
            ws = [torch.randn(n, k, device="cuda", dtype=dtype)
                  for _ in range(max(2, min(8, (400 * 2 ** 20) // (2 * n * k))))]
            t = gpu_time_rotating_us([lambda w=w: F.linear(x, w) for w in ws], n=48)
            del ws
            torch.cuda.empty_cache()
            nbytes = random_packed(8, k, bits, 128)[0].nbytes() * n // 8
            summary.append(f"{label} M={m}: tc {best[1]:.2f} us ({nbytes / best[1] / 1e6:.2f} TB/s) {best[0]} | "
                           f"{other} {o:.2f} | torch {t:.2f} -> {t / best[1]:.2f}x")
        del pws
        torch.cuda.empty_cache()


def part_v3grid(rows, summary, bits=4):
    """Wider v3 config grid on the decode shapes (Llama-7B fused q/k/v, o, fused gate/up, down) and 8192^2;
    bits=2: 8192^2 only."""
    cases = [(4096, 12288), (4096, 4096), (4096, 22016), (11008, 4096), (8192, 8192)] if bits == 4 else [(8192, 8192)]
    grid = [dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=sp, num_warps=wp, EVICT=True, PREFETCH=True)
            for bn in (4, 8, 16, 32) for tw in (32, 64, 128, 256) for wp in (2, 4, 8) for sp in (1, 2)
            if bn * tw >= 4 * 32 * wp and bn * tw <= 32 * 32 * wp and (sp == 1 or bn <= 8)]
    for k, n in cases:
        ncop = max(2, min(24, (400 * 2 ** 20) // (n * k // 2)))
        pws = [random_packed(n, k, bits, 128, device="cuda", seed=i)[0] for i in range(ncop)]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        res = _time_cfgs(rows, f"v3grid W{bits} {k}x{n}", x, pws, "gemv3", grid)
        tuned_us = _rot_us(lambda pw: weight_only_linear(x, pw), pws)
        nbytes = pws[0].nbytes()
        for us, cfg, err in res[:3]:
            print(f"v3grid {k}x{n} {us:7.2f} us {nbytes / us / 1e6:.2f} TB/s err={err:.1e} {cfg}", flush=True)
        summary.append(f"v3grid W{bits} {k}x{n}: best {res[0][0]:.2f} us {res[0][1]} | default dispatch {tuned_us:.2f} us")
        del pws
        torch.cuda.empty_cache()


def part_tcsv(rows, summary):
    """Tensor-core GEMV: scale pairs loaded a step ahead by their own PTX block (SV) vs inside the mma block."""
    from bitsweep.kernels import gemv_tc
    for k, n, ms in ((8192, 8192, (1, 16)), (4096, 12288, (1, 16)), (28672, 8192, (16,))):
        ncop = max(2, min(24, (400 * 2 ** 20) // (n * k // 2)))
        pws = [random_packed(n, k, 4, 128, device="cuda", seed=i)[0] for i in range(ncop)]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            cfgs = [dict(c, SV=sv) for c in gemv_tc.candidates(n, pws[0]) for sv in (True, False)]
            res = _time_cfgs(rows, f"tcsv W4 {k}x{n} M={m}", x, pws, "gemv_tc", cfgs)
            best = {sv: next(((us, c) for us, c, _ in res if c["SV"] == sv), None) for sv in (True, False)}
            summary.append(f"tcsv W4 {k}x{n} M={m}: SV {best.get(True)} | in-PTX scales {best.get(False)}")
        del pws
        torch.cuda.empty_cache()


def part_tcpack(rows, summary):
    """Tensor-core GEMV with two 16-row blocks per PTX call (PACK=16: one x fragment load shared by both):
    GPU correctness grid, then every candidate timed (rotating copies), the best PACK=8 vs the best
    PACK=16, at M = 1 and 16 (NOTES.md run 9)."""
    from bitsweep.kernels import gemv_tc
    bad, n_cases = _check_grid(
        rows, "tcpack", "gemv_tc", gemv_tc.asm_ok, (2, 4, 8), TC_LAYOUTS,
        ((1, dict(BLOCK_N=128, KS=4, U=2, SPLIT_K=1, num_warps=4, EVICT=True, PREFETCH=True, PACK=16)),
         (16, dict(BLOCK_N=256, KS=8, U=4, SPLIT_K=1, num_warps=8, PREFETCH=True, PACK=16)),
         (9, dict(BLOCK_N=128, KS=2, U=2, SPLIT_K=3, num_warps=2, PACK=16, SV=False)),
         (16, dict(BLOCK_N=128, KS=1, U=1, SPLIT_K=1, num_warps=4, PACK=16)),
         (5, dict(BLOCK_N=64, KS=2, U=2, SPLIT_K=1, num_warps=2, PREFETCH=True, PACK=16))))
    summary.append(f"tcpack check failures: {bad} of {n_cases}")
    cases = [(4, 8192, 8192, (1, 16)), (4, 4096, 4096, (16,)), (4, 8192, 28672, (16,)), (4, 28672, 8192, (16,)),
             (2, 8192, 8192, (1, 16))]
    for bits, k, n, ms in cases:
        ncop = max(2, min(24, (400 * 2 ** 20) // (n * k * bits // 8)))
        pws = [random_packed(n, k, bits, 128, device="cuda", seed=i)[0] for i in range(ncop)]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            res = _time_cfgs(rows, f"tcpack W{bits} {k}x{n} M={m}", x, pws, "gemv_tc", gemv_tc.candidates(n, pws[0]))
            best = {pk: next(((round(us, 2), c) for us, c, _ in res if c.get("PACK", 8) == pk), None) for pk in (8, 16)}
            auto = _rot_us(lambda pw: weight_only_linear(x, pw), pws)
            summary.append(f"tcpack W{bits} {k}x{n} M={m}: PACK=8 {best[8]} | PACK=16 {best[16]} | "
                           f"dispatch (tuned) {auto:.2f} us")
        del pws
        torch.cuda.empty_cache()


def part_pdl(rows, summary):
    """W4 M=1 decode shapes: the tuned GEMV alone and after an RMS-norm kernel (a decode step's pattern),
    rotating copies in one CUDA graph, without and with programmatic dependent launch (weight_only.USE_PDL);
    then W2 / bf16 / M=16 (tensor-core GEMV) with the current PTX for comparison with earlier runs."""
    from bitsweep.kernels import weight_only as wo
    cases = [(8192, 8192), (4096, 4096), (4096, 12288), (4096, 22016), (11008, 4096), (8192, 28672)]
    for k, n in cases:
        ncop = max(2, min(24, (400 * 2 ** 20) // (n * k // 2)))
        pws = [random_packed(n, k, 4, 128, device="cuda", seed=i)[0] for i in range(ncop)]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        wn = torch.ones(k, device="cuda", dtype=torch.float16)
        ref = R.weight_only_linear(x, pws[0])
        res = {}
        for pdl in (False, True):
            wo.USE_PDL = pdl
            err = rel(weight_only_linear(x, pws[0]), ref)
            alone = _rot_us(lambda pw: weight_only_linear(x, pw), pws)
            normed = _rot_us(lambda pw: weight_only_linear(F.rms_norm(x, (k,), wn), pw), pws)
            norm_only = gpu_time_rotating_us([lambda: F.rms_norm(x, (k,), wn)], n=48)
            res[pdl] = (alone, normed, norm_only, err)
            rows.append(dict(label=f"pdl W4 {k}x{n}", pdl=pdl, us=alone, us_after_norm=normed, norm_us=norm_only,
                             err=err))
            print(f"pdl={pdl} W4 {k}x{n}: alone {alone:.2f} us, norm+gemv {normed:.2f} us (norm alone "
                  f"{norm_only:.2f}) err={err:.1e}", flush=True)
        wo.USE_PDL = False
        summary.append(f"pdl W4 {k}x{n}: alone {res[False][0]:.2f} -> {res[True][0]:.2f} us | norm+gemv "
                       f"{res[False][1]:.2f} -> {res[True][1]:.2f} us (norm alone {res[False][2]:.2f})")
        del pws
        torch.cuda.empty_cache()


def part_newptx(rows, summary):
    """W2 / W4 bf16 / M=16 / the 8192^2 M=1 case through the default dispatch, for comparison with earlier runs."""
    for bits, k, n, m, dtype in ((4, 8192, 8192, 1, torch.float16), (2, 8192, 8192, 1, torch.float16),
                                 (4, 8192, 8192, 1, torch.bfloat16),
                                 (4, 8192, 8192, 16, torch.float16), (4, 4096, 12288, 16, torch.float16)):
        ncop = max(2, min(24, (400 * 2 ** 20) // (n * k * bits // 8)))
        pws = [random_packed(n, k, bits, 128, device="cuda", seed=i)[0] for i in range(ncop)]
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        err = rel(weight_only_linear(x, pws[0]), R.weight_only_linear(x, pws[0]))
        us = _rot_us(lambda pw: weight_only_linear(x, pw), pws)
        rows.append(dict(label=f"new-ptx W{bits} {k}x{n} M={m} {dtype}", us=us, err=err))
        summary.append(f"new-ptx W{bits} {k}x{n} M={m} {str(dtype)[6:]}: tuned dispatch {us:.2f} us err={err:.1e}")
        del pws
        torch.cuda.empty_cache()


def part_fp8(rows, summary):
    m, k, n = 4096, 8192, 8192
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    t = bench(lambda: F.linear(a, w))
    for fmt in ("fp8", "int8"):
        q, s = quantize_activation(a, fmt)
        wq, ws = (R.quantize_weight_int8 if fmt == "int8" else R.quantize_weight_fp8)(w)
        ref = (R.int8_scaled_mm if fmt == "int8" else R.fp8_scaled_mm)(q, s, wq, ws, None, torch.bfloat16)
        best = (None, float("inf"))
        for cfg in _mm_candidates(m):
            try:
                e = rel(scaled_mm(q, s, wq, ws, None, torch.bfloat16, config=cfg), ref)
                us = bench(lambda: scaled_mm(q, s, wq, ws, None, torch.bfloat16, config=cfg))
            except Exception as err:  # noqa: BLE001
                print(f"{fmt} {cfg}: FAILED {type(err).__name__}: {str(err)[:300]}", flush=True)
                rows.append(dict(label=f"{fmt} M=4096 8192^2", cfg=cfg, us=None, fail=str(err)[:300]))
                continue
            rows.append(dict(label=f"{fmt} M=4096 8192^2", cfg=cfg, us=us, err=e))
            print(f"{fmt} M=4096 8192^2 {us:9.2f} us ({2 * m * n * k / us / 1e6:.0f} TFLOP/s) err={e:.1e} {cfg}",
                  flush=True)
            if us < best[1]:
                best = (cfg, us)
        ts = None
        if fmt == "fp8":
            try:
                ts = bench(lambda: torch._scaled_mm(q, wq.t(), scale_a=s[:, None], scale_b=ws[None, :],
                                                    out_dtype=torch.bfloat16))
            except Exception as err:  # noqa: BLE001
                print("torch._scaled_mm failed:", str(err)[:200], flush=True)
        summary.append(f"{fmt} M=4096 8192^2: best {best[1]:.1f} us = {t / best[1]:.2f}x torch bf16 ({t:.1f} us) "
                       f"{best[0]}; torch._scaled_mm {ts and round(ts, 1)}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--part", default="check,gemv,lowbit,mma,fp8")
    args = ap.parse_args()
    parts = args.part.split(",")
    rows, summary = [], []
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    base = None
    for name in parts:
        t0 = time.time()
        if name == "check":
            part_check(rows, summary)
        elif name == "gemv":
            base = part_gemv(rows, summary)
        elif name == "lowbit":
            part_lowbit(rows, summary, base)
        elif name == "small":
            part_small(rows, summary)
        elif name == "repeat":
            part_repeat(rows, summary)
        elif name == "mma":
            part_mma(rows, summary)
        elif name == "fp8":
            part_fp8(rows, summary)
        elif name == "timing":
            part_timing(rows, summary)
        elif name == "v3":
            part_v3(rows, summary)
        elif name == "v3check":
            part_v3(rows, summary, timing=False)
        elif name == "v3grid":
            part_v3grid(rows, summary)
        elif name == "v3grid2":
            part_v3grid(rows, summary, bits=2)
        elif name == "tc":
            part_tc(rows, summary)
        elif name == "tcpack":
            part_tcpack(rows, summary)
        elif name == "tcsv":
            part_tcsv(rows, summary)
        elif name == "tccheck":
            part_tc(rows, summary, timing=False)
        elif name == "pdl":
            part_pdl(rows, summary)
        elif name == "newptx":
            part_newptx(rows, summary)
        elif name == "gemv_rot":
            part_gemv_rot(rows, summary)
        summary.append(f"[{name}: {time.time() - t0:.0f} s]")
        (out / "sweep.json").write_text(json.dumps(dict(rows=rows, summary=summary), indent=1))
        print("\n".join(summary[-3:]), flush=True)
    print("\n==== SUMMARY ====")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
