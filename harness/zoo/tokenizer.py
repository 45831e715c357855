"""Byte-level BPE tokenizer for zoo models, trained on a corpus split.

Contract
--------
``train_tokenizer(texts, vocab_size=4096) -> tokenizers.Tokenizer`` trains a GPT-2 style
byte-level BPE (every byte is in the base alphabet, so any text round-trips) with one
special token, ``<|endoftext|>``, used as bos / eos / unk / pad. No post-processor is set:
encoding a text adds no special tokens, which is what the perplexity protocol
(concatenate, tokenize, chunk) expects. Training is deterministic for a given input.

``save_tokenizer(tok, folder)`` writes ``tokenizer.json`` + ``tokenizer_config.json`` +
``special_tokens_map.json`` so that ``transformers.AutoTokenizer.from_pretrained(folder)``
loads it offline as a ``PreTrainedTokenizerFast``.

``encode_corpus_split(tokenizer, text) -> np.ndarray[uint16]`` tokenizes one long text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

log = logging.getLogger(__name__)

SPECIAL_TOKEN = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 4096


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` entries (special token included)."""
    if vocab_size > 65535:
        raise ValueError(f"vocab_size={vocab_size} does not fit uint16 token files (max 65535)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    log.info("trained byte-level BPE: vocab %d", tok.get_vocab_size())
    return tok


def save_tokenizer(tok: Tokenizer, folder: str | Path) -> Path:
    """Write a folder that ``AutoTokenizer.from_pretrained`` loads offline."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    special = {
        "bos_token": SPECIAL_TOKEN,
        "eos_token": SPECIAL_TOKEN,
        "unk_token": SPECIAL_TOKEN,
        "pad_token": SPECIAL_TOKEN,
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder


def load_tokenizer(folder: str | Path):
    """The saved tokenizer as a ``PreTrainedTokenizerFast`` (no network)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def encode_text(tok: Tokenizer, text: str) -> np.ndarray:
    """Token ids of one text, no special tokens added: (n_tokens,) uint16."""
    ids = tok.encode(text, add_special_tokens=False).ids
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and int(arr.max()) > np.iinfo(np.uint16).max:
        raise ValueError("token id exceeds uint16")
    return arr.astype(np.uint16)
