"""Hydra entry: ``@hydra.main`` around :func:`bitsweep.harness.run.run`, and the sweep callback.

``task(cfg)`` resolves the Hydra config to a plain dict and calls ``run``. In a
single run a ``ConfigError`` (user mistake) is printed as one line and exits 2;
in a multirun it becomes a failed record and the sweep continues. The
``SweepCallback`` regenerates the leaderboard at the end of a multirun when
``leaderboard.out`` is set.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bitsweep.methods.core.registry import ConfigError

log = logging.getLogger("bitsweep")


def conf_dir() -> Path:
    """The config tree ``bitsweep.conf`` (``conf/`` in a checkout, packaged beside ``harness``)."""
    import importlib.util

    spec = importlib.util.find_spec("bitsweep.conf")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "config.yaml").exists():
            return Path(loc)
    raise FileNotFoundError("bitsweep config tree not found (package bitsweep.conf); reinstall bitsweep")


def to_plain(cfg: DictConfig) -> dict:
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)


def task(cfg: DictConfig) -> int:
    from bitsweep.harness.run import run

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        records = run(to_plain(cfg))
    except ConfigError as exc:
        if not multirun:
            print(f"bitsweep: error: {exc}", file=sys.stderr)
            sys.exit(2)
        _record_plan_failure(cfg, exc)
        return 1
    failed = [r for r in records if r.get("status") == "failed"]
    for r in records:
        shown = [m for m in r.get("metrics", []) if m.get("value") is not None][:3]
        vals = ", ".join(f"{m['name']}={m['value']:.4g}" for m in shown)
        state = r.get("status_now", r.get("status"))
        log.info("[%s] %s %s %s %s %s", state, r.get("model"), r.get("method"), r.get("quant_label"),
                 r.get("evaluator"), vals or r.get("error") or "")
    if failed and not multirun:
        err = str(failed[0].get("error"))
        if err.startswith("ConfigError: "):  # a user mistake found once the model was loaded
            print(f"bitsweep: error: {err[len('ConfigError: '):]}", file=sys.stderr)
            sys.exit(2)
        print(f"bitsweep: run failed (recorded): {err}", file=sys.stderr)
        sys.exit(1)
    return 1 if failed else 0


def _record_plan_failure(cfg: DictConfig, exc: Exception) -> None:
    """A multirun job whose config is invalid: record it as failed so the sweep reports it."""
    import os
    import uuid

    from bitsweep.harness.results import Store, config_hash, now_iso
    plain = to_plain(cfg)
    ident = {k: plain.get(k) for k in ("model", "method", "quant", "eval", "data", "seed")}
    rec = {"run_id": uuid.uuid4().hex[:12], "config_hash": "invalid-" + config_hash(ident),
           "status": "failed", "error": f"ConfigError: {exc}",
           "model": (plain.get("model") or {}).get("name"),
           "method": (plain.get("method") or {}).get("name"), "quant_label": _spec_label(plain),
           "evaluator": ",".join(plain.get("eval") or {}), "metrics": [],
           "sweep_id": os.environ.get("BITSWEEP_SWEEP_ID"), "started_at": now_iso()}
    Store(plain.get("store", "results/store")).put(rec)
    log.error("invalid config in sweep: %s", exc)


def _spec_label(plain: dict) -> str:
    """The quant label of a config whose run was rejected (or 'invalid' if the spec is)."""
    from bitsweep.methods import QuantSpec
    try:
        return QuantSpec.from_dict(plain.get("quant")).label()
    except ConfigError:
        return "invalid"


class SweepCallback(Callback):
    """At the end of a multirun: build the leaderboard if ``leaderboard.out`` is set."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        write_sweep_summary(config)
        out = OmegaConf.select(config, "leaderboard.out")
        if not out:
            return
        from bitsweep.harness.leaderboard import build_leaderboard
        title = OmegaConf.select(config, "leaderboard.title") or "bitsweep leaderboard"
        res = build_leaderboard(OmegaConf.select(config, "store"), out, title)
        print("\n" + res["markdown"])
        print(f"leaderboard written to {Path(out) / 'leaderboard'}.{{md,csv,html}}")


def write_sweep_summary(config: DictConfig) -> None:
    """Count this sweep's failed records (by BITSWEEP_SWEEP_ID) into BITSWEEP_SUMMARY."""
    import json
    import os

    from bitsweep.harness.results import Store
    sweep_id, target = os.environ.get("BITSWEEP_SWEEP_ID"), os.environ.get("BITSWEEP_SUMMARY")
    if not sweep_id or not target:
        return
    recs = [r for r in Store(OmegaConf.select(config, "store")).records() if r.get("sweep_id") == sweep_id]
    failed = [r for r in recs if r.get("status") == "failed"]
    Path(target).write_text(json.dumps({"records": len(recs), "failed": len(failed)}))


def hydra_main(argv: list[str]) -> None:
    """Run Hydra with ``argv`` as its command line (overrides, -m, --cfg ...)."""
    import hydra

    sys.argv = ["bitsweep"] + argv
    hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(task)()
