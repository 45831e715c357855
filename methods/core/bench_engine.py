"""Engine memory evidence: GPTQ on a Llama-shaped random model, one block at a time on the GPU.

    python -m bitsweep.methods.core.bench_engine --out results/engine --name h100

Builds a LlamaForCausalLM (hidden 4096, intermediate 11008, 32 heads, 8 layers, random
weights, fp16) on the CPU, quantizes it with GPTQ (W4 g128) through the layer-wise engine
on CUDA with ``nsamples x seqlen`` random calibration tokens, and reports the peak GPU
memory against one block + the calibration activations, and GPTQ's time per block. Runs
once with activations on the GPU and once with ``offload_activations``. Hydra-free.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch


def build_model(layers: int, hidden: int, inter: int, heads: int, vocab: int, seqlen: int):
    import transformers as T

    cfg = T.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                        max_position_embeddings=seqlen)
    torch.manual_seed(0)  # HF's default init: N(0, 0.02) weights, unit norms
    model = T.LlamaForCausalLM(cfg).to(torch.float16)
    return model.eval()


def run_once(model, batches, offload: bool) -> dict:
    from bitsweep.methods import QuantSpec
    from bitsweep.methods.core.engine import run_layerwise
    from bitsweep.methods.weight_only.gptq import GPTQConfig, gptq_block

    spec = QuantSpec.from_dict({"weights": {"bits": 4, "group_size": 128}})
    cfg = GPTQConfig()
    times = []

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def process(ctx):
        sync()
        t0 = time.time()
        gptq_block(ctx, spec, cfg)
        sync()
        times.append(time.time() - t0)

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    t0 = time.time()
    run_layerwise(model, batches, process, device="cuda" if cuda else "cpu",
                  offload_activations=offload, desc="gptq")
    sync()
    return {"offload_activations": offload,
            "peak_bytes": (torch.cuda.max_memory_allocated() - base) if cuda else 0,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else 0,
            "total_s": time.time() - t0, "gptq_s_per_block": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results/engine"))
    ap.add_argument("--name", default="h100")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--modes", default="gpu,offload")
    a = ap.parse_args()
    t0 = time.time()
    model = build_model(a.layers, a.hidden, a.inter, a.heads, a.vocab, a.seqlen)
    build_s = time.time() - t0
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, a.vocab, (1, a.seqlen), generator=g) for _ in range(a.nsamples)]
    block = model.model.layers[0]
    block_bytes = sum(p.numel() * p.element_size() for p in block.parameters())
    act_bytes = a.nsamples * a.seqlen * a.hidden * 2  # fp16 hidden states of every sample
    ref = block_bytes + act_bytes
    runs = []
    for mode in a.modes.split(","):
        r = run_once(copy.deepcopy(model), batches, offload=(mode == "offload"))
        r["ratio_to_block_plus_acts"] = r["peak_bytes"] / ref
        runs.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "gptq_s_per_block"}), flush=True)
    res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
           "model": {"layers": a.layers, "hidden": a.hidden, "intermediate": a.inter, "heads": a.heads,
                     "vocab": a.vocab, "dtype": "float16", "weights": "random N(0, 0.02)"},
           "calibration": {"nsamples": a.nsamples, "seqlen": a.seqlen, "tokens": a.nsamples * a.seqlen},
           "method": "gptq W4 g128 (damp 0.01, block 128, true-sequential)", "build_s": build_s,
           "block_bytes": block_bytes, "activation_bytes": act_bytes, "block_plus_acts_bytes": ref,
           "runs": runs}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"{a.name}.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(a.out, f"{a.name}.md"), "w") as f:
        f.write(render_md(res))


def render_md(res: dict) -> str:
    gib = 2**30
    m, c = res["model"], res["calibration"]
    lines = [f"# Layer-wise engine memory: GPTQ on {res['device']}", "",
             f"Llama-shaped random model: {m['layers']} layers, hidden {m['hidden']}, intermediate "
             f"{m['intermediate']}, {m['heads']} heads, {m['dtype']}; {res['method']}; calibration "
             f"{c['nsamples']} x {c['seqlen']} tokens. Generated by `python -m bitsweep.methods.core.bench_engine`.", "",
             f"One block: {res['block_bytes'] / gib:.2f} GiB; calibration activations "
             f"({c['nsamples']} x {c['seqlen']} x {m['hidden']} fp16): {res['activation_bytes'] / gib:.2f} GiB; "
             f"sum: {res['block_plus_acts_bytes'] / gib:.2f} GiB.", "",
             "| activations | peak GPU (GiB) | peak / (block + activations) | GPTQ s/block (mean) | total s |",
             "|---|---|---|---|---|"]
    for r in res["runs"]:
        t = r["gptq_s_per_block"]
        lines.append(f"| {'CPU (offload)' if r['offload_activations'] else 'GPU'} | {r['peak_bytes'] / gib:.2f} | "
                     f"{r['ratio_to_block_plus_acts']:.2f} | {sum(t) / len(t):.2f} | {r['total_s']:.1f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
