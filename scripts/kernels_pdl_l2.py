"""Decode tokens/s of a W4 (fused siblings) Llama-shaped model against the GEMV's PDL L2 prefetch depth.

Usage: python scripts/kernels_pdl_l2.py [--layers 8] [--values 0,512,2048] [--out FILE.json]
Compiled decode step in a CUDA graph (harness.eval.speed.measure_decode), programmatic dependent launch
on for inductor's kernels and the GEMV, BITSWEEP_PDL_L2 set to each value in turn (words per weight row
prefetched into L2 before the GEMV waits for the previous kernel); also PDL off, and bf16 (fused, PDL
on) for scale. Same process, same weights.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness.eval.speed import measure_decode  # noqa: E402
from kernels_e2e import build_model, llama_config, pdl_enabled, to_w4  # noqa: E402
from methods.fuse import fuse_siblings, unfuse_siblings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--values", default="0,512,2048")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from kernels import weight_only
    weight_only.USE_PDL = False
    model = build_model(llama_config(args.layers, False), "cuda")
    res = {"layers": args.layers}
    fuse_siblings(model)
    with pdl_enabled():
        res["bf16_fused_pdl"] = measure_decode(model, 1, 64, compile=True)[0]
    torch.compiler.reset()
    unfuse_siblings(model)
    to_w4(model, 4, 128)
    fuse_siblings(model)
    torch.cuda.empty_cache()
    res["w4_fused_nopdl"] = measure_decode(model, 1, 64, compile=True)[0]
    torch.compiler.reset()
    for v in args.values.split(","):
        os.environ["BITSWEEP_PDL_L2"] = v
        with pdl_enabled():
            res[f"w4_fused_pdl_l2_{v}"] = measure_decode(model, 1, 64, compile=True)[0]
        torch.compiler.reset()
        print(res, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
