"""Kernel benchmark grid: ``python -m bitsweep.kernels.bench [--quick] [--groups wo,lowbit,w8a8,act] [--out DIR]``.

Times every bitsweep kernel and torch's own matmul on the same GPU in the same
run as device time, two ways (kernels/_timing.py; medians; host launch overhead
excluded): ``us`` = a CUDA graph calling the kernel round-robin on enough
copies of its inputs (> 400 MB together, so every call reads from memory, as
consecutive layers of a model do; no flush kernel), and ``us_flush`` = graph
replays of (zero a 256 MB buffer, call) minus the flush alone (the earlier
method: the flush leaves ~50 MB of dirty L2 lines whose write-back competes with
the timed call, which adds 1-2 us to a 12 us read; kernels/NOTES.md run 5). Targets
use ``us``. It checks each kernel against its reference on the same inputs, and writes
``<out>/<gpu>.json`` (all rows + targets) and ``<out>/<gpu>.md`` (tables).
Columns: microseconds, effective TB/s (bytes of weights + activations +
outputs, each counted once), % of the measured device copy bandwidth,
TFLOP/s, and the ratio torch_us / kernel_us (> 1: faster than torch).
``bitsweep bench kernels`` calls ``main(argv)``.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time

import torch
import torch.nn.functional as F

from bitsweep.kernels import reference as R
from bitsweep.kernels import weight_only as _wo
from bitsweep.kernels._timing import gpu_time_rotating_us, gpu_time_us
from bitsweep.kernels.packing import random_packed
from bitsweep.kernels.w8a8 import quantize_activation, scaled_mm
from bitsweep.kernels.weight_only import weight_only_linear

log = logging.getLogger(__name__)

SHAPES = [(4096, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]  # (K, N)
MS = [1, 16, 64, 256, 1024, 4096]
GROUPS = ("wo", "lowbit", "w8a8", "act")


ROTATE_BYTES = 400 * 2 ** 20  # input copies per timed kernel: together well over the 50 MB L2


def _bench(make, nbytes: int) -> tuple[float, float]:
    """(rotating-copies us, flush us) of one call; ``make(i)`` returns a call on input copy i."""
    fns = [make(i) for i in range(max(2, min(24, -(-ROTATE_BYTES // max(nbytes, 1)))))]
    rot = gpu_time_rotating_us(fns, n=max(48, len(fns)))
    flush = gpu_time_us(fns[0])
    del fns
    torch.cuda.empty_cache()
    return rot, flush


def _clone_packed(pw):
    import dataclasses
    return dataclasses.replace(pw, qweight=pw.qweight.clone(), scale=pw.scale.clone(), szero=pw.szero.clone())


def _rel(y: torch.Tensor, r: torch.Tensor) -> float:
    y, r = y.float(), r.float()
    if not torch.isfinite(y).all():
        return float("nan")
    return float((y - r).norm() / r.norm().clamp_min(1e-30))


def copy_bandwidth() -> float:
    """Device-to-device copy TB/s (bytes read + written) on 1 GiB."""
    a = torch.empty(2 ** 29, dtype=torch.float16, device="cuda").normal_()
    b = torch.empty_like(a)
    import triton.testing
    us = triton.testing.do_bench(lambda: b.copy_(a), warmup=25, rep=200, return_mode="median") * 1e3
    return 2 * a.numel() * 2 / us / 1e6


class Grid:
    """Accumulates rows, writes results after each one (a killed run keeps what it measured)."""

    def __init__(self, out: pathlib.Path, gpu: str, copy_tbps: float, meta: dict):
        self.out, self.gpu, self.copy = out, gpu, copy_tbps
        self.rows: list[dict] = []
        self.torch_cache: dict[tuple, float] = {}
        self.meta = meta

    def torch_us(self, m: int, k: int, n: int, dtype: torch.dtype) -> tuple[float, float]:
        """(rotating, flush) us of torch's F.linear for this shape (cached per run)."""
        key = (m, k, n, str(dtype))
        if key not in self.torch_cache:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            w0 = torch.randn(n, k, device="cuda", dtype=dtype) * 0.02

            def make(i):
                w = w0 if i == 0 else w0.clone()
                return lambda: F.linear(x, w)
            self.torch_cache[key] = _bench(make, 2 * n * k + 2 * m * (k + n))
        return self.torch_cache[key]

    def add(self, **row) -> None:
        us, m, k, n = row["us"], row["M"], row["K"], row["N"]
        row["tbps"] = row["bytes"] / us / 1e6
        row["pct_copy"] = 100 * row["tbps"] / self.copy
        row["tflops"] = 2 * m * k * n / us / 1e6
        if row.get("torch_us"):
            row["speedup_vs_torch"] = row["torch_us"] / us
        if row.get("torch_us_flush") and row.get("us_flush"):
            row["speedup_vs_torch_flush"] = row["torch_us_flush"] / row["us_flush"]
        self.rows.append(row)
        log.info("%s", {k_: (round(v, 3) if isinstance(v, float) else v) for k_, v in row.items()})
        print(f"{row['kernel']:<22} {row.get('bits', ''):>3} g{row.get('group', '-'):<5} "
              f"M={m:<5} K={k:<6} N={n:<6} {us:9.2f} us {row['tbps']:6.2f} TB/s "
              f"x{row.get('speedup_vs_torch', float('nan')):5.2f} err={row['rel_err']:.1e}", flush=True)
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = dict(gpu=self.gpu, copy_tbps=self.copy, meta=self.meta, rows=self.rows,
                    targets=evaluate_targets(self.rows, self.copy))
        (self.out / f"{self.gpu}.json").write_text(json.dumps(data, indent=1))
        (self.out / f"{self.gpu}.md").write_text(to_markdown(data))


