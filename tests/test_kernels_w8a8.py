"""Activation quantize and INT8 scaled GEMM vs reference under TRITON_INTERPRET=1; FP8 on GPU only."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from bitsweep.kernels import reference as R  # noqa: E402
from bitsweep.kernels.w8a8 import KernelInputError, quantize_activation, scaled_mm, w8a8_linear  # noqa: E402


@pytest.mark.parametrize("m,k,n", [(1, 64, 32), (5, 100, 33), (17, 96, 48)])
def test_int8_quantize_and_mm(m, k, n):
    gen = torch.Generator().manual_seed(m * k + n)
    x = torch.randn(m, k, generator=gen) * 3
    q, s = quantize_activation(x, "int8")
    rq, rs = R.quantize_activation_int8(x)
    assert torch.equal(q, rq) and torch.allclose(s, rs)
    w = torch.randn(n, k, generator=gen)
    wq, ws = R.quantize_weight_int8(w)
    b = torch.randn(n, generator=gen)
    y = scaled_mm(q, s, wq, ws, b, out_dtype=torch.float32)
    torch.testing.assert_close(y, R.int8_scaled_mm(q, s, wq, ws, b, torch.float32), rtol=1e-5, atol=1e-4)


def test_w8a8_linear_close_to_float():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 128, generator=gen), torch.randn(24, 128, generator=gen)
    wq, ws = R.quantize_weight_int8(w)
    y = w8a8_linear(x, wq, ws)
    r = x @ w.t()
    assert ((y - r).norm() / r.norm()).item() < 2e-2


def test_bad_inputs():
    with pytest.raises(KernelInputError, match="format"):
        quantize_activation(torch.zeros(2, 8), "int4")
    with pytest.raises(KernelInputError, match="dtype"):
        quantize_activation(torch.zeros(2, 8, dtype=torch.int32))
    q = torch.zeros(2, 8, dtype=torch.int8)
    with pytest.raises(KernelInputError, match="must both be int8"):
        scaled_mm(q, torch.ones(2), q.float(), torch.ones(2))
    with pytest.raises(KernelInputError, match=r"\[M\]"):
        scaled_mm(q, torch.ones(3), q, torch.ones(2))


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", [(1, 256, 64), (33, 1000, 200), (300, 4096, 512)])
def test_fp8_on_gpu(m, k, n):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    q, s = quantize_activation(x, "fp8")
    rq, rs = R.quantize_activation_fp8(x)
    assert torch.equal(q.float(), rq.float())
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    wq, ws = R.quantize_weight_fp8(w)
    y = scaled_mm(q, s, wq, ws, None, torch.bfloat16)
    r = R.fp8_scaled_mm(q, s, wq, ws, None, torch.bfloat16)
    assert ((y.float() - r.float()).norm() / r.float().norm()).item() < 1e-2
