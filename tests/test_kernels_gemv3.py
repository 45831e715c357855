"""GEMV v3 (kernels/gemv3.py) vs the torch reference under TRITON_INTERPRET=1, and its PTX builders."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from bitsweep.kernels import _asm, gemv3  # noqa: E402
from bitsweep.kernels import reference as R  # noqa: E402
from bitsweep.kernels.packing import random_packed  # noqa: E402
from bitsweep.kernels.weight_only import weight_only_linear  # noqa: E402


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group,k", [(32, 96), (64, 320), (128, 512), (None, 70)])
def test_v3_matches_reference(bits, group, k):
    g = group or k
    n = 21  # ragged N
    pw, *_ = random_packed(n, k, bits, g, seed=bits * 13 + k, fractional_zero=True)
    gen = torch.Generator().manual_seed(bits * k)
    for m, dtype, cfg in ((1, torch.float32, None),
                          (2, torch.float16, None),
                          (1, torch.float32, dict(BLOCK_N=4, TILE_W=16, SPLIT_K=3, num_warps=2, PREFETCH=True)),
                          (1, torch.float32, dict(BLOCK_N=16, TILE_W=64, SPLIT_K=1, num_warps=4, PREFETCH=False))):
        x = torch.randn(m, k, generator=gen).to(dtype)
        bias = torch.randn(n, generator=gen).to(dtype)
        y = weight_only_linear(x, pw, bias, path="gemv3", config=cfg)
        r = R.weight_only_linear(x, pw, bias)
        assert y.dtype == x.dtype and y.shape == (m, n)
        err = ((y.float() - r.float()).norm() / r.float().norm()).item()
        assert err < (1e-5 if dtype == torch.float32 else 2e-3), (m, dtype, cfg, err)


def test_default_m1_path_is_v3_on_cpu():
    pw, *_ = random_packed(8, 64, 4, 32, seed=3)
    x = torch.randn(1, 64)
    torch.testing.assert_close(weight_only_linear(x, pw), R.weight_only_linear(x, pw), rtol=1e-5, atol=1e-5)


def _operands(asm: str) -> set[int]:
    return {int(v) for v in re.findall(r"\$(\d+)", asm)}


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("pack", [2, 4])
@pytest.mark.parametrize("bf16", [False, True])
def test_words_term_asm_operands(bits, pack, bf16):
    """Every operand the PTX names exists: pack outputs + pack x (word, x, scale, szero) inputs."""
    asm = _asm.words_term_asm(bits, bf16, pack)
    ops = _operands(asm)
    assert max(ops) < 5 * pack
    assert {0, pack, 2 * pack, 3 * pack, 4 * pack} <= ops  # out, first word, x, scale, szero
    assert all(f"${pack + i}," in asm or f"${pack + i};" in asm for i in range(pack))  # every word used
    assert asm.count("ld.global.nc.v4.b32") == pack * (16 // bits) // 4  # the pack's x, 16 B at a time


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_word_term_asm_operands(bits):
    assert _operands(_asm.word_term_asm(bits, False)) <= set(range(6))


def test_pack_needs_aligned_rows():
    """Packs of words are consecutive registers only with 16-byte row alignment (KW % 16 == 0)."""
    pw, *_ = random_packed(8, 640, 2, 64, seed=1)  # KW = 40 words
    assert gemv3.max_pack(pw) == 1
    pw, *_ = random_packed(8, 1024, 4, 128, seed=1)  # KW = 128
    assert gemv3.max_pack(pw) == 4
    pw, *_ = random_packed(8, 1024, 3, 128, seed=1)
    assert gemv3.max_pack(pw) == 1
    cfg = dict(BLOCK_N=2, TILE_W=32, SPLIT_K=1, num_warps=4)  # 64 words for 128 threads: no pack
    pw, *_ = random_packed(8, 1024, 4, 128, seed=1)
    assert gemv3._pack_for(cfg, pw) == 1
