"""W8A8 kernels: per-token activation quantization and scaled INT8 / FP8 E4M3 GEMMs.

* ``quantize_activation(x, fmt)``: one pass over x [M, K] (fp16/bf16/fp32):
  per-row absmax, scale = amax / 127 (int8) or amax / 448 (fp8 e4m3), codes
  round-to-nearest (int8) / cast (fp8). Returns (codes [M, K], scale fp32 [M]).
* ``scaled_mm(xq, x_scale, wq, w_scale, bias, out_dtype)``: int8 x int8 -> int32
  or e4m3 x e4m3 -> fp32 on the tensor cores, epilogue
  ``acc * x_scale[m] * w_scale[n] (+ bias[n])`` fused before the single store.
  Weights are [N, K] (nn.Linear layout), quantized per output channel.
Configs are tuned per shape on CUDA (kernels/_tuning.py), fixed in the interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitsweep.kernels._tuning import tuned
from bitsweep.kernels.reference import FP8_MAX, INT8_MAX
from bitsweep.kernels.weight_only import KernelInputError
from bitsweep.kernels._tiles import grouped_tile

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FORMATS = ("int8", "fp8")


@triton.jit
def _act_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm,
                      QMAX: tl.constexpr, IS_INT: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-8)  # [BM]
    scale = amax / QMAX
    y = tl.math.div_rn(x, tl.broadcast_to(scale[:, None], x.shape))  # IEEE x / scale, as the reference
    if IS_INT:
        y = (y + 12582912.0) - 12582912.0  # 1.5 * 2^23: round half to even, like torch.round
        q = tl.minimum(tl.maximum(y, -QMAX), QMAX).to(tl.int8)
    else:
        q = tl.minimum(tl.maximum(y, -QMAX), QMAX).to(q_ptr.dtype.element_ty)
    tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q, mask=mask)
    tl.store(s_ptr + rows, scale, mask=rows < M)


def quantize_activation(x: torch.Tensor, fmt: str = "int8") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax quantization: x [M, K] -> (codes [M, K], scale fp32 [M])."""
    if fmt not in FORMATS:
        raise KernelInputError(f"format={fmt!r} is not supported; valid: {FORMATS}")
    if x.dtype not in ACT_DTYPES:
        raise KernelInputError(f"activation dtype {x.dtype} is not supported; valid: {ACT_DTYPES}")
    if x.dim() != 2:
        raise KernelInputError(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    m, k = x.shape
    qdtype = torch.int8 if fmt == "int8" else torch.float8_e4m3fn
    q = torch.empty((m, k), device=x.device, dtype=qdtype)
    s = torch.empty((m,), device=x.device, dtype=torch.float32)
    block_k = triton.next_power_of_2(k)
    block_m = max(1, min(16, 8192 // block_k))
    warps = 8 if block_k * block_m >= 4096 else 4
    _act_quant_kernel[(triton.cdiv(m, block_m),)](
        x, q, s, m, k, x.stride(0), q.stride(0), QMAX=INT8_MAX if fmt == "int8" else FP8_MAX,
        IS_INT=fmt == "int8", BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps)
    return q, s


@triton.jit
def _scaled_mm_kernel(a_ptr, b_ptr, as_ptr, bs_ptr, bias_ptr, c_ptr, M, N, K,
                      stride_am, stride_bn, stride_cm,
                      IS_INT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      NUM_STAGES: tl.constexpr, EVEN_K: tl.constexpr):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32 if IS_INT else tl.float32)
    ZERO: tl.constexpr = 0 if IS_INT else 0.0  # an int 0 cannot be cast to fp8 (H100 run 3)
    # clamped rows: loads stay in bounds without masks (the store is masked)
    a_ptrs = a_ptr + tl.where(rm < M, rm, 0)[:, None] * stride_am + rk[None, :]
    b_ptrs = b_ptr + tl.where(rn < N, rn, 0)[:, None] * stride_bn + rk[None, :]
    for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            kmask = (k0 + rk) < K
            a = tl.load(a_ptrs, mask=kmask[None, :], other=ZERO)
            b = tl.load(b_ptrs, mask=kmask[None, :], other=ZERO)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32 if IS_INT else tl.float32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    sa = tl.load(as_ptr + rm, mask=rm < M, other=0)
    sb = tl.load(bs_ptr + rn, mask=rn < N, other=0)
    y = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=rn < N, other=0).to(tl.float32)[None, :]
    cmask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], y.to(c_ptr.dtype.element_ty), mask=cmask)


