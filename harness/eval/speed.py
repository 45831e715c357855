"""Evaluator ``speed``: prefill and decode tokens/s of the model as it is (16-bit, fake or real).

Decode runs ``decode_steps`` single-token steps at each batch size with a
static KV cache (transformers ``StaticCache``); on CUDA one step is captured in
a CUDA graph and replayed (``cuda_graph: true``), so launch overhead is not
what is measured. Prefill is one forward of ``prefill_tokens`` tokens at batch 1.
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


@torch.inference_mode()
def measure_decode(model, batch: int, steps: int, prompt_len: int = 32, cuda_graph: bool = True,
                   repeats: int = 3) -> float:
    """Decode tokens/s (batch * steps / time) with a static KV cache; one step per graph replay."""
    from transformers import StaticCache
    dev = next(model.parameters()).device
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + steps + 8)
    gen = torch.Generator(dev).manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=dev, generator=gen)
    model(prompt, past_key_values=cache, cache_position=torch.arange(prompt_len, device=dev), use_cache=True)
    ids = torch.zeros(batch, 1, dtype=torch.long, device=dev)
    pos = torch.full((1,), prompt_len, dtype=torch.long, device=dev)

    def step():
        return model(ids, past_key_values=cache, cache_position=pos, use_cache=True).logits

    for _ in range(2):
        step()  # warm-up: tuning and cache allocation happen outside capture
    run = step
    if cuda_graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay

    def loop():
        for _ in range(steps):
            run()

    ms = _events_ms(loop, repeats)
    return batch * steps / (ms / 1e3)


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
            tps = measure_decode(model, b, c.decode_steps, c.prompt_len, c.cuda_graph, c.repeats)
            rows.append(MetricRow(f"decode_tok_s_b{b}", tps, tags=dict(tags, batch=b, steps=c.decode_steps)))
        real = ctx.record_extra.get("real_layers")
        if real is not None:
            for r in rows:
                r.tags["real_layers"] = sum(v == "real" for v in real.values())
        return rows
