"""Large-M W4A16 (prefill) probe: ways to hide the dequant pass in front of cuBLAS.

Usage: python scripts/kernels_large_m.py [--m 1024 4096] [--out FILE.json]
For each (K, N) of the bench grid and M it times, in one process with the bench's rotating timer:
  base       torch F.linear on the fp16 weight (the bench's baseline)
  seq        the current path: dequantize the whole weight, then F.linear
  chunk<nc>  N split in chunks of nc rows: dequantize a chunk into one reused [nc, K] buffer
             (small enough to stay in L2), then mm into the output's column slice
  ovl<nc>    as chunk, two buffers, the dequant of chunk i+1 on a side stream while chunk i multiplies
  ovl<nc>c<s> as ovl with cuBLAS told to leave s SMs free (torch._C._set_sm_carveout_experimental)
and checks every variant's output against seq. Prints a table and writes the JSON.
"""
import argparse
import dataclasses
import json

import torch

from bitsweep.kernels._timing import gpu_time_rotating_us  # noqa: E402
from bitsweep.kernels.dequant import dequantize  # noqa: E402
from bitsweep.kernels.packing import random_packed  # noqa: E402

SHAPES = [(4096, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]  # (K, N)


def rows(pw, n0: int, n1: int):
    return dataclasses.replace(pw, qweight=pw.qweight[n0:n1], scale=pw.scale[n0:n1], szero=pw.szero[n0:n1],
                               out_features=n1 - n0)


def seq_fn(x, pw, y):
    def fn():
        w = dequantize(pw, x.dtype)
        torch.mm(x, w.t(), out=y)
    return fn


def chunk_fn(x, pw, y, nc, buf):
    n = pw.out_features
    subs = [(n0, min(n, n0 + nc), rows(pw, n0, min(n, n0 + nc))) for n0 in range(0, n, nc)]

    def fn():
        for n0, n1, sub in subs:
            b = buf[: n1 - n0]
            dequantize(sub, x.dtype, out=b)
            torch.mm(x, b.t(), out=y[:, n0:n1])
    return fn


def overlap_fn(x, pw, y, nc, bufs, side, carve=None):
    n = pw.out_features
    subs = [(n0, min(n, n0 + nc), rows(pw, n0, min(n, n0 + nc))) for n0 in range(0, n, nc)]

    def fn():
        cur = torch.cuda.current_stream()
        dq = [torch.cuda.Event() for _ in subs]
        mm = [torch.cuda.Event() for _ in subs]
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            dequantize(subs[0][2], x.dtype, out=bufs[0][: subs[0][1] - subs[0][0]])
            dq[0].record(side)
        for i, (n0, n1, sub) in enumerate(subs):
            if i + 1 < len(subs):
                a0, a1, nxt = subs[i + 1]
                with torch.cuda.stream(side):
                    if i >= 1:
                        side.wait_event(mm[i - 1])
                    dequantize(nxt, x.dtype, out=bufs[(i + 1) % 2][: a1 - a0])
                    dq[i + 1].record(side)
            cur.wait_event(dq[i])
            torch.mm(x, bufs[i % 2][: n1 - n0].t(), out=y[:, n0:n1])
            mm[i].record(cur)
        cur.wait_stream(side)

    if carve is None:
        return fn

    def fn_carve():
        torch._C._set_sm_carveout_experimental(carve)
        try:
            fn()
        finally:
            torch._C._set_sm_carveout_experimental(None)
    return fn_carve


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--shapes", default="all")
    ap.add_argument("--carve", type=int, nargs="*", default=[16])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    results = []
    has_carve = hasattr(torch._C, "_set_sm_carveout_experimental")
    side = torch.cuda.Stream()
    shapes = SHAPES if args.shapes == "all" else [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    for k, n in shapes:
        pws = [random_packed(n, k, 4, 128, device=dev, seed=i)[0] for i in range(2)]
        ws = [dequantize(p, torch.float16) for p in pws]
        for m in args.m:
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            ys = [torch.empty(m, n, device=dev, dtype=torch.float16) for _ in pws]
            variants = {"base": [lambda w=w, y=y: torch.mm(x, w.t(), out=y) for w, y in zip(ws, ys)],
                        "seq": [seq_fn(x, p, y) for p, y in zip(pws, ys)]}
            for nc in sorted({c for c in (1024, 2048, 4096, 7168, n // 2) if c < n and n % c == 0}):
                bufs = [torch.empty(nc, k, device=dev, dtype=torch.float16) for _ in range(2)]
                variants[f"chunk{nc}"] = [chunk_fn(x, p, y, nc, bufs[0]) for p, y in zip(pws, ys)]
                variants[f"ovl{nc}"] = [overlap_fn(x, p, y, nc, bufs, side) for p, y in zip(pws, ys)]
                if has_carve:
                    for c in args.carve:
                        variants[f"ovl{nc}c{c}"] = [overlap_fn(x, p, y, nc, bufs, side, c) for p, y in zip(pws, ys)]
            ref = None
            row = {"M": m, "K": k, "N": n, "us": {}, "err": {}}
            calls = max(4, min(40, int(4e5 / (m * k * n / 1e6))))
            for name, fns in variants.items():
                try:
                    fns[0]()
                    torch.cuda.synchronize()
                    out = ys[0].clone()
                    if name == "seq":
                        ref = out
                    us = gpu_time_rotating_us(fns, n=calls, reps=5)
                except Exception as err:  # noqa: BLE001 - a probe: record and go on
                    row["us"][name] = None
                    row["err"][name] = f"{type(err).__name__}: {str(err)[:200]}"
                    print(m, k, n, name, "FAILED", row["err"][name], flush=True)
                    continue
                row["us"][name] = round(us, 2)
                if ref is not None and name != "base":
                    row["err"][name] = float((out.float() - ref.float()).abs().max())
            base = row["us"]["base"]
            row["x_torch"] = {kk: (round(base / v, 3) if v else None) for kk, v in row["us"].items()}
            best = min((v, kk) for kk, v in row["us"].items() if v and kk != "base")
            print(f"M={m} K={k} N={n}: base {base:.1f} us; " + ", ".join(
                f"{kk} {v:.1f} ({base / v:.3f}x)" for kk, v in row["us"].items() if v and kk != "base")
                  + f"  best {best[1]}", flush=True)
            results.append(row)
            del variants, ys, x
        del pws, ws
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "carveout_api": has_carve}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
