"""The ``bitsweep`` command line.

    bitsweep                         the quickstart sweep (= bitsweep run experiment=quickstart)
    bitsweep run [OVERRIDES] [-m]    one run, or a Hydra multirun with -m
    bitsweep leaderboard [--store DIR] [--out DIR]
    bitsweep methods                 registered methods and their config fields
    bitsweep zoo [list | train NAME] the project's own models
    bitsweep bench kernels [...]     the Triton kernel benchmark grid

User mistakes (unknown method / model / evaluator / experiment / launcher) are
reported in one line naming the bad value and the valid choices, exit code 2,
before Hydra starts. A sweep exits non-zero if any of its runs failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

from bitsweep.methods.core.registry import did_you_mean

GROUPS = {"model": "model", "method": "method", "quant": "quant spec", "eval": "evaluator",
          "data": "dataset", "experiment": "experiment", "launcher": "launcher"}

USAGE = __doc__


def group_options(group: str) -> list[str]:
    from bitsweep.harness.app import conf_dir

    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def _values(raw: str) -> list[str]:
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
    return [v.strip() for v in raw.split(",") if v.strip()]


def check_overrides(argv: list[str]) -> str | None:
    """One-line error for an unknown config-group option, else None."""
    from bitsweep.harness.run import TOP_LEVEL_KEYS

    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, raw = arg.partition("=")
        key = key.lstrip("+~")
        top = key.split(".")[0]
        known = set(TOP_LEVEL_KEYS) | set(GROUPS) | {"hydra"}
        if top not in known:
            return (f"unknown config key '{top}' ({arg}); valid: {', '.join(sorted(known))}"
                    + did_you_mean(top, sorted(known)))
        if key not in GROUPS or "(" in raw or raw in ("null", ""):
            continue
        valid = group_options(key)
        for v in _values(raw):
            if v not in valid:
                return (f"unknown {GROUPS[key]} '{v}' ({key}={raw}); valid: {', '.join(valid)}"
                        + did_you_mean(v, valid))
    return None


def cmd_run(argv: list[str]) -> int:
    err = check_overrides(argv)
    if err:
        print(f"bitsweep: error: {err}", file=sys.stderr)
        return 2
    from bitsweep.harness.app import hydra_main

    summary = Path(tempfile.mkdtemp(prefix="bitsweep-")) / "summary.json"
    os.environ.setdefault("BITSWEEP_SWEEP_ID", uuid.uuid4().hex[:12])
    os.environ["BITSWEEP_SUMMARY"] = str(summary)
    try:
        hydra_main(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code) if isinstance(exc.code, int) else 1
    if summary.exists():
        counts = json.loads(summary.read_text())
        if counts["failed"]:
            print(f"bitsweep: {counts['failed']} of {counts['records']} records failed "
                  f"(see the leaderboard's failed runs)", file=sys.stderr)
            return 1
    return 0


def cmd_leaderboard(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bitsweep leaderboard",
                                description="Regenerate leaderboard.{md,csv,html} from a results store.")
    p.add_argument("--store", default="results/store", help="folder of run records (default: results/store)")
    p.add_argument("--out", default=None, help="output folder (default: the store's parent)")
    p.add_argument("--title", default="bitsweep leaderboard")
    a = p.parse_args(argv)
    if not Path(a.store).is_dir():
        print(f"bitsweep: error: store '{a.store}' does not exist", file=sys.stderr)
        return 2
    from bitsweep.harness.leaderboard import build_leaderboard

    res = build_leaderboard(a.store, a.out or Path(a.store).parent, a.title)
    print(res["markdown"])
    print(f"written to {res['dir']}/leaderboard.{{md,csv,html}}")
    return 0


def cmd_methods(argv: list[str]) -> int:
    from bitsweep import methods

    for name in methods.METHODS.names():
        cls = methods.METHODS.get(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        print(f"{name}: {doc[0] if doc else ''}")
        for field, ftype, default in methods.method_fields(name):
            if field == "name":
                continue
            print(f"    {field}: {ftype} = {default!r}")
    return 0


def cmd_zoo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bitsweep zoo", description="List or train the project's own models.")
    sub = p.add_subparsers(dest="action")
    sub.add_parser("list", help="list zoo models (default)")
    t = sub.add_parser("train", help="train a zoo model (see its MODEL_CARD.md for the recipe)")
    t.add_argument("name")
    t.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to bitsweep.harness.zoo.train")
    a = p.parse_args(argv)
    from bitsweep.harness import zoo

    if a.action == "train":
        from bitsweep.harness.zoo import train as zoo_train
        return zoo_train.main([a.name] + a.rest) or 0
    for m in zoo.list_models():
        state = "trained" if m.get("trained") else "not trained"
        ppl = f", test ppl {m['test_ppl']:.2f}" if m.get("test_ppl") else ""
        print(f"{m['name']}: {m.get('params', 0) / 1e6:.2f}M params ({state}{ppl}) {m.get('path', '')}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    if not argv or argv[0] != "kernels":
        print("bitsweep: error: usage: bitsweep bench kernels [options]; valid benches: kernels",
              file=sys.stderr)
        return 2
    from bitsweep.kernels import bench

    return bench.main(argv[1:]) or 0


COMMANDS = {"run": cmd_run, "leaderboard": cmd_leaderboard, "methods": cmd_methods,
            "zoo": cmd_zoo, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return cmd_run(["experiment=quickstart"])
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd = argv[0]
    if cmd not in COMMANDS:
        if "=" in cmd or cmd.startswith("-"):  # bare overrides: treat as `run`
            return cmd_run(argv)
        print(f"bitsweep: error: unknown command '{cmd}'; valid: {', '.join(COMMANDS)}"
              + did_you_mean(cmd, list(COMMANDS)), file=sys.stderr)
        return 2
    return COMMANDS[cmd](argv[1:])


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
