"""Benchmark: prepacked vs lm-eval's padded HF batching for loglikelihood requests.

``python -m bitsweep.harness.eval.bench_prepack [--out results/eval_speed] [--name h100]
[--batch-sizes 32 64] [--hidden 2048 --layers 16 ...]`` builds a Llama-shaped
random-weight model (default ~1.0B parameters, bf16, SDPA) on the GPU and times
``HFLM._loglikelihood_tokens`` (lm-eval's default path: requests sorted by length,
right-padded batches, full-vocab log-softmax, one-token-continuation cache) against
:class:`bitsweep.harness.eval.prepack.PrepackedHFLM` on the same pre-tokenized requests, at
each batch size (padded: sequences per forward; packed: rows per forward, row length =
longest request).

Workloads (mixed lengths):
- ``stdlib_nextline``: every example x 4 choices of the packaged local task (context and
  continuation split exactly as lm-eval's ``loglikelihood`` does);
- ``synthetic``: random-token requests, context lengths log-uniform in [8, 2000], 1-32
  continuation tokens, seeded.

Per (workload, path, batch size): wall seconds (after one warm-up pass; CUDA
synchronized), requests/s, peak GPU memory (``torch.cuda.max_memory_allocated`` minus
the weights), tokens actually fed to the model, and the agreement of the packed and
padded log-likelihoods (max |diff|; accuracy of the argmax choice for the task), with two
references for that difference: padded vs padded at the other batch size (the bf16 noise
floor of the padded path itself) and packed vs padded with the model cast to float32. Writes
``<out>/<name>.json`` and ``<out>/<name>.md``; numbers are never edited by hand.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def build_model(args, device: str):
    """Random-weight Llama (bf16, SDPA) of the requested shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=4096,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def build_tokenizer(vocab: int):
    """Byte-level BPE trained on the corpus train split (offline), as a HF fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    from bitsweep.harness.zoo.corpus import build_corpus
    from bitsweep.harness.zoo.tokenizer import SPECIAL_TOKEN, train_tokenizer

    texts = [t for _, t in build_corpus().documents("train")][:200]
    tok = train_tokenizer(texts, vocab_size=vocab)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_TOKEN, eos_token=SPECIAL_TOKEN,
                                   pad_token=SPECIAL_TOKEN, unk_token=SPECIAL_TOKEN)


def task_requests(lm, n: int | None = None) -> tuple[list, list[tuple[int, int]]]:
    """Tokenized stdlib_nextline requests (4 per doc) and per doc (first request index, label)."""
    from bitsweep.harness.tasks import TASKS_DIR, load_jsonl

    rows = load_jsonl(TASKS_DIR / "stdlib_nextline" / "stdlib_nextline.jsonl")[:n]
    reqs, docs = [], []
    for row in rows:
        docs.append((len(reqs), row["label"]))
        for choice in row["choices"]:
            ctx_enc, cont_enc = lm._encode_pair(row["context"], choice)
            reqs.append(((row["context"], choice), ctx_enc, cont_enc))
    return reqs, docs


def synthetic_requests(n: int, vocab: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    reqs = []
    for i in range(n):
        n_ctx = int(math.exp(rng.uniform(math.log(8), math.log(2000))))
        ctx = [rng.randrange(1, vocab) for _ in range(n_ctx)]
        cont = [rng.randrange(1, vocab) for _ in range(rng.randint(1, 32))]
        reqs.append(((f"s{i}", ""), ctx, cont))
    return reqs


def timed(fn, reqs, weights_bytes: int) -> tuple[list, float, int]:
    """(results, seconds, peak activation bytes; 0 without CUDA) of one call, CUDA synchronized."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn(reqs, disable_tqdm=True)
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return out, secs, (torch.cuda.max_memory_allocated() - weights_bytes) if cuda else 0


def padded_tokens(reqs, batch_size: int) -> int:
    """Tokens the padded path feeds: sorted by length descending, each batch padded to its longest."""
    lens = sorted((len(c) + len(k) - 1 for _, c, k in reqs), reverse=True)
    return sum(lens[i] * len(lens[i: i + batch_size]) for i in range(0, len(lens), batch_size))


