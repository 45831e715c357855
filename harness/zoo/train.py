"""Train a zoo model (Llama architecture) on the standard-library corpus.

Two steps, because the corpus is the stdlib of the machine that tokenizes it:

1. ``prepare_data(data_dir, vocab_size)``: build the corpus here, train the byte-level BPE
   on its train split, write ``tokenizer/``, ``train.npy``, ``validation.npy``,
   ``test.npy`` (uint16 token ids of each split's text, documents joined by a blank
   line, no special tokens) and ``meta.json`` (corpus summary + fingerprint).
2. ``train(name, device, out_dir, data_dir=...)``: seeded AdamW with linear warm-up and
   cosine decay, bf16 autocast on CUDA, random windows of ``seq_len + 1`` tokens drawn from
   ``train.npy``; validation perplexity every ``eval_every`` steps; writes the model folder
   (fp16 ``model.safetensors``, ``config.json``, ``generation_config.json``, tokenizer files,
   ``train_log.json`` with recipe, corpus meta, losses and timings).

The data folder travels, so training on another machine (another Python, another stdlib)
still trains on this machine's corpus. Perplexity protocol (``evaluate_ppl``): non-overlapping
chunks of ``seqlen`` tokens, trailing remainder dropped, ppl = exp(mean NLL over all
predicted tokens of all chunks; ``seqlen - 1`` per chunk).

CLI::

    python -m bitsweep.harness.zoo.train stdlib-llama-4m --data scratch/zoo/data --prepare-only
    python -m bitsweep.harness.zoo.train stdlib-llama-4m --data scratch/zoo/data --device cuda --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bitsweep.harness.zoo.corpus import SPLITS, build_corpus
from bitsweep.harness.zoo.specs import TrainRecipe, get_spec
from bitsweep.harness.zoo.tokenizer import encode_text, save_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def prepare_data(data_dir: str | Path, vocab_size: int = 4096, corpus_root: str | Path | None = None) -> dict:
    """Tokenize the corpus here; write tokenizer + per-split uint16 token files + meta."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(corpus_root)
    t0 = time.time()
    tok = train_tokenizer((text for _, text in corpus.documents("train")), vocab_size)
    save_tokenizer(tok, data_dir / "tokenizer")
    counts = {}
    for split in SPLITS:
        ids = encode_text(tok, corpus.text(split))
        np.save(data_dir / f"{split}.npy", ids)
        counts[split] = int(ids.size)
    meta = {"corpus": corpus.summary(), "vocab_size": tok.get_vocab_size(), "tokens": counts,
            "prepare_s": round(time.time() - t0, 1)}
    (data_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("prepared %s: %s", data_dir, counts)
    return meta


def load_tokens(data_dir: str | Path, split: str) -> torch.Tensor:
    """Token ids of one split from a prepared data folder: (n,) int64."""
    path = Path(data_dir) / f"{split}.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run prepare_data / --prepare-only first")
    return torch.from_numpy(np.load(path).astype(np.int64))


def lr_at(step: int, recipe: TrainRecipe, total_steps: int) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``lr * min_lr_ratio``."""
    warm = min(recipe.warmup_steps, max(1, total_steps // 10))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    floor = recipe.lr * recipe.min_lr_ratio
    return floor + (recipe.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def sample_batch(tokens: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator):
    """Random windows: tokens (n,) -> inputs (batch, seq_len), targets (batch, seq_len)."""
    if tokens.numel() <= seq_len + 1:
        raise ValueError(f"need more than {seq_len + 1} tokens to train, have {tokens.numel()}")
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch,), generator=gen)
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]  # (batch, seq_len+1)
    windows = tokens[idx.to(tokens.device)]
    return windows[:, :-1], windows[:, 1:]


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL: x, y (B, T) -> scalar, computed in fp32."""
    logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def evaluate_ppl(model, tokens: torch.Tensor, seqlen: int, batch_size: int = 8,
                 device: str | torch.device = "cpu", autocast: bool = False,
                 max_chunks: int | None = None) -> dict:
    """Perplexity over non-overlapping ``seqlen`` chunks of ``tokens`` (n,), remainder dropped."""
    n_chunks = tokens.numel() // seqlen
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks == 0:
        raise ValueError(f"{tokens.numel()} tokens is less than one chunk of {seqlen}")
    chunks = tokens[: n_chunks * seqlen].view(n_chunks, seqlen)  # (n_chunks, seqlen)
    was_training = model.training
    model.eval()
    nll_sum, count = 0.0, 0
    for i in range(0, n_chunks, batch_size):
        batch = chunks[i : i + batch_size].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=batch, use_cache=False).logits  # (b, seqlen, V)
        nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        nll_sum += float(nll)
        count += batch.shape[0] * (seqlen - 1)
    model.train(was_training)
    mean = nll_sum / count
    return {"nll": mean, "ppl": math.exp(mean), "chunks": n_chunks, "predicted_tokens": count, "seqlen": seqlen}


