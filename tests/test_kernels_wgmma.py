"""The Gluon wgmma GEMM for large M (kernels/wo_wgmma.py).

CPU: the kernel is compiled for sm_90 with Triton's bundled ptxas (no GPU needed) and its SASS
is checked: the dequantized words reach wgmma's A registers with no layout conversion (the
kernel's ``convert_layout(..., assert_trivial=True)`` would fail to compile otherwise), every
HGMMA of a K step is issued back to back (ptxas did not serialize them), every dequant
instruction of the K loop runs while a wgmma group is in flight (the overlap the pipelined loop
exists for; the run-8 loop had none, NOTES.md run 10), and no instruction writes an HGMMA's A
registers before the wait that retires it (the hazard that gave wrong sums in the first
version, kernels/NOTES.md run 8). The dequant PTX itself is checked exactly by
tests/test_kernels_asm.py. GPU (``-m gpu``): results against the reference, forced and through
the tuner's dispatch.
"""
import inspect
import re

import pytest
import torch

from bitsweep.kernels import reference as R
from bitsweep.kernels import wo_wgmma
from bitsweep.kernels.packing import random_packed

pytestmark = pytest.mark.skipif(not wo_wgmma.HAVE_GLUON, reason="this Triton has no Gluon")


def _compile_sm90(bm: int, group: int, bf16: bool, warps: int, u: int, stages: int = 4, ws: bool = False):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    fn = wo_wgmma._wgmma_ws_kernel if ws else wo_wgmma._wgmma_kernel
    names = list(inspect.signature(fn.fn).parameters)
    dt = "bf16" if bf16 else "fp16"
    bn = 16 * warps
    const = dict(BM=bm, GROUP=group, STAGES=stages, HAS_BIAS=False, ASM=wo_wgmma._dequant_pair_asm(bf16),
                 L3=wo_wgmma._word_layout(warps), WARPS=warps, U=u)
    ptrs = {"s_ptr": "*fp16", "sz_ptr": "*fp16", "out_ptr": f"*{dt}", "bias_ptr": f"*{dt}"}
    sig = {}
    for a in names:
        if a in const:
            sig[a] = "constexpr"
        elif a == "x_desc":
            sig[a] = f"tensordesc<{dt}[{bm}, 64],{wo_wgmma._x_layout(bm, bf16)!r}>"
        elif a == "w_desc":
            sig[a] = f"tensordesc<i32[{bn}, 8],{wo_wgmma._w_layout(bn)!r}>"
        else:
            sig[a] = ptrs.get(a, "i32")
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in list(ptrs) + ["KW", "stride_om", "N", "G"]}
    src = GluonASTSource(fn, sig, constexprs={(names.index(a),): v for a, v in const.items()}, attrs=attrs)
    opts = dict(num_warps=warps, **({"maxnreg": wo_wgmma.ws_maxnreg(warps)} if ws else {}))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def _main_loop(sass: str) -> list[str]:
    """Instructions of the longest conditional backward branch's body that contains HGMMAs (the K loop). The
    unconditional backward jumps that return from ptxas's out-of-line mbarrier retry blocks are not loops."""
    txt = [ln.strip() for ln in sass.splitlines()]
    labels = {ln[:-1]: i for i, ln in enumerate(txt) if re.fullmatch(r"\w+:", ln)}
    best = None
    for i, ln in enumerate(txt):
        m = re.search(r"@!?U?P\w+\s+BRA (\w+);", ln)
        if m and labels.get(m.group(1), i) < i and any("HGMMA" in t for t in txt[labels[m.group(1)]:i]):
            if best is None or i - labels[m.group(1)] > best[1] - best[0]:
                best = (labels[m.group(1)], i)
    assert best is not None, "no K loop with HGMMAs found"
    return [ln.split("\t", 1)[-1] for ln in txt[best[0]:best[1] + 1] if "\t" in ln]


