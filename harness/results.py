"""Results store: one JSON record per (run x evaluator), written atomically.

A record is keyed by ``config_hash``: the SHA-256 of the canonical JSON of the
run's *identity* -- everything that changes numbers (model identity, method
config with version, quant spec, calibration data when the method uses it,
evaluator config, seed, dtype, corpus fingerprint) and nothing that doesn't
(paths, launcher, device placement, timestamps). Dict key order never matters.

Files: ``<store>/<config_hash>.json`` (tmp file + ``os.replace``, so a crash
never leaves half a record). A record with ``status == "ok"`` makes a re-run
skip that work (resume); failed records are retried.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

RECORD_FIELDS = (
    "run_id", "config_hash", "status", "error", "model", "method", "method_version", "quant",
    "quant_label", "evaluator", "metrics", "effective_bits", "wall_s", "peak_mem", "device",
    "git", "versions", "started_at",
)


def canonical(obj: Any) -> Any:
    """JSON-able canonical form: dataclasses -> dicts, tuples -> lists, floats kept."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return canonical(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def config_hash(identity: dict) -> str:
    blob = json.dumps(canonical(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(canonical(data), f, indent=1, sort_keys=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    """A folder of run records."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, config_hash: str) -> Path:
        return self.root / f"{config_hash}.json"

    def get(self, config_hash: str) -> dict | None:
        p = self.path(config_hash)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None

    def is_done(self, config_hash: str) -> bool:
        rec = self.get(config_hash)
        return rec is not None and rec.get("status") == "ok"

    def put(self, record: dict) -> Path:
        p = self.path(record["config_hash"])
        atomic_write_json(p, record)
        return p

    def records(self) -> Iterator[dict]:
        if not self.root.exists():
            return
        for p in sorted(self.root.glob("*.json")):
            try:
                yield json.loads(p.read_text())
            except json.JSONDecodeError:
                continue


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_info(repo: Path | None = None) -> dict:
    """Commit sha and dirty flag of the source tree (None outside a git checkout)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                     "--untracked-files=no"], capture_output=True, text=True,
                                    timeout=10).stdout.strip())
        return {"sha": sha, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("bitsweep", "torch", "transformers", "triton", "lm_eval", "datasets", "hydra-core"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