def bench_weight_only(grid: Grid, bits: int, group: int | None, k: int, n: int, m: int,
                      dtype: torch.dtype = torch.float16, path: str | None = None, pdl: bool = False) -> None:
    """One weight-only row. ``pdl``: with programmatic dependent launch (a row of its own, kernel
    ``w<b>a16[pdl]``: back-to-back calls overlap one call's start with the previous one's end, so
    it is not a single-kernel time; every other row runs without PDL)."""
    _wo.USE_PDL = pdl
    try:
        _bench_weight_only(grid, bits, group, k, n, m, dtype, path, pdl)
    finally:
        _wo.USE_PDL = False


def _bench_weight_only(grid, bits, group, k, n, m, dtype, path, pdl) -> None:
    g = group or k
    pw, *_ = random_packed(n, k, bits, g, sym=False, device="cuda", seed=bits * 7 + m)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    y = weight_only_linear(x, pw, path=path)  # tunes on first call
    err = _rel(y, R.weight_only_linear(x, pw))
    nbytes = pw.nbytes() + x.numel() * x.element_size() + m * n * x.element_size()

    def make(i):
        pwi = pw if i == 0 else _clone_packed(pw)
        return lambda: weight_only_linear(x, pwi, path=path)
    us, us_flush = _bench(make, nbytes)
    t_rot, t_flush = grid.torch_us(m, k, n, dtype)
    grid.add(kernel=f"w{bits}a16" + (f"[{path}]" if path else "") + ("[pdl]" if pdl else ""), dtype=str(dtype).split(".")[-1],
             bits=bits, group=group or "ch", M=m, K=k, N=n, us=us, us_flush=us_flush, bytes=nbytes, rel_err=err,
             torch_us=t_rot, torch_us_flush=t_flush)


def bench_scaled_mm(grid: Grid, fmt: str, m: int, k: int, n: int) -> None:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    if fmt == "int8":
        wq, ws = R.quantize_weight_int8(w)
        xq, xs = quantize_activation(x, "int8")
        ref = R.int8_scaled_mm(xq, xs, wq, ws, None, torch.bfloat16)
    else:
        wq, ws = R.quantize_weight_fp8(w)
        xq, xs = quantize_activation(x, "fp8")
        ref = R.fp8_scaled_mm(xq, xs, wq, ws, None, torch.bfloat16)
    y = scaled_mm(xq, xs, wq, ws, None, torch.bfloat16)
    err = _rel(y, ref)
    nbytes = m * k + n * k + 2 * m * n + 4 * (m + n)

    def copies(i):  # (xq, xs, wq, ws) copy i
        return (xq, xs, wq, ws) if i == 0 else (xq.clone(), xs.clone(), wq.clone(), ws.clone())

    def make(i):
        a, sa, b, sb = copies(i)
        return lambda: scaled_mm(a, sa, b, sb, None, torch.bfloat16)

    def make_q(i):
        xi = x if i == 0 else x.clone()
        return lambda: scaled_mm(*quantize_activation(xi, fmt), wq, ws, None, torch.bfloat16)
    us, us_flush = _bench(make, nbytes)
    extra = dict(us_with_act_quant=_bench(make_q, nbytes + 2 * m * k)[0])
    if fmt == "int8":  # torch._int_mm needs M > 16
        def make_t(i):
            a, _, b, _ = copies(i)
            return lambda: torch._int_mm(a, b.t())
        extra["torch_int_mm_us"] = _bench(make_t, nbytes)[0] if m > 16 else None
    else:
        def make_t(i):
            a, sa, b, sb = copies(i)
            return lambda: torch._scaled_mm(a, b.t(), scale_a=sa[:, None], scale_b=sb[None, :],
                                            out_dtype=torch.bfloat16)
        try:
            extra["torch_scaled_mm_us"] = _bench(make_t, nbytes)[0]
        except RuntimeError as err_:
            extra["torch_scaled_mm_us"] = None
            log.warning("torch._scaled_mm unavailable: %s", err_)
    t_rot, t_flush = grid.torch_us(m, k, n, torch.bfloat16)
    grid.add(kernel=f"{fmt}_scaled_mm", dtype="bfloat16", bits=8, group="ch", M=m, K=k, N=n, us=us,
             us_flush=us_flush, bytes=nbytes, rel_err=err, torch_us=t_rot, torch_us_flush=t_flush, **extra)