def _groups_in_flight(body: list[str]):
    """Walk the loop body twice (so the next iteration's start sees this one's wgmmas); yield (line, groups in
    flight) where groups are the A registers of each committed wgmma group (HGMMAs up to one marked gsb0) not yet
    retired: ``WARPGROUP.DEPBAR.LE gsb0, N`` retires all but the newest N."""
    groups, open_regs = [], set()
    for ln in body + body:
        if ln.startswith("WARPGROUP.DEPBAR"):
            keep = int(ln.rstrip(";").split(",")[-1].strip(), 0)
            groups = groups[len(groups) - keep:] if keep else []
            yield ln, groups
            continue
        m = re.match(r"(?:@!?U?P\w+\s+)?HGMMA\.\S+\s+R\d+,\s+R(\d+),", ln)
        if m:
            open_regs |= set(range(int(m.group(1)), int(m.group(1)) + 4))
            if "gsb0" in ln:
                groups, open_regs = groups + [open_regs], set()
        yield ln, groups + ([open_regs] if open_regs else [])


def _a_register_hazards(body: list[str]) -> list[str]:
    """Writes to an in-flight HGMMA's A registers (4 per HGMMA) before the WARPGROUP.DEPBAR that retires it,
    over two passes of the loop body (so a write early in the next iteration counts)."""
    bad = []
    for ln, groups in _groups_in_flight(body):
        live = set().union(*groups) if groups else set()
        m = re.match(r"(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)\s+R(\d+)", ln)
        if m and live and not m.group(1).startswith(("ST", "RED", "ATOM", "BRA", "HGMMA", "WARPGROUP")):
            op, d = m.group(1), int(m.group(2))
            width = 4 if ".128" in op else 2 if (".64" in op or op.startswith("IMAD.WIDE")) else 1
            bad += [ln for r in range(d, d + width) if r in live]
    return bad


