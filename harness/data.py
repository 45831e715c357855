"""Text sources for calibration and perplexity, and the token-window protocols.

Sources (``SOURCES``): ``stdlib`` (the offline corpus built from this machine's
Python standard library, split by file; its fingerprint is recorded with every
result), and the hub datasets with their usual protocols:

* ``wikitext2``: ``wikitext`` / ``wikitext-2-raw-v1``, documents joined with "\\n\\n";
* ``c4``: ``allenai/c4`` shard files (GPTQ's protocol: random windows of random
  documents, seed 0; eval uses 256 windows of the validation shard);
* ``c4-new``: the first 1100 validation documents joined with " ";
* ``pileval``: ``mit-han-lab/pile-val-backup`` (AWQ / SmoothQuant calibration).

Hub sources use the real ``datasets.load_dataset`` path; ``path``/``name`` can be
pointed at a local folder (tests do this offline). ``local:/file.txt`` reads a
local text file as one document.

Protocols: :func:`eval_windows` gives non-overlapping ``seqlen`` windows of the
concatenated token stream (remainder dropped; GPTQ / lm-eval-free ppl protocol),
except for ``c4`` (random windows). :func:`calibration_batches` gives ``nsamples``
seeded random windows of ``seqlen`` tokens from the calibration split.
"""
from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bitsweep.methods.core.registry import ConfigError, did_you_mean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFSource:
    path: str
    name: str | None = None
    splits: dict = field(default_factory=dict)  # our split name -> (hf split, data_files or None)
    text_field: str = "text"
    join: str = "\n\n"
    max_docs: int | None = None
    random_windows: bool = False


SOURCES: dict[str, HFSource | str] = {
    "stdlib": "stdlib",
    "wikitext2": HFSource("wikitext", "wikitext-2-raw-v1",
                          {"train": ("train", None), "validation": ("validation", None),
                           "test": ("test", None)}),
    "c4": HFSource("allenai/c4", None,
                   {"train": ("train", {"train": "en/c4-train.00000-of-01024.json.gz"}),
                    "validation": ("validation", {"validation": "en/c4-validation.00000-of-00008.json.gz"}),
                    "test": ("validation", {"validation": "en/c4-validation.00000-of-00008.json.gz"})},
                   random_windows=True),
    "c4-new": HFSource("allenai/c4", None,
                       {"test": ("validation", {"validation": "en/c4-validation.00000-of-00008.json.gz"}),
                        "validation": ("validation", {"validation": "en/c4-validation.00000-of-00008.json.gz"})},
                       join=" ", max_docs=1100),
    "pileval": HFSource("mit-han-lab/pile-val-backup", None,
                        {"train": ("validation", None), "validation": ("validation", None),
                         "test": ("validation", None)}),
}


def source_names() -> list[str]:
    return sorted(SOURCES) + ["local:<path>"]


def resolve_source(name: str) -> HFSource | str:
    if name.startswith("local:"):
        return name
    if name not in SOURCES:
        raise ConfigError(f"unknown dataset '{name}'; valid: {', '.join(source_names())}"
                          + did_you_mean(name, list(SOURCES)))
    return SOURCES[name]


def load_documents(name: str, split: str, source: HFSource | None = None) -> list[str]:
    """Documents of a source split (list of strings)."""
    src = source or resolve_source(name)
    if src == "stdlib":
        from bitsweep.harness.zoo.corpus import build_corpus
        return [text for _, text in build_corpus().documents(split)]
    if isinstance(src, str) and src.startswith("local:"):
        path = Path(src[len("local:"):]).expanduser()
        if not path.is_file():
            raise ConfigError(f"dataset {src}: file '{path}' does not exist")
        return [path.read_text(encoding="utf-8", errors="replace")]
    return _load_hf_documents(src, split)


def _load_hf_documents(src: HFSource, split: str) -> list[str]:
    if split not in src.splits:
        raise ConfigError(f"dataset '{src.path}' has no split '{split}'; valid: {', '.join(src.splits)}")
    hf_split, data_files = src.splits[split]
    try:
        import datasets
        ds = datasets.load_dataset(src.path, src.name, split=hf_split, data_files=data_files)
    except (ConnectionError, OSError) as exc:  # includes offline hub errors
        raise RuntimeError(f"could not load dataset '{src.path}' split '{hf_split}' "
                           f"(it needs the Hugging Face hub or a local copy): {exc}") from exc
    docs = ds[src.text_field]
    return list(docs[: src.max_docs] if src.max_docs else docs)


def source_join(name: str) -> str:
    src = resolve_source(name)
    return src.join if isinstance(src, HFSource) else "\n\n"


@functools.lru_cache(maxsize=8)
def _token_stream_cached(name: str, split: str, tok_key: int, tokenizer) -> torch.Tensor:
    docs = load_documents(name, split)
    text = source_join(name).join(docs)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    return ids


def token_stream(name: str, split: str, tokenizer) -> torch.Tensor:
    """All documents joined and tokenized: LongTensor [T]. Cached per process."""
    return _token_stream_cached(name, split, id(tokenizer), tokenizer)


def eval_windows(name: str, split: str, tokenizer, seqlen: int, nsamples: int = 256,
                 seed: int = 0) -> torch.Tensor:
    """Evaluation windows [n, seqlen] under the source's protocol."""
    src = resolve_source(name)
    if isinstance(src, HFSource) and src.random_windows:
        return _random_doc_windows(load_documents(name, split), tokenizer, seqlen, nsamples, seed)
    ids = token_stream(name, split, tokenizer)
    n = ids.numel() // seqlen
    if n == 0:
        raise ConfigError(f"dataset '{name}' split '{split}' has {ids.numel()} tokens, "
                          f"fewer than one window of seqlen={seqlen}")
    return ids[: n * seqlen].reshape(n, seqlen)


def _random_doc_windows(docs: list[str], tokenizer, seqlen: int, n: int, seed: int) -> torch.Tensor:
    """GPTQ's C4 protocol: pick random documents longer than seqlen, a random window of each."""
    rng = random.Random(seed)
    out = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        ids = tokenizer(docs[rng.randint(0, len(docs) - 1)], return_tensors="pt",
                        add_special_tokens=False)["input_ids"][0]
        if ids.numel() <= seqlen:
            continue
        start = rng.randint(0, ids.numel() - seqlen - 1)
        out.append(ids[start:start + seqlen])
    if len(out) < n:
        raise ConfigError(f"only {len(out)} documents longer than seqlen={seqlen}")
    return torch.stack(out)


def calibration_batches(name: str, tokenizer, nsamples: int, seqlen: int, seed: int,
                        split: str = "train") -> list[torch.Tensor]:
    """``nsamples`` seeded random windows [1, seqlen] from the calibration split."""
    src = resolve_source(name)
    if isinstance(src, HFSource) and src.random_windows:
        win = _random_doc_windows(load_documents(name, split), tokenizer, seqlen, nsamples, seed)
        return [w.unsqueeze(0) for w in win]
    ids = token_stream(name, split, tokenizer)
    if ids.numel() <= seqlen:
        raise ConfigError(f"dataset '{name}' split '{split}' is shorter than seqlen={seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    return [ids[s: s + seqlen].unsqueeze(0) for s in starts.tolist()]


def corpus_fingerprint() -> str:
    from bitsweep.harness.zoo.corpus import build_corpus
    return build_corpus().fingerprint
