"""GPU-side timing without host launch overhead: CUDA-graph replays with an L2 flush per call.

``gpu_time_us(fn)`` captures ``n`` x (flush L2, fn()) in one CUDA graph and
``n`` x (flush L2) in another, replays each ``reps`` times and returns
(median(A) - median(B)) / n in microseconds: the device time of one call
with cold L2, without the Python/launch overhead that ``do_bench`` includes
when one call's host cost exceeds the flush (kernels/NOTES.md, run 2: a 12 us
kernel behind ~50 us of host work measured as noise between 57 and 211 us).
fn must be graph-capturable (no host syncs); it is called once first
(warm-up: compilation and config tuning happen outside capture). If capture
fails, falls back to ``triton.testing.do_bench`` (median, L2 flushed) and logs why.

``flush`` picks how L2 is emptied: "write" (zero a 256 MB buffer, as do_bench does: it leaves
~50 MB of dirty lines whose write-back then competes with the timed kernel's reads) or "read"
(sum the buffer: clean lines). ``gpu_time_rotating_us(fns)`` uses no flush at all: the graph
calls fns[0], fns[1], ... in turn, each on its own copy of the inputs (together larger than
L2), as consecutive layers of a model do; kernels/NOTES.md (run 5) compares the three.
"""
from __future__ import annotations

import logging
import statistics
from typing import Callable

import torch

log = logging.getLogger(__name__)

FLUSH_BYTES = 256 * 2 ** 20


def _replay_ms(graph: torch.cuda.CUDAGraph, reps: int) -> float:
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _flusher(kind: str) -> Callable[[], object]:
    buf = torch.ones(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    if kind == "write":
        return buf.zero_
    if kind == "read":
        out = torch.empty((), dtype=torch.int64, device="cuda")
        return lambda: torch.sum(buf, dim=0, out=out)
    raise ValueError(f"flush={kind!r}; valid: 'write', 'read'")


def gpu_time_us(fn: Callable[[], object], n: int = 20, reps: int = 7, flush: str = "write") -> float:
    """Median device microseconds of one fn() call with L2 flushed before it (see module doc)."""
    fn()
    torch.cuda.synchronize()
    flush_fn = _flusher(flush)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                flush_fn()
                fn()
        torch.cuda.current_stream().wait_stream(side)
        g_fn, g_flush = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(g_fn):
            for _ in range(n):
                flush_fn()
                fn()
        with torch.cuda.graph(g_flush):
            for _ in range(n):
                flush_fn()
        _replay_ms(g_fn, 1)
        _replay_ms(g_flush, 1)
        t_fn, t_flush = _replay_ms(g_fn, reps), _replay_ms(g_flush, reps)
        return max(t_fn - t_flush, 0.0) * 1e3 / n
    except RuntimeError as err:
        log.warning("CUDA-graph timing failed (%s); falling back to do_bench", err)
        torch.cuda.synchronize()
        import triton.testing
        return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3


def gpu_time_rotating_us(fns: list[Callable[[], object]], n: int = 40, reps: int = 7) -> float:
    """Median device microseconds per call of a graph calling fns round-robin n times, no flush.

    Each fn must work on its own copy of the inputs, the copies together well over the
    L2 size (50 MB on the H100), so every call reads its operands from memory.
    """
    for fn in fns:
        fn()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(n):
            fns[i % len(fns)]()
    _replay_ms(g, 1)
    return _replay_ms(g, reps) * 1e3 / n