def _dequant_without_wgmma_in_flight(body: list[str]) -> int:
    """How many dequant instructions (HFMA2: the scale / szero fma of each pair) of the K loop run while no
    wgmma group is in flight, i.e. while the tensor core waits for them (second pass of the body only)."""
    lines = list(_groups_in_flight(body))
    return sum(1 for ln, groups in lines[len(lines) // 2:] if ln.startswith("HFMA2") and not groups)


def test_hazard_check_catches_a_write():
    body = ["HGMMA.64x256x16.F32 R24, R88, gdesc[UR8], R24, gsb0;", "LOP3.LUT R90, R1, 0xf, RZ, 0xc0, !PT;",
            "WARPGROUP.DEPBAR.LE gsb0, 0x0;"]
    assert _a_register_hazards(body)
    assert not _a_register_hazards([body[0], body[2], body[1]])
    # wait(1) retires only the older of two groups: writing the newer one's registers is a hazard, the older's not
    two = ["HGMMA.64x256x16.F32 R24, R88, gdesc[UR8], R24, gsb0;",
           "HGMMA.64x256x16.F32 R24, R92, gdesc[UR8], R24, gsb0;", "WARPGROUP.DEPBAR.LE gsb0, 0x1;"]
    assert not _a_register_hazards(two + ["LOP3.LUT R90, R1, 0xf, RZ, 0xc0, !PT;"])
    assert _a_register_hazards(two + ["LOP3.LUT R93, R1, 0xf, RZ, 0xc0, !PT;"])
    # the overlap count: a dequant fma after wait(0) runs with nothing in flight, one after wait(1) does not
    fma = "HFMA2 R90, R90, R5.H0_H0, -R6.H0_H0;"
    assert _dequant_without_wgmma_in_flight([body[0], body[2], fma]) == 1
    assert _dequant_without_wgmma_in_flight([two[0], two[2], fma]) == 0


_SASS = r"""
import json, runpy, sys
from triton.tools.disasm import get_sass
m = runpy.run_path(sys.argv[1])
bm, group, bf16, warps, u, stages, ws = map(int, sys.argv[2:])
k = m["_compile_sm90"](bm, group, bool(bf16), warps, u, stages, bool(ws))
print(json.dumps(dict(sass=get_sass(k.asm["cubin"]))))
"""


def _sass_sm90(bm: int, group: int, bf16: bool, warps: int, u: int, stages: int, ws: bool) -> str:
    """SASS of the kernel compiled for sm_90, in a subprocess without the interpreter: Triton's interpreter
    leaves tl.tensor's operators patched after an interpreted kernel calls a @jit helper (runtime/
    interpreter.py, InterpretedFunction.__call__ never restores its patch scope), which breaks a later
    in-process compile. Skips only where this install has no CUDA binary tools (ptxas, cuobjdump)."""
    import json
    import os
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="0")
    args = map(str, (bm, group, int(bf16), warps, u, stages, int(ws)))
    proc = subprocess.run([sys.executable, "-c", _SASS, __file__, *args], capture_output=True, text=True, env=env,
                          timeout=600)
    if proc.returncode:
        err = proc.stderr.strip()
        if any(t in err for t in ("ptxas", "cuobjdump", "nvdisasm")) and ("FileNotFound" in err or "not found" in err):
            pytest.skip(f"no CUDA binary tools here: {err.splitlines()[-1][:200]}")
        raise AssertionError(f"compiling for sm_90 failed:\n{err[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["sass"]


@pytest.mark.parametrize("bm,group,bf16,warps,u,stages,ws", [(256, 128, False, 8, 2, 4, False),
                                                              (256, 32, True, 4, 2, 3, False),
                                                              (256, 128, False, 8, 2, 5, True)])
def test_wgmma_kernel_sass(bm, group, bf16, warps, u, stages, ws):
    sass = _sass_sm90(bm, group, bf16, warps, u, stages, ws)
    body = _main_loop(sass)
    hgmma = [ln for ln in body if "HGMMA" in ln]
    assert len(hgmma) == 4 * u  # four k16 MMAs per 64-column K step, U steps per iteration
    waits = [ln.rstrip(";") for ln in body if ln.startswith("WARPGROUP.DEPBAR")]
    assert sum(w.endswith("0x1") for w in waits) == u  # one wait(1) per step (ptxas may lay the exit's wait(0) inside)
    assert _a_register_hazards(body) == []
    assert _dequant_without_wgmma_in_flight(body) == 0  # the dequant overlaps the previous step's wgmma


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", [128, 64, 32, None])
def test_wgmma_gemm_on_gpu(dtype, group):
    from bitsweep.kernels._tuning import interpreting
    from bitsweep.kernels.weight_only import weight_only_linear
    if interpreting() or not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs a compute capability 9.x GPU with TRITON_INTERPRET=0")
    k, n = 1024, 384  # N % 128 == 0: the 8-warp and warp-specialized configs too
    pw, *_ = random_packed(n, k, 4, group or k, device="cuda", seed=7, fractional_zero=True)
    cands = wo_wgmma.candidates(1024, n)
    assert any(c.get("WS") for c in cands) and any(c["WARPS"] == 4 for c in cands)
    for m in (65, 300, 1024):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        b = torch.randn(n, device="cuda", dtype=dtype)
        r = R.weight_only_linear(x, pw, b).float()
        tol = 3e-3 if dtype == torch.float16 else 1.5e-2
        # every config for one group / dtype, else the 4-warp, the 8-warp and the warp-specialized one (compile time)
        picks = cands if (group == 128 and dtype == torch.float16) else (cands[0], cands[1], cands[-1])
        for cfg in picks if m != 300 else ():
            y = weight_only_linear(x, pw, b, path="wgmma", config=cfg).float()
            assert ((y - r).norm() / r.norm()).item() < tol, (m, cfg)
        y = weight_only_linear(x, pw, b).float()  # the tuner's choice (dequant or wgmma)
        assert ((y - r).norm() / r.norm()).item() < tol, m


@pytest.mark.parametrize("cfg,needle", [(dict(BM=48, STAGES=4, WARPS=4, U=2), "BM must be one of"),
                                        (dict(BM=16, STAGES=17, WARPS=4, U=2), "STAGES 2..16"),
                                        (dict(BM=128, STAGES=4, WARPS=8, U=2), "N % (16 * WARPS) == 0"),
                                        (dict(BM=128, STAGES=4, WARPS=4, U=3), "U must be 2 or 4"),
                                        (dict(BM=128, STAGES=4, WARPS=4, U=2, BN=64), "keys BM, STAGES")])
def test_wgmma_config_rejected_before_launch(cfg, needle):
    """A bad config names the constraint and the valid choices before anything touches a GPU (CPU tensors)."""
    pw = random_packed(192, 256, 4, 128, seed=0)[0]  # N = 192: not a multiple of 128
    with pytest.raises(ValueError, match=re.escape(needle)):
        wo_wgmma.wgmma_gemm(torch.randn(4, 256, dtype=torch.float16), pw, None, cfg)