def bench_act_quant(grid: Grid, fmt: str, m: int, k: int) -> None:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    q, s = quantize_activation(x, fmt)
    rq, rs = (R.quantize_activation_int8 if fmt == "int8" else R.quantize_activation_fp8)(x)
    err = _rel(q.float() * s[:, None], rq.float() * rs[:, None])

    def make(i):
        xi = x if i == 0 else x.clone()
        return lambda: quantize_activation(xi, fmt)
    us, us_flush = _bench(make, m * k * 3)
    grid.add(kernel=f"act_quant_{fmt}", dtype="bfloat16", bits=8, group="token", M=m, K=k, N=1,
             us=us, us_flush=us_flush, bytes=m * k * 3 + 4 * m, rel_err=err, torch_us=None)


def run_grid(grid: Grid, groups: tuple[str, ...], quick: bool) -> None:
    shapes = SHAPES[1:3] if quick else SHAPES
    ms = [1, 16, 1024] if quick else MS
    if "act" in groups:
        for fmt in ("int8", "fp8"):
            bench_act_quant(grid, fmt, 8192, 8192)
    if "wo" in groups:
        for k, n in shapes:
            for m in ms:
                bench_weight_only(grid, 4, 128, k, n, m)
        bench_weight_only(grid, 4, 128, 8192, 8192, 1, torch.bfloat16)
        bench_weight_only(grid, 4, 128, 8192, 8192, 1, path="gemv_plain")
        for k, n in ((8192, 8192), (4096, 4096)):
            bench_weight_only(grid, 4, 128, k, n, 1, pdl=True)
    if "lowbit" in groups:
        for bits in (3, 2, 8):
            for k, n in shapes:
                bench_weight_only(grid, bits, 128, k, n, 1)
            bench_weight_only(grid, bits, 128, 8192, 8192, 16)
        for group in (32, 64, None):
            bench_weight_only(grid, 4, group, 8192, 8192, 1)
    if "w8a8" in groups:
        for fmt in ("int8", "fp8"):
            for m in ([4096] if quick else [16, 4096]):
                bench_scaled_mm(grid, fmt, m, 8192, 8192)
            bench_scaled_mm(grid, fmt, 4096, 8192, 28672)


def _find(rows: list[dict], **kw) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def evaluate_targets(rows: list[dict], copy_tbps: float) -> list[dict]:
    """The issue's targets, each with the measured value and the margin (None: not measured)."""
    out = []

    def add(name: str, value: float | None, goal: float, higher: bool, unit: str) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        margin = None if value is None else (value / goal if higher else goal / value)
        out.append(dict(target=name, value=value, goal=goal, unit=unit, met=met,
                        fraction_of_goal=margin))

    base = dict(kernel="w4a16", dtype="float16", bits=4, group=128)
    r1 = _find(rows, M=1, K=8192, N=8192, **base)
    add("W4A16 g128 M=1 8192^2 time", r1 and r1["us"], 15.0, False, "us")
    add("W4A16 g128 M=1 8192^2 vs torch fp16", r1 and r1.get("speedup_vs_torch"), 3.5, True, "x")
    r2 = _find(rows, M=1, K=8192, N=28672, **base)
    add("W4A16 g128 M=1 K=8192 N=28672 bandwidth", r2 and r2["tbps"], 0.8 * 3.0, True, "TB/s")
    r16 = _find(rows, M=16, K=8192, N=8192, **base)
    add("W4A16 M=16 / M=1 time (8192^2)", r16 and r1 and r16["us"] / r1["us"], 1.2, False, "x")
    big = [r for r in rows if r.get("kernel") == "w4a16" and r.get("dtype") == "float16"
           and r["M"] >= 1024 and r.get("group") == 128]
    add("W4A16 M>=1024 worst vs torch", min((r["speedup_vs_torch"] for r in big), default=None),
        0.85, True, "x")
    for bits, goal in ((3, 12.0), (2, 9.0)):
        r = _find(rows, kernel=f"w{bits}a16", M=1, K=8192, N=8192, group=128)
        add(f"W{bits}A16 g128 M=1 8192^2 time", r and r["us"], goal, False, "us")
    for fmt, goal in (("int8", 1.3), ("fp8", 1.5)):
        r = _find(rows, kernel=f"{fmt}_scaled_mm", M=4096, K=8192, N=8192)
        add(f"{fmt} scaled_mm M=4096 8192^2 vs torch bf16", r and r.get("speedup_vs_torch"), goal, True, "x")
    r = _find(rows, kernel="act_quant_int8", M=8192, K=8192)
    add("act quantize bf16->int8 8192^2 bandwidth", r and r["tbps"], 2.5, True, "TB/s")
    return out


