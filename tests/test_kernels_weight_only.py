"""Weight-only kernels vs the torch reference under TRITON_INTERPRET=1 (CPU), plus bad inputs."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from bitsweep.kernels import reference as R  # noqa: E402
from bitsweep.kernels.packing import random_packed  # noqa: E402
from bitsweep.kernels.weight_only import KernelInputError, weight_only_linear  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group,k", [(32, 96), (64, 128), (128, 256), (None, 70)])
def test_matches_reference(bits, group, k):
    g = group or k
    n = 19  # ragged N
    pw, *_ = random_packed(n, k, bits, g, sym=(bits == 3), seed=bits * 31 + k, fractional_zero=True)
    gen = torch.Generator().manual_seed(bits + k)
    for m, path, dtype in ((1, "gemv", torch.float32), (3, "gemv", torch.float16), (5, "gemm", torch.float16)):
        x = torch.randn(m, k, generator=gen).to(dtype)
        bias = torch.randn(n, generator=gen).to(dtype)
        y = weight_only_linear(x, pw, bias, path=path)
        r = R.weight_only_linear(x, pw, bias)
        assert y.dtype == x.dtype and y.shape == (m, n)
        err = ((y.float() - r.float()).norm() / r.float().norm()).item()
        assert err < TOL[dtype], (m, path, dtype, err)


def test_dispatch_and_leading_dims():
    pw, *_ = random_packed(16, 64, 4, 32, seed=1)
    x = torch.randn(2, 3, 64)
    y = weight_only_linear(x, pw)  # M = 6 -> gemm path
    torch.testing.assert_close(y, R.weight_only_linear(x, pw), rtol=1e-5, atol=1e-5)
    assert y.shape == (2, 3, 16)


def test_split_k_config_matches():
    pw, *_ = random_packed(16, 256, 4, 64, seed=2)
    x = torch.randn(1, 256)
    cfg = dict(BLOCK_N=8, BLOCK_W=8, SPLIT_K=2, num_warps=4, NUM_STAGES=1)
    y = weight_only_linear(x, pw, config=cfg, path="gemv_v1")
    torch.testing.assert_close(y, R.weight_only_linear(x, pw), rtol=1e-5, atol=1e-5)
    cfg2 = dict(BLOCK_N=8, TILE_W=16, SPLIT_K=3, num_warps=4, X_VEC=False)  # ragged split of 4 groups
    y2 = weight_only_linear(x, pw, config=cfg2, path="gemv")
    torch.testing.assert_close(y2, R.weight_only_linear(x, pw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [3, 4])
def test_gemv_v1_and_chunked_per_channel(bits):
    """v1 GEMV (kept for layouts v2 cannot tile) and v2 over a long per-channel group (chunks)."""
    pw, *_ = random_packed(11, 2048, bits, 2048, seed=bits, fractional_zero=True)
    x = torch.randn(2, 2048)
    r = R.weight_only_linear(x, pw)
    for path in ("gemv", "gemv_v1"):
        y = weight_only_linear(x, pw, path=path)
        assert ((y - r).norm() / r.norm()).item() < 1e-5, path


def test_bad_inputs_raise_before_launch():
    pw, *_ = random_packed(8, 64, 4, 32)
    with pytest.raises(KernelInputError, match="dtype"):
        weight_only_linear(torch.zeros(1, 64, dtype=torch.int32), pw)
    with pytest.raises(KernelInputError, match="in_features=64"):
        weight_only_linear(torch.zeros(1, 65), pw)
    with pytest.raises(ValueError, match="path"):
        weight_only_linear(torch.zeros(1, 64), pw, path="nope")


def test_x_vec_only_without_padded_slots():
    from bitsweep.kernels.gemv import x_vec_ok
    assert x_vec_ok(random_packed(4, 256, 4, 128)[0]) and x_vec_ok(random_packed(4, 256, 2, 64)[0])
    assert not x_vec_ok(random_packed(4, 1000, 2, 1000)[0])  # 1000 % 16 != 0: padded slots
    assert not x_vec_ok(random_packed(4, 256, 3, 128)[0]) and not x_vec_ok(random_packed(4, 256, 8, 128)[0])


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group,k", [(32, 128), (128, 256), (None, 64)])
def test_mma_path_matches_reference(bits, group, k):
    """Fused MMA kernel (plain-integer dequant under the interpreter), both orientations, ragged M and N."""
    from bitsweep.kernels import wo_mma
    g = group or k
    n = 37
    pw, *_ = random_packed(n, k, bits, g, seed=bits * 7 + k, fractional_zero=True)
    gen = torch.Generator().manual_seed(bits * k)
    r_bias = torch.randn(n, generator=gen)
    for m, dtype, swap in ((2, torch.float32, True), (19, torch.float16, True), (5, torch.float16, False)):
        x = torch.randn(m, k, generator=gen).to(dtype)
        bias = r_bias.to(dtype)
        cfg = wo_mma.fixed_config(m)
        cfg.update(SWAP=swap, BLOCK_W=wo_mma._fit_block_w(pw, cfg["BLOCK_W"]))
        y = weight_only_linear(x, pw, bias, path="mma", config=cfg)
        r = R.weight_only_linear(x, pw, bias)
        assert y.dtype == x.dtype and y.shape == (m, n)
        err = ((y.float() - r.float()).norm() / r.float().norm()).item()
        assert err < TOL[dtype], (m, dtype, swap, err)


def test_mma_split_k_and_dispatch():
    from bitsweep.kernels import weight_only as W
    pw, *_ = random_packed(24, 512, 4, 128, seed=3)
    x = torch.randn(6, 512)
    assert W._default_path(6, x, pw) == "mma" and W._default_path(1, x, pw) == "gemv"
    pw3, *_ = random_packed(24, 512, 3, 128, seed=3)
    assert W._default_path(6, x, pw3) == "gemm"  # 3-bit groups pad their last word: no MMA path
    cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_W=4, SPLIT_K=3, GROUP_M=1, SWAP=True, num_warps=4, NUM_STAGES=1)
    y = weight_only_linear(x, pw, path="mma", config=cfg)  # 16 word blocks over 3 splits: ragged
    torch.testing.assert_close(y, R.weight_only_linear(x, pw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,group", [(4, 128), (2, 32), (8, 64)])
def test_dense_dequant_kernel(bits, group):
    """The vectorized dequant kernel (dense layouts) equals the packing reference, in fp16."""
    from bitsweep.kernels.dequant import _dense_ok, dequantize
    from bitsweep.kernels.packing import dequantize as ref_dequant
    pw, *_ = random_packed(64, 512, bits, group, seed=bits, fractional_zero=True)
    assert _dense_ok(pw, torch.float16, 32, 16)
    w = dequantize(pw, torch.float16, dense_cfg=(32, 16))
    torch.testing.assert_close(w, ref_dequant(pw, torch.float16), rtol=2e-3, atol=2e-4)


def test_tuner_margin_keeps_the_established_path(monkeypatch):
    """``tuned(..., margin=)``: the first candidate stays unless another is timed at least margin faster."""
    from bitsweep.kernels import _tuning
    times = {"old": 100.0, "a": 97.0, "b": 120.0}
    monkeypatch.setattr(_tuning, "interpreting", lambda: False)
    monkeypatch.setattr(_tuning.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_tuning.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(_tuning, "_device_tag", lambda i: "fake")
    monkeypatch.setattr(_tuning, "_save", lambda: None)
    monkeypatch.setattr(_tuning, "_time", lambda cfg, launch, copies, more: times[cfg["p"]])
    cands = [{"p": "old"}, {"p": "a"}, {"p": "b"}]
    pick = lambda name, margin: _tuning.tuned(name, (1,), cands[0], cands[0], cands, lambda c: None, margin=margin)
    assert pick("m0", 0.0) == {"p": "a"}  # plain: the fastest
    assert pick("m5", 0.05) == {"p": "old"}  # 3% faster is within the margin
    times["a"] = 90.0
    assert pick("m5b", 0.05) == {"p": "a"}  # 10% faster wins


def test_padded_small_m_tunes_gemm_against_dequant(monkeypatch):
    """3-bit groups at GEMV_MAX_M < M < DEQUANT_MIN_M: the tuner is offered dequant + matmul next to the fused
    GEMM's configs, and whichever it picks computes the reference result (CPU: both branches run here)."""
    from bitsweep.kernels import weight_only as W
    pw, *_ = random_packed(24, 256, 3, 128, seed=3, fractional_zero=True)
    x = torch.randn(9, 256, generator=torch.Generator().manual_seed(1))
    r = R.weight_only_linear(x, pw)
    seen = {}

    def fake_tuned(name, key, fixed, default, candidates, launch, **kw):
        seen["name"], seen["paths"] = name, [c["path"] for c in candidates]
        return next(c for c in candidates if c["path"] == seen["pick"])

    monkeypatch.setattr(W, "tuned", fake_tuned)
    key = (9, 24, 256, 3, 128, str(x.dtype))
    for pick in ("dequant", "gemm"):
        seen["pick"] = pick
        y = W._run_gemm_or_dequant(x, pw, None, key, 9)
        assert ((y - r).norm() / r.norm()).item() < 1e-5, pick
    assert seen["name"] == "gemm_or_dequant" and seen["paths"][0] == "dequant" and "gemm" in seen["paths"]


@pytest.mark.gpu
def test_padded_small_m_dispatch_on_gpu():
    """W3 at 5 <= M < 32 through the tuned choice (fused GEMM or dequant + matmul) vs the reference."""
    from bitsweep.kernels._tuning import interpreting
    if interpreting() or not torch.cuda.is_available():
        pytest.skip("needs CUDA with TRITON_INTERPRET=0")
    pw, *_ = random_packed(256, 1024, 3, 128, device="cuda", seed=11, fractional_zero=True)
    for m in (8, 16, 31):
        x = torch.randn(m, 1024, device="cuda", dtype=torch.float16)
        y = weight_only_linear(x, pw).float()
        r = R.weight_only_linear(x, pw).float()
        assert ((y - r).norm() / r.norm()).item() < 3e-3, m
