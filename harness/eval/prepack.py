"""Prepacked scoring: no compute spent on padding (Zhao et al., "Prepacking", 2024).

Contract
--------
:func:`score_sequences` takes model inputs of varying length (token lists) and, for
each, the target tokens predicted by its last positions, and returns per-sequence
target log-probs and whether every target is the greedy (argmax) token. Sequences are
bin-packed first-fit-decreasing into rows of ``capacity`` tokens (:func:`pack_ffd`);
each row gets a block-diagonal causal mask (a token sees only earlier tokens of its own
sequence, :func:`block_causal_mask`) and position ids that restart at 0 per sequence, so
each sequence is computed exactly as if it were alone. Only the hidden states of target
positions go through the LM head (in chunks), so memory does not scale with
rows x capacity x vocab. :func:`token_nll` is the perplexity form (per-token NLL of
variable-length documents).

:class:`PrepackedHFLM` is lm-eval's ``HFLM`` with ``_loglikelihood_tokens`` (multiple
choice, loglikelihood tasks) and ``loglikelihood_rolling`` (perplexity tasks) routed
through :func:`score_sequences`: tokenization, truncation and the (logprob, is_greedy)
contract are HFLM's, so results match the padded path (to 1e-3 in fp32, tested).
Identical inputs (e.g. one-token answer choices after one context) are computed once,
as HFLM's ``logits_cache`` does. ``generate_until`` is HFLM's, unchanged.

Supported models: decoder-only HF models whose decoder honours a custom 4D attention
mask and explicit ``position_ids`` -- checked for ``SUPPORTED_MODEL_TYPES`` (Llama,
Mistral, Qwen2, Qwen3, GPT-NeoX, OPT) under ``attn_implementation`` ``eager`` or
``sdpa``. Anything else raises :class:`PackingUnsupportedError` (flash-attention-2 and
flex take other mask formats; sliding-window layers would need the window in the mask).

Trade-off: attention still runs over the whole row (masked), so the saving is in the
dense layers; rows of a few thousand tokens keep the masked attention cheap.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt_neox", "opt")
SUPPORTED_ATTN = ("eager", "sdpa")
DEFAULT_HEAD_CHUNK = 4096  # target positions per LM-head call


class PackingUnsupportedError(ValueError):
    """The model family or attention implementation cannot run packed rows."""


# ----------------------------------------------------------------------------- packing


def pack_ffd(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: item indices per bin, each bin's sum <= capacity."""
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"sequence of {max(too_long)} tokens exceeds the pack capacity {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free = np.zeros(len(lengths), dtype=np.int64)  # remaining room per opened bin
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        fits = np.flatnonzero(free[: len(bins)] >= n)
        if fits.size:
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            free[b] = capacity
        bins[b].append(i)
        free[b] -= n
    return bins


@dataclass(frozen=True)
class PackedBatch:
    """Rows of packed sequences, plus where each sequence sits."""

    input_ids: torch.Tensor      # [R, C] int64, pad_id after the last sequence of a row
    position_ids: torch.Tensor   # [R, C] int64, restarting at 0 per sequence (and for the pad tail)
    segment_ids: torch.Tensor    # [R, C] int64, sequence number within the row; pad tail its own
    places: list[tuple[int, int, int]]  # per sequence (in input order): (row, offset, length)


def pack_rows(seqs: Sequence[Sequence[int]], rows: list[list[int]], width: int, pad_id: int) -> PackedBatch:
    """Lay out ``seqs`` (grouped by ``rows`` of indices) in a [len(rows), width] batch."""
    n_rows = len(rows)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    segment_ids = torch.zeros((n_rows, width), dtype=torch.long)
    places: dict[int, tuple[int, int, int]] = {}
    for r, members in enumerate(rows):
        off = 0
        for s, idx in enumerate(members):
            n = len(seqs[idx])
            input_ids[r, off: off + n] = torch.as_tensor(seqs[idx], dtype=torch.long)
            position_ids[r, off: off + n] = torch.arange(n)
            segment_ids[r, off: off + n] = s
            places[idx] = (r, off, n)
            off += n
        position_ids[r, off:] = torch.arange(width - off)
        segment_ids[r, off:] = len(members)
    order = sorted(places)
    return PackedBatch(input_ids, position_ids, segment_ids, [places[i] for i in order])


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask [R, 1, C, C]: True where query q may attend key k (same segment, k <= q)."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [R, C, C]
    width = segment_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment_ids.device).tril()
    return (same & causal)[:, None]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean keep-mask -> additive float mask (0 keep, dtype min drop), same shape."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


# ----------------------------------------------------------------------------- model side


