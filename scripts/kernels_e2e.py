"""End-to-end decode speed: Llama-shaped 7B with random weights, bf16 vs W4 g128 real kernels.

Usage: python scripts/kernels_e2e.py [--layers 32] [--steps 64] [--compile] [--compile-mode default]
                                     [--no-prefill] [--out FILE.json]
Measures tokens/s at batch 1 (harness.eval.speed: static KV cache, one CUDA graph per decode step) for
bf16 and for the same model with every decoder Linear replaced by a real W4 g128 asym module. With
--compile each decode step is also measured torch.compile'd (HF eager code fused by inductor, the real
linears opaque custom ops) inside the same CUDA graph, and both speedups are reported:
``decode_speedup`` (W4 / bf16, eager HF code in a graph) and ``compile_decode_speedup`` (W4 / bf16,
both compiled). Each measurement is wrapped: a failure is recorded as ``<key>_error`` in the JSON and
the script goes on; the JSON is rewritten after every measurement, so a time-out keeps what finished.
"""
import argparse
import json
import time
import traceback

import torch
from torch import nn

from harness.eval.memory import model_bytes
from harness.eval.speed import COMPILE_MODES, measure_decode, measure_prefill
from kernels.packing import pack
from methods.real import RealWeightOnlyLinear


def random_real(lin: nn.Linear, bits: int = 4, group: int = 128) -> RealWeightOnlyLinear:
    n, k = lin.weight.shape
    dev = lin.weight.device
    codes = torch.randint(0, 2 ** bits, (n, k), device=dev, dtype=torch.uint8)
    scale = torch.rand(n, k // group, device=dev) * 0.004 + 0.001
    zero = torch.randint(0, 2 ** bits, (n, k // group), device=dev).float()
    return RealWeightOnlyLinear(pack(codes, scale, zero, bits, group), None, lin.weight.dtype)


def to_w4(model: nn.Module, bits: int, group: int) -> None:
    """Replace every decoder Linear (attention and MLP) by a random real W<bits> g<group> module."""
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, random_real(child, bits, group))


class Recorder:
    """Results dict that survives failures: each measurement stores its value(s) or an error string."""

    def __init__(self, out: str | None, **meta):
        self.res, self.out = dict(meta), out

    def measure(self, key: str, fn, mode_key: str | None = None) -> None:
        """Store fn()'s result under key ((value, mode) tuples: mode under mode_key); errors as key_error."""
        t0 = time.perf_counter()
        try:
            val = fn()
        # A script-level guard: any failure (CUDA, compile, OOM) is recorded and the next measurement runs.
        except Exception as err:  # noqa: BLE001
            self.res[f"{key}_error"] = f"{type(err).__name__}: {err}"
            print(f"[{key}] FAILED: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc()
        else:
            if isinstance(val, tuple):
                self.res[key], self.res[mode_key or f"{key}_mode"] = val
            else:
                self.res[key] = val
            print(f"[{key}] {val}", flush=True)
        self.res[f"{key}_seconds"] = round(time.perf_counter() - t0, 1)
        self.save()

    def ratio(self, key: str, num: str, den: str) -> None:
        if isinstance(self.res.get(num), float) and isinstance(self.res.get(den), float):
            self.res[key] = self.res[num] / self.res[den]

    def save(self) -> None:
        if self.out:
            with open(self.out, "w") as f:
                json.dump(self.res, f, indent=1)


def measure_model(rec: Recorder, model: nn.Module, tag: str, args) -> None:
    rec.res[f"{tag}_bytes"] = model_bytes(model)
    rec.measure(f"{tag}_decode_tok_s_b1", lambda: measure_decode(model, 1, args.steps), f"{tag}_decode_mode")
    if not args.no_prefill:
        rec.measure(f"{tag}_prefill_tok_s", lambda: measure_prefill(model, 2048, 3))
    if args.compile:
        rec.measure(f"{tag}_compile_decode_tok_s_b1",
                    lambda: measure_decode(model, 1, args.steps, compile=True, compile_mode=args.compile_mode),
                    f"{tag}_compile_decode_mode")
        torch.compiler.reset()  # the compiled graph must not keep this model's weights alive


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd decode steps")
    ap.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    ap.add_argument("--no-prefill", action="store_true", help="skip the 2048-token prefill timings")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    rec = Recorder(args.out, layers=args.layers, steps=args.steps, bits=args.bits, group=args.group,
                   compile=args.compile, compile_mode=args.compile_mode if args.compile else None,
                   device=torch.cuda.get_device_name(), torch=torch.__version__)
    measure_model(rec, model, "bf16", args)
    to_w4(model, args.bits, args.group)
    torch.cuda.empty_cache()
    measure_model(rec, model, "w4", args)
    rec.ratio("decode_speedup", "w4_decode_tok_s_b1", "bf16_decode_tok_s_b1")
    rec.ratio("compile_decode_speedup", "w4_compile_decode_tok_s_b1", "bf16_compile_decode_tok_s_b1")
    rec.ratio("w4_compile_vs_bf16_graph", "w4_compile_decode_tok_s_b1", "bf16_decode_tok_s_b1")
    rec.save()
    print(json.dumps(rec.res, indent=1), flush=True)


if __name__ == "__main__":
    main()
