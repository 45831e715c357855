"""Probe of the Gluon fused W4A16 GEMM (kernels/wo_wgmma.py) on a Hopper GPU: correctness, then time.

Usage: python scripts/kernels_wgmma_probe.py [--out FILE.json] [--quick]
Checks wgmma_gemm against fp32 x @ dequant(pw).T over shapes with ragged M, groups 32/64/128/per-channel,
fp16/bf16 and a bias (relative max error, must be < 1e-2), then times it for every config against torch's
fp16 matmul and the current dequant + matmul path (rotating timer, same process) on the bench's shapes.
"""
import argparse
import json

import torch

from bitsweep.kernels import wo_wgmma  # noqa: E402
from bitsweep.kernels._timing import gpu_time_rotating_us  # noqa: E402
from bitsweep.kernels.dequant import dequantize  # noqa: E402
from bitsweep.kernels.packing import dequantize as ref_dequant, random_packed  # noqa: E402
from bitsweep.kernels.weight_only import weight_only_linear  # noqa: E402

CHECKS = [(1024, 512, 256, 128, torch.float16, False), (300, 1024, 384, 64, torch.float16, True),
          (77, 256, 128, 32, torch.bfloat16, False), (1000, 4096, 512, 128, torch.bfloat16, True),
          (513, 2048, 256, 2048, torch.float16, False), (2048, 8192, 1024, 128, torch.float16, False),
          (1, 1024, 256, 128, torch.float16, False), (16, 2048, 512, 64, torch.bfloat16, True),
          (5, 512, 128, 32, torch.float16, False)]
SHAPES = [(4096, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]


def check(cfgs):
    out = []
    for m, k, n, g, dt, has_bias in CHECKS:
        pw = random_packed(n, k, 4, g, device="cuda", seed=1)[0]
        x = torch.randn(m, k, device="cuda", dtype=dt)
        bias = torch.randn(n, device="cuda", dtype=dt) if has_bias else None
        w = ref_dequant(pw, torch.float32).to(torch.float16).float()
        ref = x.float() @ w.t() + (bias.float() if has_bias else 0)
        assert wo_wgmma.supported(pw, x), (m, k, n, g)
        for cfg in cfgs:
            try:
                y = wo_wgmma.wgmma_gemm(x, pw, bias, cfg)
                torch.cuda.synchronize()
                err = float((y.float() - ref).abs().max() / ref.abs().max())
            except Exception as e:  # noqa: BLE001
                err = f"{type(e).__name__}: {str(e)[:300]}"
            ok = isinstance(err, float) and err < 1e-2
            print(f"check M={m} K={k} N={n} g={g} {dt} bias={has_bias} {cfg}: {err} {'ok' if ok else 'FAIL'}",
                  flush=True)
            out.append(dict(M=m, K=k, N=n, group=g, dtype=str(dt), bias=has_bias, cfg=cfg, err=err, ok=ok))
    return out


def bench(cfgs, ms, shapes=SHAPES, dispatch=False):
    rows = []
    for k, n in shapes:
        pws = [random_packed(n, k, 4, 128, device="cuda", seed=i)[0] for i in range(2)]
        ws = [dequantize(p, torch.float16) for p in pws]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ys = [torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in pws]
            calls = max(4, min(40, int(4e5 / (m * k * n / 1e6))))
            row = {"M": m, "K": k, "N": n, "us": {}}
            row["us"]["torch"] = gpu_time_rotating_us([lambda w=w, y=y: torch.mm(x, w.t(), out=y)
                                                       for w, y in zip(ws, ys)], n=calls, reps=5)
            row["us"]["dequant"] = gpu_time_rotating_us(
                [lambda p=p, y=y: torch.mm(x, dequantize(p, torch.float16).t(), out=y) for p, y in zip(pws, ys)],
                n=calls, reps=5)
            if dispatch:  # the current auto path (tuned once here, outside the timing)
                for p in pws:
                    weight_only_linear(x, p)
                row["us"]["dispatch"] = gpu_time_rotating_us([lambda p=p: weight_only_linear(x, p) for p in pws],
                                                             n=calls, reps=5)
            for cfg in cfgs:
                name = (f"wgmma_bm{cfg['BM']}_s{cfg['STAGES']}_w{cfg['WARPS']}_u{cfg['U']}"
                        + ("_ws" if cfg.get("WS") else ""))
                try:
                    row["us"][name] = gpu_time_rotating_us([lambda p=p: wo_wgmma.wgmma_gemm(x, p, None, cfg)
                                                            for p in pws], n=calls, reps=5)
                except Exception as e:  # noqa: BLE001
                    row["us"][name] = None
                    print("FAILED", name, type(e).__name__, str(e)[:300], flush=True)
            t = row["us"]["torch"]
            row["x_torch"] = {kk: (round(t / v, 3) if v else None) for kk, v in row["us"].items()}
            print(f"M={m} K={k} N={n}: " + ", ".join(f"{kk} {v:.1f} us ({t / v:.3f}x)"
                                                   for kk, v in row["us"].items() if v), flush=True)
            rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--m", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--quick-check", action="store_true")
    ap.add_argument("--cfgs", default=None, help="JSON list of configs (default: wo_wgmma.candidates)")
    ap.add_argument("--shapes", default=None, help="K,N pairs, e.g. 8192,8192 4096,4096")
    ap.add_argument("--dispatch", action="store_true", help="also time weight_only_linear's auto path")
    args = ap.parse_args()
    cfgs = json.loads(args.cfgs) if args.cfgs else wo_wgmma.candidates(1024, 1024)
    res = {"meta": {"device": torch.cuda.get_device_name(), "torch": torch.__version__}}
    res["checks"] = [] if args.no_check else check(cfgs[:1] + cfgs[-1:] if args.quick_check else cfgs)
    shapes = [tuple(int(v) for v in sh.split(",")) for sh in args.shapes.split()] if args.shapes else SHAPES
    res["bench"] = bench(cfgs, args.m, shapes, args.dispatch)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