def _optimizer(model, recipe: TrainRecipe, device: str) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.beta1, recipe.beta2),
                             fused=str(device).startswith("cuda"))


def default_data_dir(vocab_size: int, corpus_root: str | Path | None = None) -> Path:
    """Cache folder for prepared tokens: ``$BITSWEEP_CACHE`` (default ~/.cache/bitsweep)/zoo-data/..."""
    fingerprint = build_corpus(corpus_root).fingerprint
    cache = Path(os.environ.get("BITSWEEP_CACHE", "~/.cache/bitsweep")).expanduser()
    return cache / "zoo-data" / f"stdlib-{fingerprint}-bpe{vocab_size}"


def _resolve_data(data_dir, vocab_size: int, corpus_root) -> tuple[Path, dict]:
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir(vocab_size, corpus_root)
    if not (data_dir / "meta.json").exists():
        prepare_data(data_dir, vocab_size, corpus_root)
    meta = json.loads((data_dir / "meta.json").read_text())
    if meta["vocab_size"] != vocab_size:
        raise ValueError(f"data in {data_dir} has vocab {meta['vocab_size']}, the spec needs {vocab_size}")
    return data_dir, meta


def _train_loop(model, train_ids: torch.Tensor, val_ids: torch.Tensor, recipe: TrainRecipe, steps: int,
                device: str, eval_seqlen: int, log_every: int) -> dict[str, list]:
    """Optimise ``model`` in place for ``steps`` steps; return the loss / lr / validation history."""
    model.train()
    opt = _optimizer(model, recipe, device)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    use_amp = str(device).startswith("cuda")
    history: dict[str, list] = {"step": [], "loss": [], "lr": [], "val": []}
    t0 = time.time()
    loss_acc, n_acc = torch.zeros((), device=device), 0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe, steps)
        x, y = sample_batch(train_ids, recipe.batch_size, recipe.seq_len, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = lm_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        loss_acc += loss.detach()
        n_acc += 1
        if (step + 1) % log_every == 0 or step == steps - 1:
            mean_loss = float(loss_acc) / n_acc  # mean train loss since the last log line
            loss_acc.zero_()
            n_acc = 0
            tok_s = (step + 1) * recipe.batch_size * recipe.seq_len / (time.time() - t0)
            history["step"].append(step + 1)
            history["loss"].append(round(mean_loss, 4))
            history["lr"].append(lr_at(step, recipe, steps))
            log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s", step + 1, steps, mean_loss, history["lr"][-1], tok_s)
        if (step + 1) % recipe.eval_every == 0 or step == steps - 1:
            val = evaluate_ppl(model, val_ids, eval_seqlen, 32, device, use_amp)
            history["val"].append({"step": step + 1, "nll": round(val["nll"], 4), "ppl": round(val["ppl"], 3)})
            log.info("step %d val nll %.4f ppl %.2f", step + 1, val["nll"], val["ppl"])
    return history


def train(name: str, device: str = "cpu", out_dir: str | Path | None = None,
          data_dir: str | Path | None = None, corpus_root: str | Path | None = None,
          max_steps: int | None = None, log_every: int = 50, **recipe_overrides) -> dict:
    """Train zoo model ``name``; write its folder to ``out_dir`` (default: its zoo path).

    ``data_dir`` holds prepared token files (prepared here, from ``corpus_root``, if missing;
    default ``default_data_dir(...)``, a cache folder keyed by the corpus fingerprint). ``recipe_overrides`` replace ``TrainRecipe``
    fields (e.g. ``train_tokens=...``); ``max_steps`` caps the step count (smoke tests).
    Returns the training log that is also written to ``train_log.json``.
    """
    from transformers import LlamaForCausalLM

    from bitsweep.harness.zoo import zoo_path

    spec = get_spec(name)
    recipe = dataclasses.replace(spec.recipe, **recipe_overrides)
    out_dir = Path(out_dir) if out_dir is not None else zoo_path(name)
    data_dir, meta = _resolve_data(data_dir, spec.vocab_size, corpus_root)
    train_ids = load_tokens(data_dir, "train").to(device)
    val_ids = load_tokens(data_dir, "validation")
    steps = recipe.steps() if max_steps is None else min(max_steps, recipe.steps())

    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(spec.llama_config()).to(device)
    t0 = time.time()
    history = _train_loop(model, train_ids, val_ids, recipe, steps, device, spec.max_position_embeddings, log_every)
    train_s = time.time() - t0
    train_log = {
        "name": name, "spec": spec.to_dict(), "recipe": dataclasses.asdict(recipe), "steps": steps,
        "tokens_trained": steps * recipe.batch_size * recipe.seq_len, "train_s": round(train_s, 1),
        "tokens_per_s": round(steps * recipe.batch_size * recipe.seq_len / train_s),
        "device": _device_name(device), "torch": torch.__version__, "data": meta,
        "final_train_loss": history["loss"][-1], "final_val": history["val"][-1], "history": history,
    }
    if (out_dir / "model.safetensors").exists():
        log.warning("overwriting the model in %s", out_dir)
    write_model_folder(model, out_dir, data_dir / "tokenizer", train_log)
    return train_log


def _device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return str(device)


def write_model_folder(model, out_dir: str | Path, tokenizer_dir: str | Path, train_log: dict) -> Path:
    """fp16 safetensors + config + tokenizer files + train_log.json in ``out_dir``."""
    from transformers import __version__ as tf_version

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype=torch.float16, device="cpu")
    model.save_pretrained(out_dir, safe_serialization=True)
    for fname in TOKENIZER_FILES:
        shutil.copy2(Path(tokenizer_dir) / fname, out_dir / fname)
    train_log = {**train_log, "transformers": tf_version}
    (out_dir / "train_log.json").write_text(json.dumps(train_log, indent=1) + "\n")
    log.info("wrote %s", out_dir)
    return out_dir