def _mm_fixed() -> dict:
    return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=4, NUM_STAGES=1, num_warps=4)


def _mm_candidates(m: int) -> list[dict]:
    tiles = [(128, 256, 128, 8, 3), (128, 128, 128, 8, 4), (256, 128, 128, 8, 3), (128, 256, 64, 8, 4),
             (128, 256, 128, 8, 4), (128, 128, 128, 4, 4)]
    if m <= 64:
        tiles = [(16, 64, 128, 4, 4), (32, 64, 128, 4, 4), (64, 64, 128, 4, 3), (64, 128, 128, 4, 3)]
    return [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, NUM_STAGES=st, num_warps=w)
            for bm, bn, bk, w, st in tiles]


def _mm_default(m: int) -> dict:
    if m <= 64:
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, NUM_STAGES=4, num_warps=4)
    return dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, NUM_STAGES=3, num_warps=8)


def _check_mm(xq, x_scale, wq, w_scale, out_dtype) -> str:
    if xq.dtype != wq.dtype or xq.dtype not in (torch.int8, torch.float8_e4m3fn):
        raise KernelInputError(
            f"xq/wq must both be int8 or both float8_e4m3fn, got {xq.dtype} and {wq.dtype}")
    if xq.dim() != 2 or wq.dim() != 2 or xq.shape[1] != wq.shape[1]:
        raise KernelInputError(f"need xq [M, K] and wq [N, K]; got {tuple(xq.shape)} and {tuple(wq.shape)}")
    if x_scale.shape != (xq.shape[0],) or w_scale.shape != (wq.shape[0],):
        raise KernelInputError("x_scale must be [M] (per token) and w_scale [N] (per channel)")
    if out_dtype not in ACT_DTYPES:
        raise KernelInputError(f"out_dtype {out_dtype} is not supported; valid: {ACT_DTYPES}")
    return "int8" if xq.dtype == torch.int8 else "fp8"


def scaled_mm(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
              config: dict | None = None) -> torch.Tensor:
    """(xq @ wq.T) * x_scale[:, None] * w_scale[None, :] + bias -> out_dtype [M, N]."""
    fmt = _check_mm(xq, x_scale, wq, w_scale, out_dtype)
    xq = xq.contiguous()
    wq = wq.contiguous()
    x_scale = x_scale.float().contiguous()
    w_scale = w_scale.float().contiguous()
    m, k = xq.shape
    n = wq.shape[0]
    out = torch.empty((m, n), device=xq.device, dtype=out_dtype)

    def launch(cfg: dict) -> torch.Tensor:
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
        _scaled_mm_kernel[grid](
            xq, wq, x_scale, w_scale, bias if bias is not None else out, out, m, n, k,
            xq.stride(0), wq.stride(0), out.stride(0), IS_INT=fmt == "int8", HAS_BIAS=bias is not None,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            GROUP_M=cfg["GROUP_M"], NUM_STAGES=cfg["NUM_STAGES"], EVEN_K=k % cfg["BLOCK_K"] == 0,
            num_warps=cfg["num_warps"])
        return out

    key = (m if m <= 64 else triton.next_power_of_2(m), n, k, fmt, str(out_dtype))
    cfg = config or tuned(f"scaled_mm_{fmt}", key, _mm_fixed(), _mm_default(m), _mm_candidates(m), launch)
    return launch(cfg)


def w8a8_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Dynamic per-token activation quantization + scaled GEMM; format from wq's dtype."""
    fmt = "int8" if wq.dtype == torch.int8 else "fp8"
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    xq, xs = quantize_activation(x2, fmt)
    y = scaled_mm(xq, xs, wq, w_scale, bias, out_dtype=x.dtype)
    return y.view(*lead, wq.shape[0])
