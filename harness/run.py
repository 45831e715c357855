"""One run: resolved config -> records (one per evaluator). ``run(cfg)`` is Hydra-free.

Pipeline::

    plan (validate everything, hash each evaluator's identity)
      -> all evaluators already recorded ok?  skip (resume)
      -> load model + tokenizer         (bitsweep.harness.models)
      -> calibration batches if needed  (bitsweep.harness.data)
      -> method.prepare / calibrate / convert   (methods registry)
      -> optional real mode             (bitsweep.methods.core.real.to_real)
      -> optional sibling fusion        (bitsweep.methods.core.fuse.fuse_siblings: q/k/v, gate/up)
      -> each pending evaluator         (bitsweep.harness.eval)
      -> record                         (bitsweep.harness.results, atomic JSON)

A failure anywhere after planning becomes a ``failed`` record (with the error)
for every pending evaluator, never a crashed sweep. Planning errors
(``ConfigError``: unknown names, invalid spec) are raised before any work.

``fuse: true`` (after ``real``) fuses sibling linears into one GEMM each
(``bitsweep.methods.core.fuse``): real W4 modules in real mode, plain ``nn.Linear`` in the
16-bit baseline (so the baseline it is compared with is fused too); a quantized
run must also set ``real: true`` (fake QuantLinears have no fused form). It is
part of the config hash only when true: fusion is meant to change speed, but a
GEMM of another shape may also change the last bits of the outputs, so fused
and unfused records must not share a hash; leaving the key out when false keeps
every earlier record's hash valid. The record's ``fused_layers`` says what fused.
"""
from __future__ import annotations

import logging
import os
import random
import resource
import time
import traceback
import uuid
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bitsweep.harness.eval.base import EvalContext, Evaluator, build_evaluator
from bitsweep.harness.models import ModelConfig, load_model, model_config, resolve_device, resolve_dtype
from bitsweep.harness.results import Store, config_hash, git_info, now_iso, package_versions
from bitsweep.methods import QuantSpec, build_method
from bitsweep.methods.core.kvcache import apply_activation_and_kv, validate_activation_kv
from bitsweep.methods.core.kvcache import needs_calibration as kv_needs_calibration
from bitsweep.methods.core.qmodules import check_shapes, effective_bits
from bitsweep.methods.core.registry import ConfigError, Method, build_dataclass, did_you_mean

log = logging.getLogger(__name__)

TOP_LEVEL_KEYS = ("model", "method", "quant", "data", "eval", "seed", "store", "device",
                  "real", "fuse", "leaderboard")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "stdlib"
    split: str = "train"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0


@dataclass
class RunPlan:
    model: ModelConfig
    method: Method
    spec: QuantSpec
    data: DataConfig
    evaluators: dict[str, Evaluator]
    eval_cfg: dict[str, dict]
    seed: int
    store: Store
    device: str
    dtype: torch.dtype
    real: bool
    fuse: bool = False
    hashes: dict[str, str] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.method.config.name == "none"


def check_top_level(cfg: dict) -> None:
    unknown = sorted(set(cfg) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level config key '{unknown[0]}'; valid: "
                          f"{', '.join(TOP_LEVEL_KEYS)}" + did_you_mean(unknown[0], list(TOP_LEVEL_KEYS)))


def plan_run(cfg: dict) -> RunPlan:
    """Validate the resolved config and compute every evaluator's config hash."""
    check_top_level(cfg)
    model = model_config(cfg.get("model") or {})
    method_cfg = dict(cfg.get("method") or {})
    is_none = method_cfg.get("name") == "none"
    spec = QuantSpec() if is_none else QuantSpec.from_dict(cfg.get("quant"))
    method = build_method(method_cfg, spec)
    if not is_none:
        validate_activation_kv(spec)
    data = build_dataclass(DataConfig, cfg.get("data"), "data")
    eval_cfg = {k: dict(v or {}) for k, v in (cfg.get("eval") or {}).items()}
    if not eval_cfg:
        raise ConfigError("no evaluator selected (eval=...); e.g. eval=ppl")
    evaluators = {name: build_evaluator(name, vals) for name, vals in eval_cfg.items()}
    device = resolve_device(str(cfg.get("device", "auto")))
    plan = RunPlan(model, method, spec, data, evaluators, eval_cfg, int(cfg.get("seed", 0)),
                   Store(cfg.get("store", "results/store")), device,
                   resolve_dtype(model, device), bool(cfg.get("real", False)), bool(cfg.get("fuse", False)))
    if plan.fuse and not plan.real and not plan.is_baseline:
        raise ConfigError("fuse=true fuses real quantized modules (and the baseline's nn.Linear): "
                          "set real=true too (fake QuantLinear layers have no fused form)")
    if method.needs_calibration and plan.data.nsamples < 1:
        raise ConfigError(f"method '{method.config.name}' needs calibration data: "
                          f"data.nsamples={plan.data.nsamples} (must be >= 1)")
    plan.identity = _identity(plan)
    plan.hashes = {name: config_hash({**plan.identity, "evaluator": name,
                                      "eval": _eval_identity(ev)})
                   for name, ev in evaluators.items()}
    return plan


