"""Evaluator ``speed``: prefill and decode tokens/s of the model as it is (16-bit, fake or real).

Decode runs ``decode_steps`` single-token steps at each batch size with a
static KV cache (transformers ``StaticCache``, sized for every step taken); on
CUDA one step is captured in a CUDA graph and replayed (``cuda_graph: true``),
so launch overhead is not what is measured (the row's ``mode`` tag says whether
the graph ran). Prefill is one forward of ``prefill_tokens`` tokens at batch 1.
Timings are CUDA-event medians over ``repeats``. Without CUDA every row is
reported unavailable ("no CUDA device"), never a made-up number.

Plain functions (``measure_prefill``, ``measure_decode``) carry the logic so
scripts can use them without Hydra.
"""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

import torch

from harness.eval.base import EvalContext, Evaluator, MetricRow, register_evaluator

log = logging.getLogger(__name__)


def _events_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


@torch.inference_mode()
def measure_prefill(model, tokens: int, repeats: int = 5, vocab: int | None = None) -> float:
    """Tokens/s of one batch-1 forward over ``tokens`` random token ids (no cache)."""
    dev = next(model.parameters()).device
    vocab = vocab or model.config.vocab_size
    ids = torch.randint(0, vocab, (1, tokens), device=dev, generator=torch.Generator(dev).manual_seed(0))
    model(ids, use_cache=False)  # warm-up (kernel tuning, compilation)
    ms = _events_ms(lambda: model(ids, use_cache=False), repeats)
    return tokens / (ms / 1e3)


def _static_cache(model, batch: int, max_len: int):
    """A transformers StaticCache across 5.x signatures (max_batch_size was dropped in later 5.x)."""
    from transformers import StaticCache
    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:
        return StaticCache(config=model.config, max_batch_size=batch, max_cache_len=max_len)


@torch.inference_mode()
def measure_decode(model, batch: int, steps: int, prompt_len: int = 32, cuda_graph: bool = True,
                   repeats: int = 3) -> tuple[float, str]:
    """(decode tokens/s = batch * steps / time, mode) with a static KV cache, one step per graph replay.

    Recent transformers StaticCache layers keep their own write position and
    advance it on every call (cache_position is ignored), graph replays
    included, so the cache is sized for every call this function makes
    (prompt + warm-ups + repeats * steps): no out-of-bounds write. Every timed
    step feeds the same token and position (the cost of a decode step does not
    depend on them; attention runs over the static cache length either way).
    ``mode`` says what ran: "static+graph", or "static" when graph capture
    failed (the reason is logged).
    """
    dev = next(model.parameters()).device
    max_len = prompt_len + (repeats + 1) * steps + 16
    cache = _static_cache(model, batch, max_len)
    gen = torch.Generator(dev).manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=dev, generator=gen)
    model(prompt, past_key_values=cache, cache_position=torch.arange(prompt_len, device=dev), use_cache=True)
    ids = torch.zeros(batch, 1, dtype=torch.long, device=dev)
    pos = torch.full((1,), prompt_len, dtype=torch.long, device=dev)

    def step():
        return model(ids, past_key_values=cache, cache_position=pos, position_ids=pos[None].expand(batch, 1),
                     use_cache=True).logits

    for _ in range(2):
        step()  # warm-up: tuning and cache allocation happen outside capture
    run, mode = step, "static"
    if cuda_graph:
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                step()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            run, mode = graph.replay, "static+graph"
        except RuntimeError as err:
            log.warning("CUDA graph capture failed, timing eager steps: %s", err)
            torch.cuda.synchronize()

    def loop():
        for _ in range(steps):
            run()

    ms = _events_ms(loop, repeats)
    return batch * steps / (ms / 1e3), mode


@register_evaluator("speed")
class Speed(Evaluator):
    """Prefill and decode tokens/s (see module docstring)."""

    needs_gpu = True

    @dataclass(frozen=True)
    class Config:
        prefill_tokens: int = 2048
        decode_batches: tuple[int, ...] = (1, 16)
        decode_steps: int = 128
        prompt_len: int = 32
        cuda_graph: bool = True
        repeats: int = 3

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> list[MetricRow]:
        c = self.config
        names = ["prefill_tok_s"] + [f"decode_tok_s_b{b}" for b in c.decode_batches]
        if not torch.cuda.is_available() or next(model.parameters()).device.type != "cuda":
            return [MetricRow(n, None, unavailable="no CUDA device") for n in names]
        tags = dict(device=torch.cuda.get_device_name(), cuda_graph=c.cuda_graph)
        rows = [MetricRow("prefill_tok_s", measure_prefill(model, c.prefill_tokens, c.repeats),
                          tags=dict(tags, tokens=c.prefill_tokens))]
        for b in c.decode_batches:
            tps, mode = measure_decode(model, b, c.decode_steps, c.prompt_len, c.cuda_graph, c.repeats)
            rows.append(MetricRow(f"decode_tok_s_b{b}", tps,
                                  tags=dict(tags, batch=b, steps=c.decode_steps, mode=mode)))
        real = ctx.record_extra.get("real_layers")
        if real is not None:
            for r in rows:
                r.tags["real_layers"] = sum(v == "real" for v in real.values())
        return rows
