"""Evaluator ``ppl``: perplexity with the standard protocol.

Concatenate the split (documents joined as the source defines), tokenize, cut
non-overlapping windows of ``seqlen`` tokens (default 2048, or the model's
maximum if smaller; remainder dropped), run each window independently, and take
``ppl = exp(mean NLL over all predicted tokens)``. The stderr is the delta-method
error from the spread of per-window mean NLLs. ``max_chunks`` evaluates only that many
windows spread evenly over the split (quick sweeps; recorded as a tag so such
numbers never mix with full-split numbers on a leaderboard).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bitsweep.harness.data import eval_windows
from bitsweep.harness.eval.base import EvalContext, Evaluator, MetricRow, register_evaluator


def model_max_length(model) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        val = getattr(cfg, key, None)
        if isinstance(val, int) and val > 0:
            return val
    return None


def spread_indices(n: int, k: int) -> torch.Tensor:
    """``k`` window indices spread evenly over ``n`` (first and last included)."""
    if k <= 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.linspace(0, n - 1, k).round().long().unique()


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 8, device: str = "cpu",
               desc: str = "ppl") -> torch.Tensor:
    """Mean next-token NLL of each window: windows [n, L] -> [n] (float64)."""
    out = []
    for i in tqdm(range(0, windows.shape[0], batch_size), desc=desc, leave=False):
        batch = windows[i: i + batch_size].to(device)  # [b, L]
        logits = model(input_ids=batch).logits.float()  # [b, L, V]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(),
                              reduction="none").view(batch.shape[0], -1)  # [b, L-1]
        out.append(nll.mean(dim=1).double().cpu())
    return torch.cat(out)


def ppl_from_nll(nll: torch.Tensor) -> tuple[float, float | None]:
    """(ppl, stderr) from per-window mean NLLs [n] (equal-length windows)."""
    mean = nll.mean().item()
    ppl = math.exp(mean)
    if nll.numel() < 2:
        return ppl, None
    se = nll.std(unbiased=True).item() / math.sqrt(nll.numel())
    return ppl, ppl * se


@register_evaluator("ppl")
class Perplexity(Evaluator):
    #: 2: ``max_chunks`` takes evenly spaced windows (1 took the first ones)
    version = 2

    @dataclass(frozen=True)
    class Config:
        datasets: tuple[str, ...] = ("stdlib",)
        split: str = "test"
        seqlen: int = 2048
        max_chunks: int | None = None  # evenly spaced subset of the windows
        batch_size: int = 8

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> list[MetricRow]:
        c = self.config
        seqlen = min(c.seqlen, model_max_length(model) or c.seqlen)
        rows = []
        for name in c.datasets:
            win = eval_windows(name, c.split, tokenizer, seqlen, seed=ctx.seed)
            full = win.shape[0]
            if c.max_chunks is not None and c.max_chunks < full:
                win = win[spread_indices(full, c.max_chunks)]
            nll = window_nll(model, win, c.batch_size, ctx.device, desc=f"ppl {name}")
            ppl, se = ppl_from_nll(nll)
            tags = {"dataset": name, "split": c.split, "seqlen": seqlen,
                    "chunks": int(win.shape[0]), "of_chunks": int(full)}
            rows.append(MetricRow("ppl", ppl, se, tags))
            rows.append(MetricRow("nll", nll.mean().item(),
                                  (nll.std().item() / math.sqrt(nll.numel())) if nll.numel() > 1 else None,
                                  dict(tags)))
        return rows