def _eval_identity(ev: Evaluator) -> dict:
    """Evaluator config plus its protocol version (a protocol change invalidates old records).

    Fields an evaluator lists in ``hash_omit_defaults`` (options added after records existed) are left
    out while they hold their default, so earlier records keep their hash."""
    ident = asdict(ev.config)
    defaults = {f.name: f.default for f in dataclasses.fields(ev.config)}
    for key in getattr(ev, "hash_omit_defaults", ()):
        if ident.get(key) == defaults.get(key):
            ident.pop(key, None)
    return {**ident, "_version": getattr(ev, "version", 1)}


def method_label(config) -> str:
    """Method name plus the fields that differ from its registered defaults, e.g.
    ``rotation[base=gptq]``, so variants of one method get their own leaderboard rows."""
    default = type(config)()
    diff = []
    for key, val in asdict(config).items():
        if key in ("name", "version") or getattr(default, key) == getattr(config, key):
            continue
        if isinstance(val, dict):
            val = ",".join(f"{k}={v}" for k, v in sorted(val.items())) or "{}"
            diff.append(f"{key}={{{val}}}")
        else:
            diff.append(f"{key}={val}")
    return config.name + (f"[{'; '.join(diff)}]" if diff else "")


def _uses_stdlib(plan: RunPlan) -> bool:
    datasets = [d for ev in plan.evaluators.values() for d in getattr(ev.config, "datasets", ())]
    return (plan.model.source in ("zoo", "tiny") or "stdlib" in datasets
            or (plan.method.needs_calibration and plan.data.dataset == "stdlib"))


def _identity(plan: RunPlan) -> dict:
    from bitsweep.harness.data import corpus_fingerprint

    ident = {
        "model": plan.model.identity(),
        "method": asdict(plan.method.config),
        "quant": None if plan.is_baseline else asdict(plan.spec),
        "data": asdict(plan.data) if (plan.method.needs_calibration
                                      or kv_needs_calibration(plan.spec)) else None,
        "seed": plan.seed,
        "dtype": str(plan.dtype),
        "real": plan.real and not plan.is_baseline,
        "corpus": corpus_fingerprint() if _uses_stdlib(plan) else None,
    }
    if plan.fuse:  # absent when false: hashes of unfused runs stay what they were
        ident["fuse"] = True
    return ident


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass


def run(cfg: dict) -> list[dict]:
    """Run (or skip) one configuration; returns the records written or found."""
    plan = plan_run(cfg)
    pending = [n for n in plan.evaluators if not plan.store.is_done(plan.hashes[n])]
    label = f"{plan.model.label()} | {plan.method.config.name} | {_quant_label(plan)}"
    if not pending:
        log.info("skip (already recorded): %s", label)
        return [dict(plan.store.get(h), status_now="skipped") for h in plan.hashes.values()]
    log.info("run: %s -> %s", label, ", ".join(pending))
    base = _base_record(plan)
    t0 = time.time()
    records = []
    try:
        model, tok, info, qinfo = _quantized_model(plan)
    except Exception as exc:  # recorded, not raised: the sweep goes on
        log.error("run failed: %s: %s", label, exc)
        return [_write(plan, base, n, "failed", error=exc, wall=time.time() - t0) for n in pending]
    for name in pending:
        ctx = EvalContext(device=plan.device, dtype=plan.dtype, run_dir=os.getcwd(),
                          seed=plan.seed, model_info=info, real_layers=qinfo.get("real_layers"),
                          fused_layers=qinfo.get("fused_layers"))
        t1 = time.time()
        try:
            rows = plan.evaluators[name].evaluate(model, tok, ctx)
            rec = _write(plan, base, name, "ok", rows=rows, info=info, qinfo=qinfo,
                         extra=ctx.record_extra, wall=time.time() - t1 + qinfo["quantize_s"])
        except Exception as exc:
            log.error("evaluator %s failed on %s: %s", name, label, exc)
            rec = _write(plan, base, name, "failed", error=exc, info=info, qinfo=qinfo,
                         wall=time.time() - t1)
        records.append(rec)
    return records