def parse_overrides(items: list[str]) -> dict:
    """``["lr=2e-3", "seed=1"]`` -> typed TrainRecipe overrides; unknown fields are errors."""
    fields = {f.name: f.type for f in dataclasses.fields(TrainRecipe)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"bad recipe override {item!r}; valid fields: {', '.join(fields)}")
        out[key] = float(value) if fields[key] in (float, "float") else int(float(value))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitsweep.harness.zoo.train", description=__doc__.split("\n")[0])
    parser.add_argument("name", help="zoo model name (see bitsweep.harness.zoo.list_models)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="model folder to write (default: the zoo path)")
    parser.add_argument("--data", default=None, help="prepared token folder (prepared here if missing)")
    parser.add_argument("--corpus-root", default=None, help="stdlib root to build the corpus from")
    parser.add_argument("--prepare-only", action="store_true", help="tokenize the corpus into --data and stop")
    parser.add_argument("--train-tokens", type=int, default=None, help="override the recipe's token budget")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainRecipe field, e.g. --set lr=2e-3 (repeatable)")
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        spec = get_spec(args.name)
        overrides = parse_overrides(args.set)
    except ValueError as err:  # unknown model name or recipe field: one line, exit code 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.prepare_only:
        if args.data is None:
            parser.error("--prepare-only needs --data DIR")
        print(json.dumps(prepare_data(args.data, spec.vocab_size, args.corpus_root)["tokens"]))
        return 0
    if args.train_tokens is not None:
        overrides["train_tokens"] = args.train_tokens
    result = train(args.name, args.device, args.out, args.data, args.corpus_root, args.max_steps, **overrides)
    print(json.dumps({k: result[k] for k in ("tokens_trained", "train_s", "tokens_per_s", "final_train_loss", "final_val")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
