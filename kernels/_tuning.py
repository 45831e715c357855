"""Config selection for bitsweep kernels: timed once per shape on CUDA, fixed under the interpreter.

``tuned(name, key, fixed, candidates, launch)`` returns a config dict. Under
TRITON_INTERPRET=1 or without CUDA it returns ``fixed`` (the interpreter cannot
time anything). On CUDA it times every candidate with
``bitsweep.kernels._timing.gpu_time_us`` (CUDA-graph replays, L2 flushed by a read
pass so no dirty lines are written back during the timed call, no host
overhead: do_bench's host-inclusive numbers were noise for 10-50 us kernels),
or, when the caller passes ``copies`` > 1 launchers (one per copy of the
inputs, together over the L2 size), with ``gpu_time_rotating_us`` (a graph
calling them round-robin: back-to-back reads from memory, as consecutive layers
of a decode step run, and the method bitsweep.kernels.bench reports). The
``RETIME`` fastest are timed again with more replays and the best median wins
(one noisy sample picked a config 0.4 us slower than the best on the H100,
kernels/NOTES.md run 7). The winner is cached
it in memory and in a JSON file (``BITSWEEP_KERNEL_CACHE``, default
``~/.cache/bitsweep/kernel_configs.json``; set it to an empty string to disable).
BITSWEEP_TUNE=0 skips timing and uses a heuristic default.
Never call it for the first time inside CUDA-graph capture: warm up first.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
from typing import Callable

import torch
import triton

from bitsweep.kernels._timing import gpu_time_rotating_us, gpu_time_us

log = logging.getLogger(__name__)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _cache_path() -> pathlib.Path | None:
    raw = os.environ.get("BITSWEEP_KERNEL_CACHE")
    if raw == "":
        return None
    return pathlib.Path(raw) if raw else pathlib.Path.home() / ".cache" / "bitsweep" / "kernel_configs.json"


@functools.lru_cache(maxsize=1)
def _cache() -> dict:
    path = _cache_path()
    if path is not None and path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("ignoring unreadable kernel config cache %s: %s", path, err)
    return {}


def _save() -> None:
    path = _cache_path()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_cache(), indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as err:
        log.warning("cannot write kernel config cache %s: %s", path, err)


@functools.lru_cache(maxsize=8)
def _device_tag(index: int) -> str:
    return f"{torch.cuda.get_device_name(index)}|triton{triton.__version__}"


def tuning_enabled() -> bool:
    return os.environ.get("BITSWEEP_TUNE", "1") not in ("", "0")


RETIME = 3  # candidates timed a second time, with more replays


def _time(cfg: dict, launch: Callable[[dict], object], copies: list[Callable[[dict], object]] | None,
          more: bool) -> float:
    """Microseconds of one call with config cfg (rotating over ``copies`` when given)."""
    if copies:
        return gpu_time_rotating_us([lambda c=c: c(cfg) for c in copies], n=max(24, 2 * len(copies)) * (2 if more else 1),
                                    reps=7 if more else 3)
    return gpu_time_us(lambda: launch(cfg), n=10 if more else 5, reps=5 if more else 3, flush="read")


def tuned(name: str, key: tuple, fixed: dict, default: dict, candidates: list[dict],
          launch: Callable[[dict], object], copies: Callable[[], list[Callable[[dict], object]]] | None = None,
          margin: float = 0.0) -> dict:
    """The best config for (name, key) among candidates.

    ``fixed`` under the interpreter; ``default`` (a heuristic) on CUDA when
    BITSWEEP_TUNE=0 and nothing is cached. ``copies``: called once, only when tuning, it returns
    launchers ``f(cfg)`` on distinct copies of the inputs (rotating timer; see module docstring).
    ``margin``: the first candidate (an established path) is kept unless another one is timed at
    least this fraction faster, so run-to-run spread does not swap in a path that is not really better.
    """
    if interpreting() or not torch.cuda.is_available():
        return fixed
    full = f"{name}|{_device_tag(torch.cuda.current_device())}|" + "|".join(map(str, key))
    cache = _cache()
    if full in cache:
        return cache[full]
    if not tuning_enabled():
        return default
    launchers = copies() if copies is not None else None
    timed = []
    for cfg in candidates:
        try:
            timed.append((_time(cfg, launch, launchers, False), cfg))
        except (triton.runtime.errors.OutOfResources, triton.compiler.errors.CompilationError,
                RuntimeError) as err:
            log.debug("config %s failed for %s: %s", cfg, full, err)
    timed.sort(key=lambda t: t[0])
    if len(timed) > 1:  # re-time the front runners: one noisy sample must not decide
        front = [cfg for _, cfg in timed[:RETIME]]
        if margin > 0 and candidates and candidates[0] not in front and any(c is candidates[0] for _, c in timed):
            front.append(candidates[0])
        timed = sorted(((_time(cfg, launch, launchers, True), cfg) for cfg in front), key=lambda t: t[0])
        inc = [t for t in timed if t[1] is candidates[0]]
        if margin > 0 and inc and timed[0][1] is not candidates[0] and timed[0][0] > inc[0][0] * (1 - margin):
            timed = inc  # not faster by the margin: keep the established path
    del launchers
    if not timed:
        log.warning("no candidate config ran for %s; using the fixed config", full)
        best, best_us = fixed, float("nan")
    else:
        best_us, best = timed[0]
    log.info("tuned %s -> %s (%.2f us)", full, best, best_us)
    cache[full] = best
    _save()
    return best