def check_supported(model) -> str:
    """The attention implementation, or PackingUnsupportedError naming what is supported."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise PackingUnsupportedError(
            f"packing does not support model_type {model_type!r}; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (set packing=false for other models)")
    attn = getattr(cfg, "_attn_implementation", None) or "eager"
    if attn not in SUPPORTED_ATTN:
        raise PackingUnsupportedError(
            f"packing needs attn_implementation in {SUPPORTED_ATTN}, model uses {attn!r}")
    if getattr(cfg, "use_sliding_window", True) and getattr(cfg, "sliding_window", None):
        if model_type in ("mistral",) or getattr(cfg, "use_sliding_window", False):
            raise PackingUnsupportedError(
                f"packing does not apply sliding-window attention (sliding_window={cfg.sliding_window})")
    return attn


def _decoder_and_head(model):
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings()
    if base is None or base is model or head is None:
        raise PackingUnsupportedError(f"{type(model).__name__}: no separate decoder and LM head")
    return base, head


@torch.no_grad()
def packed_hidden(model, batch: PackedBatch, device) -> torch.Tensor:
    """Last hidden states [R, C, H] of the packed rows."""
    check_supported(model)
    base, _ = _decoder_and_head(model)
    # additive float mask: what eager attention adds to the scores, accepted by SDPA too, and
    # the "inverted" 4D form older transformers releases require for custom masks
    mask = additive_mask(block_causal_mask(batch.segment_ids.to(device)), model.dtype)  # [R, 1, C, C]
    out = base(input_ids=batch.input_ids.to(device), attention_mask=mask,
               position_ids=batch.position_ids.to(device), use_cache=False)
    return out.last_hidden_state


def _target_index(batch: PackedBatch, owners: list[int], n_targets: list[int]):
    """(row, col) of the positions whose outputs predict each request's targets.

    ``owners[j]`` is the packed sequence read by request ``j`` and ``n_targets[j]`` its
    number of targets, predicted by the last ``n_targets[j]`` positions of that sequence.
    """
    rows, cols = [], []
    for o, k in zip(owners, n_targets, strict=True):
        r, off, n = batch.places[o]
        rows.append(torch.full((k,), r, dtype=torch.long))
        cols.append(torch.arange(off + n - k, off + n))
    return torch.cat(rows), torch.cat(cols)


@torch.no_grad()
def score_rows(model, seqs: Sequence[Sequence[int]], rows: list[list[int]],
               requests: list[tuple[int, Sequence[int]]], width: int, pad_id: int, device,
               softmax_dtype=None, head_chunk: int = DEFAULT_HEAD_CHUNK) -> list[tuple[torch.Tensor, bool]]:
    """One forward over ``rows`` (lists of indices into ``seqs``); score ``requests``.

    Each request is ``(seq index, targets)``; returns per request (target log-probs [k]
    float32 on CPU, all targets greedy).
    """
    members = [i for row in rows for i in row]
    local = {idx: j for j, idx in enumerate(members)}
    batch = pack_rows([seqs[i] for i in members], [[local[i] for i in row] for row in rows], width, pad_id)
    hidden = packed_hidden(model, batch, device)  # [R, C, H]
    _, head = _decoder_and_head(model)
    n_targets = [len(t) for _, t in requests]
    r_idx, c_idx = _target_index(batch, [local[o] for o, _ in requests], n_targets)
    r_idx, c_idx = r_idx.to(device), c_idx.to(device)
    tgt = torch.cat([torch.as_tensor(list(t), dtype=torch.long) for _, t in requests]).to(device)  # [T]
    logps, greedy = [], []
    for s in range(0, tgt.numel(), head_chunk):
        logits = head(hidden[r_idx[s: s + head_chunk], c_idx[s: s + head_chunk]])  # [t, V]
        lp = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
        t = tgt[s: s + head_chunk]
        logps.append(lp.gather(1, t[:, None])[:, 0].float())
        greedy.append(lp.argmax(dim=-1) == t)
    logp, is_greedy = torch.cat(logps).cpu(), torch.cat(greedy).cpu()
    out, start = [], 0
    for k in n_targets:
        out.append((logp[start: start + k], bool(is_greedy[start: start + k].all())))
        start += k
    return out


def score_sequences(model, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                    capacity: int | None = None, rows_per_batch: int = 8, pad_id: int = 0,
                    device=None, softmax_dtype=None, progress=None) -> list[tuple[torch.Tensor, bool]]:
    """Per input: (log-probs [k] of its ``k`` targets, all-greedy), computed on packed rows.

    ``inputs[i]`` is what the model reads; ``targets[i]`` (``0 < k <= len(inputs[i])``)
    are the tokens predicted by its last ``k`` positions. ``capacity`` is the row length
    (default: the longest input); ``rows_per_batch`` rows go through the model at once.
    Identical inputs are computed once. ``progress(n)`` gets the number of requests
    finished after each forward pass.
    """
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} target lists")
    if not inputs:
        return []
    device = device if device is not None else next(model.parameters()).device
    uniq: dict[tuple[int, ...], int] = {}
    owner: list[int] = []
    for inp, tgt in zip(inputs, targets, strict=True):
        if not 0 < len(tgt) <= len(inp):
            raise ValueError(f"need 0 < len(targets)={len(tgt)} <= len(input)={len(inp)}")
        owner.append(uniq.setdefault(tuple(inp), len(uniq)))
    seqs = list(uniq)  # unique inputs, in first-seen order
    by_owner: dict[int, list[int]] = {}
    for i, o in enumerate(owner):
        by_owner.setdefault(o, []).append(i)
    width = capacity or max(len(s) for s in seqs)
    bins = pack_ffd([len(s) for s in seqs], width)
    results: list[tuple[torch.Tensor, bool] | None] = [None] * len(inputs)
    for b in range(0, len(bins), rows_per_batch):
        rows = bins[b: b + rows_per_batch]
        req_ids = [i for row in rows for o in row for i in by_owner[o]]
        scored = score_rows(model, seqs, rows, [(owner[i], targets[i]) for i in req_ids], width,
                            pad_id, device, softmax_dtype)
        for i, res in zip(req_ids, scored, strict=True):
            results[i] = res
        if progress is not None:
            progress(len(req_ids))
    return results  # type: ignore[return-value]


def token_nll(model, seqs: Sequence[Sequence[int]], *, capacity: int | None = None, rows_per_batch: int = 8,
              pad_id: int = 0, device=None) -> list[torch.Tensor]:
    """Perplexity building block: per sequence, NLL [n-1] of tokens 1..n-1 given their prefix, packed.

    For variable-length documents (per-document perplexity); fixed-length windows gain nothing.
    """
    if any(len(s) < 2 for s in seqs):
        raise ValueError("every sequence needs at least 2 tokens")
    scored = score_sequences(model, [s[:-1] for s in seqs], [s[1:] for s in seqs], capacity=capacity,
                             rows_per_batch=rows_per_batch, pad_id=pad_id, device=device,
                             softmax_dtype=torch.float32)
    return [-logp for logp, _ in scored]


# ----------------------------------------------------------------------------- lm-eval wrapper


class PrepackedHFLM(HFLM):
    """``HFLM`` whose loglikelihood scoring runs on packed rows (see the module docstring).

    Extra keyword: ``pack_length`` (row length in tokens; default the longest request,
    at most ``max_length``). ``batch_size`` is the number of packed rows per forward pass
    (``auto`` uses ``max_batch_size``).
    """

    def __init__(self, *args, pack_length: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.backend != "causal":
            raise PackingUnsupportedError(f"packing needs a decoder-only model, got backend {self.backend!r}")
        check_supported(self.model)
        if pack_length is not None and pack_length > self.max_length:
            raise ValueError(f"pack_length={pack_length} exceeds max_length={self.max_length}")
        self.pack_length = pack_length

    def _rows_per_batch(self) -> int:
        bs = self.batch_size
        return int(bs) if str(bs).isdigit() else int(self.max_batch_size or 8)

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eot_token_id)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """(logprob, is_greedy) per ``((ctx, cont), ctx_tokens, cont_tokens)``, same truncation as HFLM."""
        inputs, targets = [], []
        for _, ctx_enc, cont_enc in requests:
            if not ctx_enc or not cont_enc or len(cont_enc) > self.max_length:
                raise ValueError(f"bad request: {len(ctx_enc)} context / {len(cont_enc)} continuation "
                                 f"tokens (max_length {self.max_length})")
            full = (ctx_enc + cont_enc)[-(self.max_length + 1):]
            inputs.append(full[:-1])
            targets.append(cont_enc)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                    desc="Running loglikelihood requests (packed)")
        with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                            enabled=self.mixed_precision_dtype is not None):
            scored = score_sequences(self.model, inputs, targets, capacity=self.pack_length,
                                     rows_per_batch=self._rows_per_batch(), pad_id=self._pad_id(),
                                     device=self.device, softmax_dtype=self.softmax_dtype,
                                     progress=pbar.update)
        pbar.close()
        res = []
        for (request_str, _, _), (logp, greedy) in zip(requests, scored, strict=True):
            answer = (float(logp.sum()), greedy)
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
            res.append(answer)
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scores: HFLM's disjoint rolling windows, all packed together."""
        windows, counts = [], []
        for (string,) in [req.args for req in requests]:
            rolling = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            windows.extend((None, ctx, cont) for ctx, cont in rolling)
            counts.append(len(rolling))
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        out, start = [], 0
        for req, n in zip(requests, counts, strict=True):
            total = sum(lp for lp, _ in scores[start: start + n])
            start += n
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            out.append(total)
        return out
