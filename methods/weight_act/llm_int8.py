"""Method ``llm_int8``: LLM.int8() mixed-precision decomposition (Dettmers et al. 2022,
"LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale", arXiv 2208.07339).

What it implements (Section 3, eq. 8)
-------------------------------------
For each input X [T, K] of a linear with weight W [N, K]:

* outlier feature dimensions ``O = {k : max_t |X[t, k]| >= threshold}`` are chosen
  at run time from the input itself (threshold 6.0 by default; ``>=`` as in
  bitsandbytes' ``int8_double_quant``);
* ``Y = X[:, O] @ W[:, O]^T`` in 16-bit
  ``+ (C_x C_w^T / 127^2) * (Xq[:, ~O] @ Wq[:, ~O]^T)`` with vector-wise INT8:
  per-token absmax of X (outlier columns zeroed first, so they do not inflate
  the scale) and per-output-channel absmax of W, codes ``round(v * 127 / absmax)``.

The INT8 product is simulated (dequantize then matmul, float32), which equals the
integer product up to float rounding of the accumulation.

Where it deliberately differs / options
---------------------------------------
``outlier_weights``: ``int8`` (default) uses the INT8 row-quantized weight
columns, dequantized, for the outlier product -- what bitsandbytes does (only
INT8 weights are stored; effective bits 8 + 32/K for the fp32 row scale).
``fp16`` keeps the 16-bit weight columns as eq. 8 writes it; storing them costs
16 more bits per weight and the effective bits say so (8 + 16 + 32/K).
Activations are always quantized by the method (its A8 is intrinsic); the spec's
``activations`` part may be null or INT8 per-token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bitsweep.methods.core.quantizers import QuantizedWeight, quantize_activation
from bitsweep.methods.core.qmodules import quantizable_modules, set_module
from bitsweep.methods.core.registry import ConfigError, Method, MethodConfig, register_method

OUTLIER_WEIGHTS = ("int8", "fp16")


def rowwise_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (codes int8 [N, K], scale float32 [N, 1]) with w ~ codes * scale (absmax / 127)."""
    s = w.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
    codes = torch.clamp(torch.round(w.float() / s), -127, 127).to(torch.int8)
    return codes, s


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """x [..., K] -> bool [K]: feature dims with |x| >= threshold in any token."""
    if math.isinf(threshold):
        return torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    return (x.detach().abs() >= threshold).reshape(-1, x.shape[-1]).any(dim=0)


def int8_mixed_matmul(x: torch.Tensor, w_int8: torch.Tensor, w_outlier: torch.Tensor,
                      bias: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """LLM.int8() product. x [..., K]; w_int8 dequantized INT8 weight [N, K];
    w_outlier [N, K] the weight used for outlier columns. Returns [..., N] in x.dtype.
    """
    cols = outlier_columns(x, threshold)  # [K]
    x_reg = x.masked_fill(cols, 0) if cols.any() else x
    xq = quantize_activation(x_reg, bits=8, sym=True, granularity="token")  # per-token absmax/127
    y = F.linear(xq, w_int8)
    if cols.any():
        y = y + F.linear(x[..., cols], w_outlier[:, cols])
    return y if bias is None else y + bias


class Int8MixedLinear(nn.Module):
    """Linear with INT8 vector-wise weights and run-time outlier decomposition."""

    #: quantizes its own inputs: activation-spec hooks leave it alone
    handles_activations = True

    def __init__(self, linear: nn.Linear, threshold: float = 6.0, outlier_weights: str = "int8"):
        super().__init__()
        w = linear.weight.data
        codes, scale = rowwise_int8(w)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.threshold = float(threshold)
        self.outlier_weights = outlier_weights
        # dequantized INT8 weight [N, K] in the model dtype (fake mode)
        self.weight = nn.Parameter((codes.float() * scale).to(w.dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data, requires_grad=False)
        self.register_buffer("weight_fp16", w.clone() if outlier_weights == "fp16" else None)
        self.qweight = QuantizedWeight((codes.to(torch.int16) + 128).to(torch.uint8), scale,
                                       torch.full_like(scale, 128.0), 8, w.shape[1], True, "int", "channel")
        extra = 16 if outlier_weights == "fp16" else 0
        self.effective_bits = 8 + extra + 32 / w.shape[1]
        self.act_quant = None  # intrinsic A8; kept for tools that look for the attribute
        self.mode = "fake"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_out = self.weight if self.weight_fp16 is None else self.weight_fp16
        return int8_mixed_matmul(x, self.weight, w_out, self.bias, self.threshold)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, threshold={self.threshold}, "
                f"outlier_weights={self.outlier_weights}")


@dataclass(frozen=True)
class LLMInt8Config(MethodConfig):
    name: str = "llm_int8"
    version: int = 1
    threshold: float = 6.0  # outlier magnitude; .inf = plain vector-wise INT8 (no decomposition)
    outlier_weights: str = "int8"  # int8 (bitsandbytes) | fp16 (paper's eq. 8, +16 bits/weight)


@register_method("llm_int8")
class LLMInt8(Method):
    Config = LLMInt8Config

    def validate(self) -> None:
        c, w, a = self.config, self.spec.weights, self.spec.activations
        where = "method 'llm_int8'"
        if w is None or w.format != "int" or w.bits != 8:
            got = "null" if w is None else f"format={w.format} bits={w.bits}"
            raise ConfigError(f"{where} needs 8-bit integer weights (quant.weights: {got}); "
                              f"it supports quant.weights.format=int, bits=8 only")
        if w.granularity != "channel" or not w.sym:
            raise ConfigError(f"{where} quantizes weights vector-wise: needs quant.weights."
                              f"granularity=channel and sym=true (got {w.granularity}, sym={w.sym})")
        if a is not None and not (a.format == "int" and a.bits == 8 and a.granularity == "token"
                                  and a.dynamic):
            raise ConfigError(f"{where} quantizes activations itself (INT8 per token, dynamic): "
                              f"quant.activations must be null or int/8/token (got {a.format}/"
                              f"{a.bits}/{a.granularity})")
        if not (isinstance(c.threshold, (int, float)) and c.threshold > 0):
            raise ConfigError(f"{where}: threshold={c.threshold!r} must be > 0 (.inf disables outliers)")
        if c.outlier_weights not in OUTLIER_WEIGHTS:
            raise ConfigError(f"{where}: outlier_weights={c.outlier_weights!r}; valid: "
                              f"{', '.join(OUTLIER_WEIGHTS)}")

    def convert(self, model):
        for name, module in quantizable_modules(model, self.spec):
            if isinstance(module, nn.Linear):
                set_module(model, name, Int8MixedLinear(module, self.config.threshold,
                                                        self.config.outlier_weights))
        return model
