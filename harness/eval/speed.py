"""Evaluator ``speed``: prefill and decode tokens/s of the model as it is (16-bit, fake or real).

Decode runs ``decode_steps`` single-token steps at each batch size with a
static KV cache (transformers ``StaticCache``, sized for every step taken); on
CUDA one step is captured in a CUDA graph and replayed (``cuda_graph: true``),
so launch overhead is not what is measured (the row's ``mode`` tag says whether
the graph ran). Prefill is one forward of ``prefill_tokens`` tokens at batch 1.
With ``compile: true`` the decode step and the prefill forward are wrapped in
``torch.compile`` (``compile_mode``, fullgraph=False, dynamic=False; real
quantized linears are opaque custom ops, see ``bitsweep.kernels.ops``), warmed up
(compiled) eagerly, then captured in the CUDA graph as above; the mode tag
reads "static+compile+graph". If compiling raises, the uncompiled step is timed,
the reason is logged, and the tag says "compile failed" -- never silently.
``pdl: true`` turns on programmatic dependent launch (``pdl_mode``: inductor's
kernels when compiled, bitsweep's M=1 GEMV) so a kernel can start while the one
before it finishes (sm_90+); rows carry a ``pdl`` tag. Off by default; the
option enters the config hash only when true. On the H100 it made the compiled
batch-1 decode of a 7B 4-5% faster in bf16 and ~10% in W4 (kernels/NOTES.md run 7).
Timings are CUDA-event medians over ``repeats``. Without CUDA every row is
reported unavailable ("no CUDA device"), never a made-up number.

Plain functions (``measure_prefill``, ``measure_decode``) carry the logic so
scripts can use them without Hydra.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
from dataclasses import dataclass
from typing import Callable

import torch

from bitsweep.harness.eval.base import EvalContext, Evaluator, MetricRow, register_evaluator
from bitsweep.methods.core.registry import ConfigError

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
COMPILE_WARMUPS = 3  # compiled calls before timing/capture (compilation happens in the first)


def compile_step(step: Callable[[], object], mode: str = "default", backend: str = "inductor",
                 warmups: int = COMPILE_WARMUPS) -> tuple[Callable[[], object], str | None]:
    """(torch.compile'd step, None), or (step, reason) when compiling or a warm-up call raises.

    Compilation is lazy, so the warm-up calls are where it happens; each call
    runs the step once (a decode step advances a StaticCache by one). The
    caller must have run ``step`` eagerly first (kernel tuning must not run
    inside tracing or graph capture). CUDA-graph wrapping is left to the
    caller, so ``mode`` must not be one that adds cudagraphs ("reduce-overhead").
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not supported; valid: {COMPILE_MODES}")
    torch.compiler.reset()  # drop graphs (and their guards on old models) from earlier measurements
    kwargs = dict(mode=mode) if backend == "inductor" else {}
    try:
        compiled = torch.compile(step, backend=backend, fullgraph=False, dynamic=False, **kwargs)
        for _ in range(warmups):
            compiled()
    # Any failure inside dynamo/inductor (their exception types vary by version) means: time uncompiled.
    except Exception as err:  # noqa: BLE001
        first_line = (str(err).strip().splitlines() or [""])[0]
        reason = f"{type(err).__name__}: {first_line[:200]}"
        log.warning("torch.compile failed (%s); timing the uncompiled step", reason, exc_info=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return step, reason
    return compiled, None


@contextlib.contextmanager
def pdl_mode(enabled: bool):
    """Programmatic dependent launch on or off for what runs inside: inductor's generated kernels
    (``torch._inductor.config.triton.enable_pdl``, read when a graph is compiled) and bitsweep's M=1 GEMV
    (``bitsweep.kernels.weight_only.USE_PDL``). With it, a kernel may start while the one before it finishes
    (sm_90+; elsewhere the flags have no effect). Restores both flags on exit."""
    import torch._inductor.config as inductor_config

    from bitsweep.kernels import weight_only
    old = inductor_config.triton.enable_pdl, weight_only.USE_PDL
    inductor_config.triton.enable_pdl = weight_only.USE_PDL = bool(enabled)
    try:
        yield
    finally:
        inductor_config.triton.enable_pdl, weight_only.USE_PDL = old


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


def measure_prefill(model, tokens: int, repeats: int = 5, vocab: int | None = None) -> float:
    """Tokens/s of one batch-1 forward over ``tokens`` random token ids (no cache, eager)."""
    return measure_prefill_mode(model, tokens, repeats, vocab)[0]


@torch.inference_mode()
def measure_prefill_mode(model, tokens: int, repeats: int = 5, vocab: int | None = None,
                         compile: bool = False, compile_mode: str = "default") -> tuple[float, str]:
    """(prefill tokens/s, mode): mode "eager", "compile", or "eager; compile failed: <reason>"."""
    dev = next(model.parameters()).device
    vocab = vocab or model.config.vocab_size
    ids = torch.randint(0, vocab, (1, tokens), device=dev, generator=torch.Generator(dev).manual_seed(0))

    def fwd():
        return model(ids, use_cache=False).logits

    fwd()  # warm-up (kernel tuning) outside any tracing
    run, mode = fwd, "eager"
    if compile:
        run, failed = compile_step(fwd, compile_mode)
        mode = "compile" if failed is None else f"eager; compile failed: {failed}"
    ms = _events_ms(run, repeats)
    return tokens / (ms / 1e3), mode


def _static_cache(model, batch: int, max_len: int):
    """A transformers StaticCache across 5.x signatures (max_batch_size was dropped in later 5.x)."""
    from transformers import StaticCache
    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:
        return StaticCache(config=model.config, max_batch_size=batch, max_cache_len=max_len)


@torch.inference_mode()
def measure_decode(model, batch: int, steps: int, prompt_len: int = 32, cuda_graph: bool = True,
                   repeats: int = 3, compile: bool = False, compile_mode: str = "default") -> tuple[float, str]:
    """(decode tokens/s = batch * steps / time, mode) with a static KV cache, one step per graph replay.

    Recent transformers StaticCache layers keep their own write position and
    advance it on every call (cache_position is ignored), graph replays
    included, so the cache is sized for every call this function makes
    (prompt + warm-ups + compile warm-ups + repeats * steps): no out-of-bounds
    write. Every timed step feeds the same token and position (the cost of a
    decode step does not depend on them; attention runs over the static cache
    length either way). ``compile``: the step is torch.compile'd after the eager
    warm-ups (see ``compile_step``) and the compiled step is what the graph captures.
    ``mode`` says what ran: "static[+compile][+graph]", with "; compile failed:
    <reason>" appended when compiling raised (uncompiled step timed); "+graph"
    is missing when graph capture failed (reasons are logged).
    """
    dev = next(model.parameters()).device
    max_len = prompt_len + (repeats + 1) * steps + 16 + (COMPILE_WARMUPS if compile else 0)
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
        step()  # warm-up: tuning and cache allocation happen outside capture and tracing
    run, mode, failed = step, "static", None
    if compile:
        run, failed = compile_step(step, compile_mode)
        mode = "static+compile" if failed is None else "static"
    if cuda_graph:
        run, captured = _graphed(run)
        mode += "+graph" if captured else ""
    if failed is not None:
        mode += f"; compile failed: {failed}"

    def loop():
        for _ in range(steps):
            run()

    ms = _events_ms(loop, repeats)
    return batch * steps / (ms / 1e3), mode


def _graphed(fn: Callable[[], object]) -> tuple[Callable[[], object], bool]:
    """(replay of a CUDA graph of ``fn``, True), or (fn, False) when capture fails (logged)."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as err:
        log.warning("CUDA graph capture failed, timing steps without a graph: %s", err)
        torch.cuda.synchronize()
        return fn, False
    return graph.replay, True


def layer_counts(ctx: EvalContext) -> dict[str, int]:
    """Tags saying how many layers ran real kernels and how many were fused (only for runs that asked)."""
    tags = {}
    for key, layers, state in (("real_layers", ctx.real_layers, "real"),
                               ("fused_layers", ctx.fused_layers, "fused")):
        if layers is not None:
            tags[key] = sum(v.startswith(state) for v in layers.values())
    return tags


@register_evaluator("speed")
class Speed(Evaluator):
    """Prefill and decode tokens/s (see module docstring)."""

    needs_gpu = True
    hash_omit_defaults = ("pdl",)  # added later: records measured before it keep their hash

    @dataclass(frozen=True)
    class Config:
        prefill_tokens: int = 2048
        decode_batches: tuple[int, ...] = (1, 16)
        decode_steps: int = 128
        prompt_len: int = 32
        cuda_graph: bool = True
        repeats: int = 3
        compile: bool = False  # torch.compile the decode step and prefill forward (then graph-capture)
        compile_mode: str = "default"  # one of COMPILE_MODES
        pdl: bool = False  # programmatic dependent launch (sm_90+): inductor's kernels and the W4 GEMV

        def __post_init__(self):
            if self.compile_mode not in COMPILE_MODES:
                raise ConfigError(f"eval.speed.compile_mode={self.compile_mode!r} is not valid; "
                                 f"valid: {COMPILE_MODES}")

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> list[MetricRow]:
        c = self.config
        names = ["prefill_tok_s"] + [f"decode_tok_s_b{b}" for b in c.decode_batches]
        if not torch.cuda.is_available() or next(model.parameters()).device.type != "cuda":
            return [MetricRow(n, None, unavailable="no CUDA device", tags=layer_counts(ctx)) for n in names]
        tags = dict(device=torch.cuda.get_device_name(), cuda_graph=c.cuda_graph, compile=c.compile, pdl=c.pdl)
        with pdl_mode(c.pdl):
            tps, mode = measure_prefill_mode(model, c.prefill_tokens, c.repeats, compile=c.compile,
                                             compile_mode=c.compile_mode)
            rows = [MetricRow("prefill_tok_s", tps, tags=dict(tags, tokens=c.prefill_tokens, mode=mode))]
            for b in c.decode_batches:
                tps, mode = measure_decode(model, b, c.decode_steps, c.prompt_len, c.cuda_graph, c.repeats,
                                           c.compile, c.compile_mode)
                rows.append(MetricRow(f"decode_tok_s_b{b}", tps,
                                      tags=dict(tags, batch=b, steps=c.decode_steps, mode=mode)))
        for r in rows:
            r.tags.update(layer_counts(ctx))
        return rows