def to_markdown(data: dict) -> str:
    lines = [f"# Kernel benchmarks: {data['gpu']}", "",
             f"Generated by `python -m bitsweep.kernels.bench` (do not edit). Copy bandwidth measured in the same run: "
             f"{data['copy_tbps']:.2f} TB/s. `us`: device time of one call from a CUDA graph calling it round-robin on "
             f"copies of its inputs (> 400 MB together: every call reads from memory; no flush; medians; host launch "
             f"overhead excluded). `us flush`: the earlier method, graph replays of (zero 256 MB, call) minus the "
             f"flush (the flush's dirty L2 lines are written back during the call). Targets use `us`. "
             f"`x torch` = torch F.linear time / kernel time, same M, K, N, activation dtype, timer and run.", "",
             f"Meta: {json.dumps(data['meta'])}", "", "## Targets", "",
             "| target | measured | goal | met | measured / goal (>=1 good) |", "|---|---|---|---|---|"]
    for t in data["targets"]:
        v = "not measured" if t["value"] is None else f"{t['value']:.3g} {t['unit']}"
        frac = "-" if t["fraction_of_goal"] is None else f"{t['fraction_of_goal']:.2f}"
        lines.append(f"| {t['target']} | {v} | {t['goal']:.3g} {t['unit']} | {t['met']} | {frac} |")
    lines += ["", "## All rows", "",
              "| kernel | act | bits | group | M | K | N | us | TB/s | % copy | TFLOP/s | torch us | x torch "
              "| us flush | x torch flush | rel err | notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        notes = ", ".join(f"{k}={v:.2f}" for k, v in r.items()
                          if k in ("us_with_act_quant", "torch_int_mm_us", "torch_scaled_mm_us") and v)
        tu = r.get("torch_us")
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {r['bits']} | {r['group']} | {r['M']} | {r['K']} | {r['N']} "
            f"| {r['us']:.2f} | {r['tbps']:.2f} | {r['pct_copy']:.0f} | {r['tflops']:.1f} "
            f"| {'-' if tu is None else f'{tu:.2f}'} | {r.get('speedup_vs_torch', float('nan')):.2f} "
            f"| {r.get('us_flush', float('nan')):.2f} | {r.get('speedup_vs_torch_flush', float('nan')):.2f} "
            f"| {r['rel_err']:.1e} | {notes} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bitsweep bench kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/kernels", help="output folder (default results/kernels)")
    ap.add_argument("--gpu", default=None, help="file stem (default: h100/h200/... from the device name)")
    ap.add_argument("--groups", default=",".join(GROUPS), help=f"comma list of {GROUPS}")
    ap.add_argument("--quick", action="store_true", help="a few shapes and M only")
    ap.add_argument("--resume", action="store_true", help="keep the rows of an existing <gpu>.json in --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available():
        print("bitsweep.kernels.bench needs a CUDA GPU; none is visible (nothing written).")
        return 2
    groups = tuple(g for g in args.groups.split(",") if g)
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        ap.error(f"unknown groups {bad}; valid: {GROUPS}")
    name = torch.cuda.get_device_name()
    gpu = args.gpu or next((s for s in ("h100", "h200", "a100", "l40s", "a10g") if s in name.lower()),
                           name.lower().replace(" ", "_"))
    import triton
    meta = dict(device=name, torch=torch.__version__, triton=triton.__version__,
                started=time.strftime("%Y-%m-%dT%H:%M:%S"), groups=list(groups), quick=args.quick)
    meta["pdl"] = ("rows ending [pdl] only: programmatic dependent launch, back-to-back calls overlap; "
                   "all other rows and the targets without it")
    grid = Grid(pathlib.Path(args.out), gpu, copy_bandwidth(), meta)
    old = pathlib.Path(args.out) / f"{gpu}.json"
    if args.resume and old.exists():
        prev = json.loads(old.read_text())
        grid.rows = prev["rows"]
        grid.meta["resumed_from"] = prev["meta"]
    print(f"{name}: copy {grid.copy:.2f} TB/s", flush=True)
    run_grid(grid, groups, args.quick)
    grid.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
