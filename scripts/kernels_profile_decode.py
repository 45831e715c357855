"""Where a batch-1 decode step's time goes: Llama-7B-shaped, random weights, bf16 and W4 (fused siblings).

Usage: python scripts/kernels_profile_decode.py [--layers 32] [--out FILE.json] [--pdl]
For each model it compiles the decode step as bitsweep.harness.eval.speed.measure_decode does, times it in a
CUDA graph (ms per step), and runs it under torch.profiler (inside a graph replay, so the kernels and
their order are the ones the timing runs): device time summed per kernel class (W4 GEMV, bf16 GEMV,
attention, norm / elementwise glue, ...), the kernel count, and the idle time between kernels (step
time minus busy time). Prints a table per model and writes the JSON.
"""
import argparse
import json
import os
import re
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitsweep.harness.eval.speed import _graphed, _static_cache, compile_step  # noqa: E402
from bitsweep.methods.core.fuse import fuse_siblings  # noqa: E402
from kernels_e2e import build_model, llama_config, to_w4  # noqa: E402

CLASSES = [("w4_gemv", r"gemv3|gemv_tc|_gemv"), ("cublas_gemm", r"gemm|gemv|sm90_xmma|cutlass|nvjet|splitK"),
           ("attention", r"flash|fmha|attention|sdpa|efficient"), ("cache_copy", r"index_copy|index_put|scatter"),
           ("triton_fused", r"triton_"), ("other", r".")]


def classify(name: str) -> str:
    for cls, pat in CLASSES:
        if re.search(pat, name, re.I):
            return cls
    return "other"


@torch.inference_mode()
def profile_model(model, steps: int = 20) -> dict:
    dev = next(model.parameters()).device
    cache = _static_cache(model, 1, 32 + 200)
    prompt = torch.randint(0, model.config.vocab_size, (1, 32), device=dev)
    model(prompt, past_key_values=cache, cache_position=torch.arange(32, device=dev), use_cache=True)
    ids = torch.zeros(1, 1, dtype=torch.long, device=dev)
    pos = torch.full((1,), 32, dtype=torch.long, device=dev)

    def step():
        return model(ids, past_key_values=cache, cache_position=pos, position_ids=pos[None], use_cache=True).logits

    for _ in range(2):
        step()
    compiled, failed = compile_step(step)
    run, captured = _graphed(compiled)
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(steps):
        run()
    b.record()
    torch.cuda.synchronize()
    step_us = a.elapsed_time(b) * 1e3 / steps
    per_cls, per_name, count, source = defaultdict(float), defaultdict(float), 0, "graph replay"
    for fn in (run, compiled):  # kernels inside graph replays, else (if the profiler saw none) the compiled step
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time_total > 0:
                per_cls[classify(ev.name)] += ev.device_time_total / steps
                per_name[ev.name[:90]] += ev.device_time_total / steps
                count += 1
        if count:
            break
        source = "compiled step without a graph"
    busy = sum(per_cls.values())
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:25]
    return dict(step_us=step_us, compiled=failed is None, graph=captured, profiled=source, kernels_per_step=count / steps,
                busy_us=busy, idle_us=step_us - busy, per_class_us=dict(per_cls), top_kernels_us=dict(top))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--pdl", action="store_true", help="programmatic dependent launch on (inductor + W4 GEMV)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch._inductor.config as inductor_config
    from bitsweep.kernels import weight_only
    inductor_config.triton.enable_pdl = weight_only.USE_PDL = args.pdl
    model = build_model(llama_config(args.layers, False), "cuda")
    fuse_siblings(model)
    res = {"pdl": args.pdl, "bf16_fused": profile_model(model)}
    torch.compiler.reset()
    from bitsweep.methods.core.fuse import unfuse_siblings
    unfuse_siblings(model)
    to_w4(model, 4, 128)
    fuse_siblings(model)
    torch.cuda.empty_cache()
    res["w4_fused"] = profile_model(model)
    for tag in ("bf16_fused", "w4_fused"):
        r = res[tag]
        print(f"\n== {tag}: step {r['step_us']:.0f} us, busy {r['busy_us']:.0f}, idle {r['idle_us']:.0f}, "
              f"{r['kernels_per_step']:.0f} kernels/step")
        for cls, us in sorted(r["per_class_us"].items(), key=lambda kv: -kv[1]):
            print(f"  {cls:<14} {us:8.1f} us")
        for name, us in list(r["top_kernels_us"].items())[:12]:
            print(f"    {us:8.1f}  {name}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
