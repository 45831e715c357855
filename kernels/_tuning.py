"""Config selection for bitsweep kernels: timed once per shape on CUDA, fixed under the interpreter.

``tuned(name, key, fixed, candidates, launch)`` returns a config dict. Under
TRITON_INTERPRET=1 or without CUDA it returns ``fixed`` (the interpreter cannot
time anything). On CUDA it times every candidate with
``kernels._timing.gpu_time_us`` (CUDA-graph replays, L2 flushed by a read
pass so no dirty lines are written back during the timed call, no host
overhead: do_bench's host-inclusive numbers were noise for 10-50 us kernels),
keeps the fastest, and caches
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

from kernels._timing import gpu_time_us

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


def tuned(name: str, key: tuple, fixed: dict, default: dict, candidates: list[dict],
          launch: Callable[[dict], object]) -> dict:
    """The best config for (name, key) among candidates.

    ``fixed`` under the interpreter; ``default`` (a heuristic) on CUDA when
    BITSWEEP_TUNE=0 and nothing is cached.
    """
    if interpreting() or not torch.cuda.is_available():
        return fixed
    full = f"{name}|{_device_tag(torch.cuda.current_device())}|" + "|".join(map(str, key))
    cache = _cache()
    if full in cache:
        return cache[full]
    if not tuning_enabled():
        return default
    best, best_ms = None, float("inf")
    for cfg in candidates:
        try:
            ms = gpu_time_us(lambda: launch(cfg), n=5, reps=3, flush="read") / 1e3
        except (triton.runtime.errors.OutOfResources, triton.compiler.errors.CompilationError,
                RuntimeError) as err:
            log.debug("config %s failed for %s: %s", cfg, full, err)
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        log.warning("no candidate config ran for %s; using the fixed config", full)
        best = fixed
    log.info("tuned %s -> %s (%.2f us)", full, best, best_ms * 1e3)
    cache[full] = best
    _save()
    return best
