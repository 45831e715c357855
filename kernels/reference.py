"""Pure-torch references, one per kernel, with the kernels' signatures.

Every Triton kernel in bitsweep is tested against the function of the same
name here. References compute in fp32 and cast the result to the kernel's
output dtype, so they define what the kernels must return up to rounding.
"""
from __future__ import annotations

import torch

from bitsweep.kernels.packing import PackedWeight, dequantize

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX = 127.0


def weight_only_linear(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ dequant(pw).T + bias; x [..., K] fp16/bf16/fp32 -> [..., N] in x.dtype."""
    w = dequantize(pw, torch.float32).to(x.device)  # [N, K]
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def quantize_activation_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8: x [M, K] -> (q int8 [M, K], scale fp32 [M]); x ~= q * scale."""
    amax = x.float().abs().amax(dim=-1).clamp_min(1e-8)  # [M]
    scale = amax / INT8_MAX
    q = torch.round(x.float() / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_activation_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax FP8 E4M3: x [M, K] -> (q float8_e4m3fn [M, K], scale fp32 [M])."""
    amax = x.float().abs().amax(dim=-1).clamp_min(1e-8)
    scale = amax / FP8_MAX
    q = (x.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def int8_scaled_mm(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """(xq @ wq.T) * x_scale[:, None] * w_scale[None, :] + bias; xq [M, K], wq [N, K] int8."""
    acc = xq.to(torch.float64) @ wq.to(torch.float64).t()  # exact integer sums
    y = acc.float() * x_scale.float()[:, None] * w_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def fp8_scaled_mm(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                  bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Row-wise FP8: (xq @ wq.T) * x_scale[:, None] * w_scale[None, :] + bias; e4m3 [M,K], [N,K]."""
    acc = xq.float() @ wq.float().t()
    y = acc * x_scale.float()[:, None] * w_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: w [N, K] -> (q int8 [N, K], scale fp32 [N])."""
    return quantize_activation_int8(w)


def quantize_weight_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel FP8 E4M3: w [N, K] -> (q e4m3 [N, K], scale fp32 [N])."""
    return quantize_activation_fp8(w)
