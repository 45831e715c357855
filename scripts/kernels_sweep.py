"""GPU variant sweep for the weight-only kernels: one call compiles, checks and times many configs.

Usage: python scripts/kernels_sweep.py [--out DIR]. Prints one line per (case, variant) and a
summary table last; writes DIR/sweep.json. Every variant is checked against the fp32 reference
on fresh random inputs (rel err) before it is timed (L2 flushed, median of do_bench).
"""
import argparse
import itertools
import json
import pathlib
import sys

import torch
import torch.nn.functional as F

from kernels import gemv as G
from kernels import reference as R
from kernels._timing import gpu_time_us
from kernels.dequant import dequantize
from kernels.packing import random_packed
from kernels.weight_only import weight_only_linear


def bench(fn) -> float:
    return gpu_time_us(fn, n=10, reps=5)


def rel(y, r) -> float:
    y, r = y.float(), r.float()
    return float("nan") if not torch.isfinite(y).all() else float((y - r).norm() / r.norm())


def run_case(rows, label, pw, x, path, cfg=None):
    try:
        y = weight_only_linear(x, pw, path=path, config=cfg)
        err = rel(y, R.weight_only_linear(x, pw))
        us = bench(lambda: weight_only_linear(x, pw, path=path, config=cfg))
    except Exception as e:  # noqa: BLE001 - a sweep records failures and goes on
        print(f"{label} {path} {cfg}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
        rows.append(dict(label=label, path=path, cfg=cfg, us=None, err=None, fail=str(e)[:300]))
        return None
    rows.append(dict(label=label, path=path, cfg=cfg, us=us, err=err))
    print(f"{label:<28} {path:<10} {us:9.2f} us err={err:.1e} {cfg}", flush=True)
    return us


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--part", default="gemv,gemm")
    args = ap.parse_args()
    parts = args.part.split(",")
    rows, summary = [], []
    torch.manual_seed(0)
    if "gemv" in parts:
        grid = list(itertools.product((4, 8, 16, 32), (128, 256), (4, 8), (True,)))
        grid += [(8, 128, 4, False), (16, 128, 4, False), (8, 256, 4, False), (4, 64, 4, True), (8, 64, 4, True)]
        for k, n in ((8192, 8192),):
            pw, *_ = random_packed(n, k, 4, 128, device="cuda", seed=k + n)
            x = torch.randn(1, k, device="cuda", dtype=torch.float16)
            w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
            t_torch = bench(lambda: F.linear(x, w16))
            del w16
            best = (None, 1e9)
            cands = grid if (k, n) == (8192, 8192) else [c for c in grid if c[0] in (8, 16) and c[2] == 4]
            for bn, tw, warps, xv in cands:
                cfg = dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=1, num_warps=warps, X_VEC=xv)
                us = run_case(rows, f"w4 M=1 {k}x{n}", pw, x, "gemv", cfg)
                if us and us < best[1]:
                    best = (cfg, us)
            v1 = run_case(rows, f"w4 M=1 {k}x{n}", pw, x, "gemv_v1")
            summary.append(f"W4 M=1 K={k} N={n}: v2 best {best[1]:.2f} us {best[0]} "
                           f"({pw.nbytes() / best[1] / 1e6:.2f} TB/s); v1 {v1}; torch fp16 {t_torch:.2f} us")
            xb = x.to(torch.bfloat16)
            ub = run_case(rows, f"w4 bf16 M=1 {k}x{n}", pw, xb, "gemv", best[0])
            summary.append(f"  bf16 with that cfg: {ub}")
            for m in (4, 16):
                xm = torch.randn(m, k, device="cuda", dtype=torch.float16)
                um = run_case(rows, f"w4 M={m} {k}x{n}", pw, xm, "gemv", best[0])
                summary.append(f"  M={m} gemv v2: {um}")
    if "lowbit" in parts:
        for bits in (3, 2):
            pw, *_ = random_packed(8192, 8192, bits, 128, device="cuda", seed=bits)
            x = torch.randn(1, 8192, device="cuda", dtype=torch.float16)
            best = (None, 1e9)
            for bn, tw, warps in ((8, 128, 4), (16, 128, 4), (16, 256, 4), (8, 256, 4), (32, 128, 8), (16, 256, 8)):
                for xv in ((True, False) if bits == 2 else (False,)):
                    cfg = dict(BLOCK_N=bn, TILE_W=tw, SPLIT_K=1, num_warps=warps, X_VEC=xv)
                    us = run_case(rows, f"w{bits} M=1 8192^2", pw, x, "gemv", cfg)
                    if us and us < best[1]:
                        best = (cfg, us)
            summary.append(f"W{bits} M=1 8192^2: best {best[1]:.2f} us {best[0]}")
    if "gemm" in parts:
        k = n = 8192
        pw, *_ = random_packed(n, k, 4, 128, device="cuda", seed=5)
        w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
        summary.append(f"dequant 8192^2 -> fp16: {bench(lambda: dequantize(pw, torch.float16)):.2f} us")
        for m in (16, 64, 256, 1024, 4096):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            t = bench(lambda: F.linear(x, w16))
            g = run_case(rows, f"w4 M={m} 8192^2", pw, x, "gemm")
            d = run_case(rows, f"w4 M={m} 8192^2", pw, x, "dequant")
            summary.append(f"M={m}: torch {t:.1f} us, gemm {g and round(g, 1)}, dequant {d and round(d, 1)}"
                           f" -> x torch gemm {g and t / g:.2f} dequant {d and t / d:.2f}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(dict(rows=rows, summary=summary), indent=1))
    print("\n==== SUMMARY ====")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