def compare(padded, packed, docs) -> dict:
    diff = max(abs(a[0] - b[0]) for a, b in zip(padded, packed, strict=True))
    out = {"max_abs_logprob_diff": diff,
           "greedy_agreement": sum(a[1] == b[1] for a, b in zip(padded, packed, strict=True)) / len(padded)}
    if docs:
        def acc(res):
            return sum(max(range(4), key=lambda j: res[s + j][0]) == lab for s, lab in docs) / len(docs)
        out.update(acc_padded=acc(padded), acc_packed=acc(packed))
    return out


def per_token_diff(a, b, reqs) -> float:
    """Mean over requests of |logprob difference| / continuation tokens."""
    return sum(abs(x[0] - y[0]) / len(r[2]) for x, y, r in zip(a, b, reqs, strict=True)) / len(reqs)


def fp32_check(model, tok, reqs) -> dict:
    """Padded vs packed on the same requests with the model cast to float32 (precision, not speed)."""
    from lm_eval.models.huggingface import HFLM

    from bitsweep.harness.eval.prepack import PrepackedHFLM

    model.float()
    padded = HFLM(pretrained=model, tokenizer=tok, batch_size=16)._loglikelihood_tokens(reqs, disable_tqdm=True)
    packed = PrepackedHFLM(pretrained=model, tokenizer=tok, batch_size=16)._loglikelihood_tokens(
        reqs, disable_tqdm=True)
    model.to(torch.bfloat16)
    out = compare(padded, packed, [])
    out["requests"] = len(reqs)
    out["mean_abs_logprob_diff_per_token"] = per_token_diff(padded, packed, reqs)
    return out