def _quantized_model(plan: RunPlan):
    seed_everything(plan.seed)
    if plan.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model, tok, info = load_model(plan.model, plan.device, plan.dtype)
    t0 = time.time()
    check_shapes(model, plan.spec)
    batches = None
    if plan.method.needs_calibration or kv_needs_calibration(plan.spec):
        from bitsweep.harness.data import calibration_batches
        from bitsweep.harness.eval.ppl import model_max_length
        seqlen = min(plan.data.seqlen, model_max_length(model) or plan.data.seqlen)
        batches = calibration_batches(plan.data.dataset, tok, plan.data.nsamples, seqlen,
                                      plan.data.seed, plan.data.split)
    plan.method.prepare(model)
    plan.method.calibrate(model, batches)
    model = plan.method.convert(model) or model
    if not plan.is_baseline:  # activations / KV cache, for every weight method
        model = apply_activation_and_kv(model, plan.spec, batches)
    qinfo: dict[str, Any] = {"effective_bits": effective_bits(model) if not plan.is_baseline else 16.0}
    if plan.real and not plan.is_baseline:
        from bitsweep.methods.core.real import to_real
        layers = to_real(model)
        qinfo["real_layers"] = layers
        qinfo["n_real"] = sum(v == "real" for v in layers.values())
    if plan.fuse:
        from bitsweep.methods.core.fuse import fuse_siblings
        fused = fuse_siblings(model)
        qinfo["fused_layers"] = fused
        qinfo["n_fused"] = sum(v.startswith("fused") for v in fused.values())
    qinfo["quantize_s"] = time.time() - t0
    return model, tok, info, qinfo


def _quant_label(plan: RunPlan) -> str:
    return "W16" if plan.is_baseline else plan.spec.label()


def _base_record(plan: RunPlan) -> dict:
    return {
        "model": plan.model.label(), "model_cfg": asdict(plan.model),
        "method": plan.method.config.name, "method_version": plan.method.config.version,
        "method_label": method_label(plan.method.config),
        "method_cfg": asdict(plan.method.config),
        "quant": plan.identity["quant"], "quant_label": _quant_label(plan),
        "data": plan.identity["data"], "seed": plan.seed, "dtype": str(plan.dtype),
        "real": plan.identity["real"], "fuse": plan.fuse, "corpus_fingerprint": plan.identity["corpus"],
        "device": _device_name(plan.device), "git": git_info(), "versions": package_versions(),
        "sweep_id": os.environ.get("BITSWEEP_SWEEP_ID"), "started_at": now_iso(),
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.get_device_name()}"
    return "cpu"


def _peak_mem(device: str) -> dict:
    out = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.startswith("cuda"):
        out["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _write(plan: RunPlan, base: dict, name: str, status: str, rows=None, error=None,
           info=None, qinfo=None, extra=None, wall: float = 0.0) -> dict:
    qinfo = qinfo or {}
    rec = {
        "run_id": uuid.uuid4().hex[:12], "config_hash": plan.hashes[name], "status": status,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "traceback": None if error is None else traceback.format_exc(limit=8),
        **base, "evaluator": name, "eval_cfg": _eval_identity(plan.evaluators[name]),
        "metrics": [r.to_dict() for r in rows or []],
        "effective_bits": qinfo.get("effective_bits"),
        "quantize_s": qinfo.get("quantize_s"), "wall_s": round(wall, 3),
        "peak_mem": _peak_mem(plan.device), "model_info": info or {},
        "real_layers": qinfo.get("real_layers"), "fused_layers": qinfo.get("fused_layers"), "extra": extra or {},
    }
    plan.store.put(rec)
    return rec
