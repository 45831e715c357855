"""Measure a trained zoo model on this machine's corpus and write its eval.json + MODEL_CARD.md.

Contract
--------
``measure(name, max_chunks=None) -> dict`` loads the shipped folder (fp16 weights, computed in
fp32 on CPU), tokenizes the corpus splits HERE with the folder's tokenizer and reports
perplexity with the standard protocol (``bitsweep.harness.zoo.train.evaluate_ppl``: concatenate the
split's documents with a blank line, non-overlapping chunks of
``min(2048, max_position_embeddings)`` tokens, remainder dropped, exp of the mean NLL over all
predicted tokens). It also runs a quick sanity check of quantization sensitivity: round-to-
nearest fake quantization (asymmetric min-max, per output channel or per group of 128 input
channels) of every linear layer except ``lm_head`` (embeddings untouched). This check is local
to the zoo (it is not ``methods/``'s RTN, which the harness uses for real results).

``write_card(name, evals)`` renders MODEL_CARD.md from ``train_log.json`` and ``eval.json``.

CLI: ``python -m bitsweep.harness.zoo.card stdlib-llama-4m`` (measure, write eval.json and the card).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from pathlib import Path

import torch

from bitsweep.harness.zoo import load_zoo_model, zoo_path
from bitsweep.harness.zoo.corpus import build_corpus
from bitsweep.harness.zoo.specs import get_spec
from bitsweep.harness.zoo.train import evaluate_ppl

log = logging.getLogger(__name__)

RTN_CONFIGS: tuple[tuple[int, int | None], ...] = ((8, None), (4, None), (3, None), (2, None), (4, 128), (3, 128), (2, 128))


def rtn_fake_quant(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Asymmetric min-max round-to-nearest: weight (out, in) -> dequantized (out, in)."""
    out_f, in_f = weight.shape
    g = in_f if group_size is None else group_size
    if in_f % g:
        raise ValueError(f"group_size {g} does not divide in_features {in_f}")
    w = weight.float().reshape(out_f, in_f // g, g)  # (out, n_groups, g)
    wmin = w.amin(dim=-1, keepdim=True).clamp(max=0)
    wmax = w.amax(dim=-1, keepdim=True).clamp(min=0)
    qmax = 2**bits - 1
    scale = ((wmax - wmin) / qmax).clamp(min=1e-8)  # (out, n_groups, 1)
    zero = torch.round(-wmin / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
    return ((q - zero) * scale).reshape(out_f, in_f).to(weight.dtype)


def quantized_copy(model, bits: int, group_size: int | None):
    """Deep copy of ``model`` with every nn.Linear but lm_head fake-quantized."""
    qmodel = copy.deepcopy(model)
    for name, module in qmodel.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            module.weight.data = rtn_fake_quant(module.weight.data, bits, group_size)
    if getattr(qmodel.config, "tie_word_embeddings", False):
        # lm_head shares the embedding matrix, which stays 16-bit.
        assert qmodel.lm_head.weight.data_ptr() == qmodel.model.embed_tokens.weight.data_ptr()
    return qmodel


def _split_tokens(tokenizer, split: str) -> torch.Tensor:
    text = build_corpus().text(split)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)  # (n,)


def measure(name: str, max_chunks: int | None = None, rtn: bool = True) -> dict:
    """Perplexities of zoo model ``name`` on this machine's corpus (CPU, fp32 compute)."""
    model, tokenizer = load_zoo_model(name, dtype=torch.float32, device="cpu")
    seqlen = min(2048, model.config.max_position_embeddings)
    corpus = build_corpus()
    result = {"corpus": corpus.summary(), "python": platform.python_version(), "torch": torch.__version__,
              "protocol": f"concatenate split docs with blank line; non-overlapping {seqlen}-token chunks; "
                          "remainder dropped; ppl = exp(mean NLL over predicted tokens)",
              "weights": "fp16 safetensors, computed in fp32 on CPU"}
    tokens = {s: _split_tokens(tokenizer, s) for s in ("validation", "test")}
    for split, ids in tokens.items():
        t0 = time.time()
        result[split] = evaluate_ppl(model, ids, seqlen, 16, "cpu", max_chunks=max_chunks)
        result[split]["eval_s"] = round(time.time() - t0, 1)
        log.info("%s %s ppl %.3f (%.1fs)", name, split, result[split]["ppl"], result[split]["eval_s"])
    if rtn:
        result["rtn_test"] = {}
        for bits, group in RTN_CONFIGS:
            key = f"w{bits}" + ("" if group is None else f"g{group}")
            r = evaluate_ppl(quantized_copy(model, bits, group), tokens["test"], seqlen, 16, "cpu", max_chunks=max_chunks)
            result["rtn_test"][key] = r
            log.info("%s RTN %s test ppl %.3f", name, key, r["ppl"])
    return result


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _selection_table(selection: dict | None) -> list[str]:
    if not selection:
        return []
    lines = ["", "### How the recipe was chosen", "", selection.get("note", ""), "",
             "| run | train tokens | weight decay | lr | final train loss | final val NLL (GPU, bf16) |",
             "|---|---|---|---|---|---|"]
    for row in selection["runs"]:
        lines.append(f"| {row['run']} | {_fmt_int(row['train_tokens'])} | {row['weight_decay']} | {row['lr']} | "
                     f"{row['final_train_loss']:.4f} | {row['final_val_nll']:.4f} |")
    return lines


def _last_interval(train_log: dict) -> str:
    steps = train_log["history"]["step"]
    first = steps[-2] + 1 if len(steps) > 1 else 1
    return f"{first}-{steps[-1]}"


def write_card(name: str, evals: dict, selection: dict | None = None) -> Path:
    """Render ``MODEL_CARD.md`` of zoo model ``name`` from its train_log.json and ``evals``.

    ``selection`` (how the recipe was chosen) defaults to the folder's ``recipe_sweep.json``.
    """
    spec, path = get_spec(name), zoo_path(name)
    sweep_file = path / "recipe_sweep.json"
    if selection is None and sweep_file.is_file():
        selection = json.loads(sweep_file.read_text())
    tl = json.loads((path / "train_log.json").read_text())
    counts, rec, data = spec.param_counts(), tl["recipe"], tl["data"]
    corpus, toks = data["corpus"], data["tokens"]
    size = (path / "model.safetensors").stat().st_size
    epochs = tl["tokens_trained"] / toks["train"]
    rtn_rows = [f"| {k} | {v['ppl']:.3f} | {v['ppl'] / evals['test']['ppl']:.3f}x |" for k, v in evals.get("rtn_test", {}).items()]
    lines = [
        f"# {name}", "",
        f"A small Llama-architecture causal LM trained by bitsweep's own code (`harness/zoo`) on the Python "
        f"standard-library source. It is bitsweep's embedded default model: offline, small enough to ship "
        f"in the repository, and sensitive enough to low-bit quantization to tell methods apart.", "",
        "## Architecture", "",
        "| field | value |", "|---|---|",
        f"| layers | {spec.num_hidden_layers} |", f"| hidden size | {spec.hidden_size} |",
        f"| intermediate (SwiGLU) | {spec.intermediate_size} |",
        f"| attention heads (KV heads) | {spec.num_attention_heads} ({spec.num_key_value_heads}), head dim {spec.head_dim} |",
        f"| vocabulary | {spec.vocab_size} (byte-level BPE) |", f"| context | {spec.max_position_embeddings} (RoPE theta {spec.rope_theta:g}) |",
        f"| embeddings | tied (lm_head = embed_tokens) |",
        f"| parameters | {_fmt_int(counts['params'])} total, {_fmt_int(counts['non_embedding_params'])} non-embedding |",
        f"| weights on disk | fp16 safetensors, {_fmt_int(size)} bytes ({size / 2**20:.2f} MiB) |", "",
        "Every linear layer has in-features divisible by 128, so group-128 quantization applies to all of them.", "",
        "## Corpus and tokenizer", "",
        f"- Source: the `.py` files of the standard library of Python {corpus['python_version']} "
        f"(excluding site-packages, `test`/`tests`/`idle_test` folders, `pydoc_data`, `config-*`, `_sysconfigdata*`).",
        f"- Corpus fingerprint: `{corpus['fingerprint']}` (sha256 over python version, split, path and content hash of every file).",
        f"- Split by file: {corpus['split_rule']}.",
        f"- Files (train / validation / test): {corpus['files']['train']} / {corpus['files']['validation']} / {corpus['files']['test']}; "
        f"tokens: {_fmt_int(toks['train'])} / {_fmt_int(toks['validation'])} / {_fmt_int(toks['test'])}.",
        f"- Tokenizer: byte-level BPE, vocabulary {data['vocab_size']}, trained on the train split (`harness/zoo/tokenizer.py`); "
        "one special token `<|endoftext|>` (bos/eos/pad); encoding adds no special tokens.",
        "- A machine with another Python version has another stdlib: its corpus fingerprint differs. "
        "Results record the fingerprint; the model was trained on the corpus above.", "",
        "## Training", "",
        f"- Tokens: {_fmt_int(tl['tokens_trained'])} ({tl['steps']} steps x {rec['batch_size']} windows x {rec['seq_len']} predicted tokens), "
        f"about {epochs:.1f} passes over the train split.",
        f"- Recipe: AdamW (betas {rec['beta1']}, {rec['beta2']}; weight decay {rec['weight_decay']} on matrices), peak lr {rec['lr']}, "
        f"{rec['warmup_steps']} warm-up steps then cosine decay to {rec['min_lr_ratio']} x peak, grad clip {rec['grad_clip']}, "
        f"seed {rec['seed']}, bf16 autocast, random windows from the concatenated train split.",
        f"- Device: {tl['device']} (torch {tl['torch']}, transformers {tl.get('transformers', '?')}); "
        f"training time {tl['train_s']} s ({_fmt_int(tl['tokens_per_s'])} tokens/s).",
        f"- Final train loss (mean over steps {_last_interval(tl)}): {tl['final_train_loss']:.4f}; validation NLL at the end "
        f"(on the GPU, bf16 autocast): {tl['final_val']['nll']:.4f}.",
        *_selection_table(selection), "",
        "### Re-train", "",
        "```bash",
        "# 1. here (the machine whose stdlib is the corpus): tokenize into a data folder",
        f"python -m bitsweep.harness.zoo.train {name} --data scratch/zoo/data --prepare-only",
        "# 2. on a GPU (the data folder travels; the other machine's stdlib is not used)",
        f"python -m bitsweep.harness.zoo.train {name} --data scratch/zoo/data --device cuda --out harness/zoo/models/{name}",
        "# 3. back here: measure perplexities on CPU and regenerate this card",
        f"python -m bitsweep.harness.zoo.card {name}",
        "```", "",
        "`bitsweep zoo train NAME` runs steps 1 and 2 in one go on one machine.", "",
        "## Evaluation (16-bit)", "",
        f"Measured on CPU (Python {evals['python']}, torch {evals['torch']}), fp16 weights computed in fp32; "
        f"protocol: {evals['protocol']}.", "",
        "| split | perplexity | NLL | chunks x tokens |", "|---|---|---|---|",
        *[f"| {s} | {evals[s]['ppl']:.3f} | {evals[s]['nll']:.4f} | {evals[s]['chunks']} x {evals[s]['seqlen']} |"
          for s in ("test", "validation")], "",
    ]
    if rtn_rows:
        lines += ["## Quantization sensitivity (sanity check)", "",
                  "Round-to-nearest fake quantization (asymmetric min-max; per output channel, or `gN` = groups of N input "
                  "channels) of every linear layer except lm_head; embeddings (tied with lm_head) stay 16-bit. Test split.", "",
                  "| weights | test ppl | vs 16-bit |", "|---|---|---|", *rtn_rows, ""]
    lines += ["## Limitations", "",
              f"- Tiny corpus ({_fmt_int(toks['train'])} train tokens): the model memorizes; its train loss ends well below its "
              "validation loss. The token budget and weight decay were chosen by validation loss, never by test.",
              "- Code only (the Python standard library); English prose is rare. Not for any use beyond benchmarking.",
              "- GPU training is not bit-exact across runs or devices; a re-train gives close, not identical, weights.", ""]
    card = path / "MODEL_CARD.md"
    card.write_text("\n".join(lines))
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitsweep.harness.zoo.card", description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("--selection", default=None,
                        help="JSON describing the recipe sweep; copied to the folder's recipe_sweep.json and shown in the card")
    parser.add_argument("--evals", default=None, help="reuse a measure() JSON instead of measuring again")
    parser.add_argument("--no-rtn", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    evals = json.loads(Path(args.evals).read_text()) if args.evals else measure(args.name, rtn=not args.no_rtn)
    (zoo_path(args.name) / "eval.json").write_text(json.dumps(evals, indent=1) + "\n")
    selection = None
    if args.selection:
        selection = json.loads(Path(args.selection).read_text())
        (zoo_path(args.name) / "recipe_sweep.json").write_text(json.dumps(selection, indent=1) + "\n")
    print(write_card(args.name, evals, selection))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
