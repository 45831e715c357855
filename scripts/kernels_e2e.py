"""End-to-end decode speed: Llama-shaped 7B with random weights, bf16 vs W4 g128 real kernels.

Usage: python scripts/kernels_e2e.py [--layers 32] [--steps 64] [--out FILE.json]
Prints and writes tokens/s at batch 1 (harness.eval.speed: static KV cache, CUDA graph) for bf16 and for
the same model with every decoder Linear replaced by a real W4 g128 asym module.
"""
import argparse
import json

import torch
from torch import nn

from harness.eval.memory import model_bytes
from harness.eval.speed import measure_decode, measure_prefill
from kernels.packing import pack
from methods.real import RealWeightOnlyLinear


def random_real(lin: nn.Linear, bits: int = 4, group: int = 128) -> RealWeightOnlyLinear:
    n, k = lin.weight.shape
    dev = lin.weight.device
    codes = torch.randint(0, 2 ** bits, (n, k), device=dev, dtype=torch.uint8)
    scale = torch.rand(n, k // group, device=dev) * 0.004 + 0.001
    zero = torch.randint(0, 2 ** bits, (n, k // group), device=dev).float()
    return RealWeightOnlyLinear(pack(codes, scale, zero, bits, group), None, lin.weight.dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    res = dict(layers=args.layers, steps=args.steps, device=torch.cuda.get_device_name())
    res["bf16_bytes"] = model_bytes(model)
    res["bf16_decode_tok_s_b1"], res["bf16_decode_mode"] = measure_decode(model, 1, args.steps)
    res["bf16_prefill_tok_s"] = measure_prefill(model, 2048, 3)
    print(res, flush=True)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, random_real(child))
    torch.cuda.empty_cache()
    res["w4_bytes"] = model_bytes(model)
    res["w4_decode_tok_s_b1"], res["w4_decode_mode"] = measure_decode(model, 1, args.steps)
    res["w4_prefill_tok_s"] = measure_prefill(model, 2048, 3)
    res["decode_speedup"] = res["w4_decode_tok_s_b1"] / res["bf16_decode_tok_s_b1"]
    print(json.dumps(res, indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