def run(args) -> dict:
    from lm_eval.models.huggingface import HFLM

    from bitsweep.harness.eval.prepack import PrepackedHFLM

    device = args.device
    model = build_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    weights = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    tok = build_tokenizer(args.tok_vocab)
    probe = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    workloads = {"stdlib_nextline": task_requests(probe, args.n_task),
                 "synthetic": (synthetic_requests(args.n_synthetic, args.tok_vocab), [])}
    rows, prev_padded = [], {}
    for wname, (reqs, docs) in workloads.items():
        n_tok = sum(len(c) + len(k) - 1 for _, c, k in reqs)
        for bs in args.batch_sizes:
            padded = HFLM(pretrained=model, tokenizer=tok, batch_size=bs)
            packed = PrepackedHFLM(pretrained=model, tokenizer=tok, batch_size=bs)
            result = {"workload": wname, "batch_size": bs, "requests": len(reqs), "real_tokens": n_tok}
            outs = {}
            for pname, lm in (("padded", padded), ("packed", packed)):
                lm._loglikelihood_tokens(reqs[: 4 * bs], disable_tqdm=True)  # warm-up
                out, secs, peak = timed(lm._loglikelihood_tokens, reqs, weights)
                outs[pname] = out
                result[pname] = {"seconds": secs, "requests_per_s": len(reqs) / secs,
                                 "peak_activation_gib": peak / 2**30}
                log.info("%s bs=%d %s: %.2f s, peak %.2f GiB", wname, bs, pname, secs, peak / 2**30)
            result["padded"]["fed_tokens"] = padded_tokens(reqs, bs)
            result["speedup"] = result["padded"]["seconds"] / result["packed"]["seconds"]
            result["memory_ratio"] = (result["packed"]["peak_activation_gib"]
                                      / max(result["padded"]["peak_activation_gib"], 1e-9))
            result.update(compare(outs["padded"], outs["packed"], docs))
            result["mean_abs_logprob_diff_per_token"] = per_token_diff(outs["padded"], outs["packed"], reqs)
            if prev_padded.get(wname) is not None:  # bf16 noise floor: padded vs padded at another batch size
                result["padded_vs_padded_prev_bs_max_abs_diff"] = compare(prev_padded[wname], outs["padded"], [])[
                    "max_abs_logprob_diff"]
            prev_padded[wname] = outs["padded"]
            rows.append(result)
    fp32 = fp32_check(model, tok, workloads["stdlib_nextline"][0][: args.n_fp32]) if args.n_fp32 else None
    return {
        "fp32_check": fp32,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "lm_eval": __import__("lm_eval").__version__ if hasattr(__import__("lm_eval"), "__version__") else None,
        "python": platform.python_version(),
        "model": {"arch": "llama (random weights)", "params": n_params, "dtype": str(model.dtype).split(".")[-1],
                  "attn": "sdpa",
                  "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                  "kv_heads": args.kv_heads, "ffn": args.ffn, "vocab": args.vocab},
        "weights_gib": weights / 2**30, "results": rows,
        "command": "python -m bitsweep.harness.eval.bench_prepack " + " ".join(args.argv),
    }


def to_markdown(rep: dict) -> str:
    m = rep["model"]
    lines = [
        f"# Prepacked vs padded loglikelihood scoring ({rep['device']})",
        "",
        "Generated by `harness/eval/bench_prepack.py`; do not edit by hand.",
        f"Model: Llama-shaped, random weights, {m['params'] / 1e9:.2f} B parameters, {m['dtype']}, "
        f"{m['attn']} attention (hidden {m['hidden']}, {m['layers']} layers, vocab {m['vocab']}). "
        f"torch {rep['torch']}, transformers {rep['transformers']}, lm-eval {rep['lm_eval']}.",
        "Padded = lm-eval's `HFLM._loglikelihood_tokens` (length-sorted, right-padded batches); "
        "packed = `PrepackedHFLM` (first-fit-decreasing rows, block-diagonal mask). "
        "Peak = `max_memory_allocated` minus weights.",
        "",
        "Pad share = padding tokens fed by the padded path / real tokens (lm-eval sorts by length, so it is "
        "small on the task). The rest of the gain is not from padding: the packed path also runs the LM head "
        "and log-softmax only at continuation positions (not over every position x vocabulary) and does less "
        "per-request work; these parts were not timed separately.",
        "",
        "| workload | requests | batch | pad share | padded s | packed s | speedup | padded peak GiB "
        "| packed peak GiB | max abs Δ logprob | acc padded / packed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["results"]:
        acc = f"{r['acc_padded']:.4f} / {r['acc_packed']:.4f}" if "acc_padded" in r else "-"
        lines.append(
            f"| {r['workload']} | {r['requests']} | {r['batch_size']} "
            f"| {r['padded']['fed_tokens'] / r['real_tokens'] - 1:.1%} | {r['padded']['seconds']:.2f} "
            f"| {r['packed']['seconds']:.2f} | {r['speedup']:.2f}x | {r['padded']['peak_activation_gib']:.2f} "
            f"| {r['packed']['peak_activation_gib']:.2f} | {r['max_abs_logprob_diff']:.3g} | {acc} |")
    lines.append("")
    floor = [f"{r['workload']}: {r['padded_vs_padded_prev_bs_max_abs_diff']:.3g}" for r in rep["results"]
             if "padded_vs_padded_prev_bs_max_abs_diff" in r]
    if floor:
        lines.append("Padded path at the two batch sizes, max abs Δ logprob: " + "; ".join(floor)
                     + " (the padded path is batch-invariant here). The packed-vs-padded Δ in bf16 is rounding of "
                     "a different computation (masked SDPA instead of the causal kernel); the fp32 check below "
                     "bounds the packing itself. Mean abs Δ per continuation token, packed vs padded (bf16): "
                     + "; ".join(f"{r['workload']} bs {r['batch_size']}: {r['mean_abs_logprob_diff_per_token']:.3g}"
                                 for r in rep["results"]) + ".")
        lines.append("")
    if rep.get("fp32_check"):
        c = rep["fp32_check"]
        lines.append(f"fp32 agreement (same model cast to float32, first {c['requests']} task requests): "
                     f"max abs Δ logprob {c['max_abs_logprob_diff']:.3g}, is_greedy agreement "
                     f"{c['greedy_agreement']:.4f}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/eval_speed")
    parser.add_argument("--name", default="h100")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tok-vocab", type=int, default=4096)
    parser.add_argument("--n-synthetic", type=int, default=512)
    parser.add_argument("--n-task", type=int, default=None, help="first N task examples (default all)")
    parser.add_argument("--n-fp32", type=int, default=400, help="task requests for the fp32 agreement check")
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (smoke test)")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_prepack needs a CUDA GPU (run it through the device tool), or --device cpu")
    rep = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(rep, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(to_markdown(rep))
    print(to_markdown(rep))


if __name__ == "__main__":
    main()
