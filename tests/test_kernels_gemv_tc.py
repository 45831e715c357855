"""Tensor-core GEMV (kernels/gemv_tc.py): interpreter tiling vs the torch reference, PTX builder, layout contract."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from bitsweep.kernels import _asm, gemv_tc  # noqa: E402
from bitsweep.kernels import reference as R  # noqa: E402
from bitsweep.kernels.packing import random_packed, values_per_word  # noqa: E402
from bitsweep.kernels.weight_only import weight_only_linear  # noqa: E402

# K parts (KS), unrolled steps (U), split-K and prefetch; K tails: K=640 at 4 bits is 5 steps
CONFIGS = (dict(BLOCK_N=32, SPLIT_K=1, num_warps=2),
           dict(BLOCK_N=64, KS=2, U=2, SPLIT_K=1, num_warps=2, PREFETCH=True),
           dict(BLOCK_N=64, KS=4, U=4, SPLIT_K=2, num_warps=4, PREFETCH=True),
           dict(BLOCK_N=32, KS=1, U=4, SPLIT_K=3, num_warps=2),
           dict(BLOCK_N=128, KS=2, U=2, SPLIT_K=1, num_warps=2, PREFETCH=True, PACK=16))


@pytest.mark.parametrize("bits,group,k,m,cfgs", [(4, 128, 640, 1, (1, 2)), (4, 32, 256, 3, (0,)),
                                                 (2, 64, 256, 17, (3,)), (8, 128, 256, 9, (1,)),
                                                 (4, None, 256, 16, (2,)), (4, 128, 512, 16, (4,))])
def test_tc_matches_reference(bits, group, k, m, cfgs):
    """Every element's (token, row) mapping, K-part sum, tail step and split agree with the reference
    (ragged N = 37: clamped rows; M = 17: two token blocks; K = 640 at 4 bits: 5 steps, tails)."""
    g = group or k
    n = 37
    pw, *_ = random_packed(n, k, bits, g, seed=bits * 7 + k, fractional_zero=True)
    gen = torch.Generator().manual_seed(k + m)
    x = torch.randn(m, k, generator=gen)
    bias = torch.randn(n, generator=gen)
    r = R.weight_only_linear(x, pw, bias)
    for i in cfgs:
        y = weight_only_linear(x, pw, bias, path="gemv_tc", config=CONFIGS[i])
        assert y.shape == (m, n)
        err = ((y - r).norm() / r.norm()).item()
        assert err < 1e-5, (CONFIGS[i], err)


def test_tc_fp16_activations():
    pw, *_ = random_packed(16, 256, 4, 64, seed=5)
    x = torch.randn(4, 256).half()
    y = weight_only_linear(x, pw, path="gemv_tc", config=CONFIGS[1])
    r = R.weight_only_linear(x, pw)
    assert y.dtype == torch.float16
    assert ((y.float() - r.float()).norm() / r.float().norm()).item() < 2e-3


def test_layout_guards():
    """Layouts the tiling cannot take fall back (dispatch) instead of running wrong."""
    assert gemv_tc.plain_ok(random_packed(8, 256, 4, 128, seed=1)[0])
    assert not gemv_tc.plain_ok(random_packed(8, 640, 2, 64, seed=1)[0])  # KW = 40: not whole 16-word steps
    assert not gemv_tc.plain_ok(random_packed(8, 512, 2, 32, seed=1)[0])  # 2 words per group < a lane's 4
    assert not gemv_tc.plain_ok(random_packed(8, 1280, 3, 128, seed=1)[0])  # padded 3-bit groups
    pw, *_ = random_packed(8, 640, 2, 64, seed=1)
    x = torch.randn(2, 640)
    y = weight_only_linear(x, pw, path="gemv_tc")  # a forced path it cannot take falls back to a GEMV
    torch.testing.assert_close(y, R.weight_only_linear(x, pw), rtol=1e-5, atol=1e-5)
    pw8, *_ = random_packed(8, 256, 8, 128, seed=1)
    assert not gemv_tc.asm_ok(pw8, torch.randn(1, 256).to(torch.bfloat16))  # CPU tensor / 8-bit bf16


def test_bad_config_names_constraint():
    pw, *_ = random_packed(16, 256, 4, 128, seed=1)
    with pytest.raises(ValueError, match="BLOCK_N"):
        gemv_tc.gemv_tc(torch.randn(1, 256), pw, None, dict(BLOCK_N=24, SPLIT_K=1, num_warps=2), False)
    with pytest.raises(ValueError, match="PACK"):
        gemv_tc.gemv_tc(torch.randn(1, 256), pw, None, dict(BLOCK_N=32, SPLIT_K=1, num_warps=2, PACK=16), False)


def _operands(asm: str) -> set[int]:
    return {int(v) for v in re.findall(r"\$(\d+)", asm)}


@pytest.mark.parametrize("bits,bf16", [(2, False), (4, False), (8, False), (2, True), (4, True)])
@pytest.mark.parametrize("hi", [False, True])
@pytest.mark.parametrize("scale_vals", [False, True])
@pytest.mark.parametrize("blocks", [1, 2])
def test_mma_asm_operands(bits, bf16, hi, scale_vals, blocks):
    """Operand numbering matches the kernel's constraint list (gemv_tc.asm_constraints): per pack of
    8 * blocks registers, outputs, words, accumulators, then copies of the x address(es), and of scale,
    szero and valid flag (or of the prefetched scale pairs); one mma per 4 columns of a word and block;
    the x fragments are loaded once per call, whatever the number of blocks."""
    asm = _asm.mma_words_asm(bits, bf16, hi, scale_vals, blocks)
    pack = 8 * blocks
    cons, scons = gemv_tc.asm_constraints(pack, hi, scale_vals)
    n_ops = len(cons.split(","))
    ops = _operands(asm)
    assert max(ops) < n_ops
    assert set(range(pack, 2 * pack)) <= ops  # every word of every row
    assert set(range(pack)) <= ops  # every output written
    per_call = 4 * values_per_word(bits) // 4  # 4 words, one mma per 4 columns
    assert asm.count("mma.sync.aligned.m16n8k16") == per_call * (2 if hi else 1) * blocks
    assert asm.count("ld.global.nc.v4.b32") == 4 * values_per_word(bits) // 8 * (2 if hi else 1)
    assert (".bf16.bf16" in asm) == bf16
    assert ("ld.global.nc.b16" in asm) != scale_vals
    sasm = _asm.scale_pair_asm(blocks)
    assert max(_operands(sasm)) < len(scons.split(",")) and set(range(pack)) <= _operands(sasm)
    with pytest.raises(ValueError):
        _asm.mma_words_asm(3, False, hi)
    with pytest.raises(ValueError, match="blocks"):
        _asm.mma_words_asm(4, False, hi, scale_vals, 3)


def test_mma_asm_rejects_bf16_8bit():
    with pytest.raises(ValueError, match="bits"):
        _asm.mma_words_asm(8, True, False)


_COMPILE = r"""
import inspect, json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bitsweep.kernels import _asm, gemv_tc
from bitsweep.kernels.packing import values_per_word
bits, warps, bn, pack = map(int, sys.argv[1:5])
p = values_per_word(bits)
names = list(inspect.signature(gemv_tc._gemv_tc_kernel.fn).parameters)
cons, scons = gemv_tc.asm_constraints(pack, False, True)
const = dict(BITS=bits, WPG=128 // p, P=p, BLOCK_N=bn, WARPS=warps, KS=4, U=4 if pack == 8 else 2, SPLIT_K=1,
             HI=False, USE_ASM=True, ASM=_asm.mma_words_asm(bits, False, False, True, pack // 8), HAS_BIAS=False,
             EVICT=True, PREFETCH=True, SV=True, SCALE_ASM=_asm.scale_pair_asm(pack // 8), CONSTRAINTS=cons,
             SCALE_CONSTRAINTS=scons, PACK=pack)
ptrs = ("x_ptr", "qw_ptr", "s_ptr", "sz_ptr", "out_ptr", "bias_ptr")
sig = {a: ("constexpr" if a in const else "*i32" if a == "qw_ptr" else "*fp16" if a in ptrs else "i32")
       for a in names}
attrs = {(names.index(a),): [["tt.divisibility", 16]]
         for a in ptrs + ("KW", "WPS", "WPK", "stride_xm", "stride_om")}
src = ASTSource(gemv_tc._gemv_tc_kernel, sig, constexprs={(names.index(a),): v for a, v in const.items()},
                attrs=attrs)
k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=1))
print(json.dumps(dict(ttgir=k.asm["ttgir"], ptx=k.asm["ptx"])))
"""


def _compile_sm90(bits: int, warps: int, bn: int, pack: int = 8) -> dict:
    """Compile the PTX path for sm_90 (no GPU needed: Triton's bundled ptxas) in a subprocess without the
    interpreter; skip where this install cannot compile for a CUDA target."""
    import json
    import pathlib
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="0")
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _COMPILE, str(bits), str(warps), str(bn), str(pack)], capture_output=True,
                          text=True, env=env, timeout=300)
    if proc.returncode:
        pytest.skip(f"cannot compile for sm_90 here: {proc.stderr.strip().splitlines()[-1][:200]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("bits,warps,bn,pack", [(4, 4, 128, 8), (2, 8, 128, 8), (4, 4, 128, 16)])
def test_layout_contract_sm90(bits, warps, bn, pack):
    """The PTX block is warp-collective and assumes lane (g, t) holds words 4t..4t+3 of tile row g: the
    asm's operands must be in the blocked layout sizePerThread [1, 4], threadsPerWarp [8, 4], order [1, 0]
    with warps along rows, the loop must hold no layout conversion, and the word loads must be 16-byte."""
    k = _compile_sm90(bits, warps, bn, pack)
    ttgir, ptx = k["ttgir"], k["ptx"]
    layouts = dict(re.findall(r"^(#blocked\d*) = #ttg\.blocked<\{(.*?)\}>", ttgir, re.M))
    asm_lines = [ln for ln in ttgir.splitlines() if "tt.elementwise_inline_asm" in ln]
    assert asm_lines, "no inline asm in the TTGIR"
    used = set(re.findall(r"#blocked\d*", " ".join(ln[ln.rindex(" : "):] for ln in asm_lines)))
    assert used, asm_lines[0][-300:]
    for name in used:
        assert layouts[name] == (f"sizePerThread = [1, 4], threadsPerWarp = [8, 4], warpsPerCTA = [{warps}, 1], "
                                 "order = [1, 0]"), layouts[name]
    loop = ttgir[ttgir.index("scf.for"):ttgir.index("scf.yield")]
    assert "convert_layout" not in loop
    assert len(re.findall(r"ld\.global\.L1::evict_first(?:\.L2::cache_hint)?\.v4\.b32", ptx)) >= 8
    u = 4 if pack == 8 else 2  # as _COMPILE
    assert len(asm_lines) >= 3 * u  # U prefetched scale loads before the loop, U scale loads + U mma blocks in it
    assert all(f"packed_element = {pack} : i32" in ln for ln in asm_lines)
    if bits == 4:  # x fragments: 4 16-byte loads per call, shared by its pack // 8 blocks of 8 mmas each
        assert ptx.count("mma.sync.aligned.m16n8k16") == 2 * (pack // 8) * ptx.count("ld.global.nc.v4.b32")


@pytest.mark.gpu
@pytest.mark.parametrize("bits,group", [(4, 128), (4, 32), (2, 64), (8, 128), (4, None)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tc_ptx_on_gpu(bits, group, dtype):
    """The mma.sync PTX path on the GPU (run with TRITON_INTERPRET=0) vs the fp32 reference, M = 1..17."""
    from bitsweep.kernels._tuning import interpreting
    if interpreting():
        pytest.skip("set TRITON_INTERPRET=0 to run the PTX path")
    k, n = 1024, 200
    pw, *_ = random_packed(n, k, bits, group or k, device="cuda", seed=bits + k, fractional_zero=True)
    for m in (1, 4, 9, 16, 17):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        b = torch.randn(n, device="cuda", dtype=dtype)
        if not gemv_tc.asm_ok(pw, x):
            assert (bits, dtype) == (8, torch.bfloat16)
            continue
        for cfg in CONFIGS + (gemv_tc.default_config(n, pw),):
            y = weight_only_linear(x, pw, b, path="gemv_tc", config=cfg)
            r = R.weight_only_linear(x, pw, b)
            err = ((y.float() - r.float()).norm() / r.float().norm()).item()
            assert err < (3e-3 if dtype == torch.float16 else 1.5e-2), (m, cfg, err)
