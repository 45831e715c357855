"""Fake-quantized modules and model-surgery helpers.

``QuantLinear`` / ``QuantConv2d`` hold the *dequantized* weight (fake mode:
dequantize then matmul, works for any format) plus the ``QuantizedWeight``
(integer codes, scales, zeros) that real mode packs for the Triton kernels
(``methods/real.py``). Activations are fake-quantized on the way in when the
spec asks for it. Computing quantized tensors (``methods/quantizers.py``, the
methods) is kept apart from swapping modules for runtime (this file).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from bitsweep.methods.core.quantizers import QuantizedWeight, quantize_activation, quantize_weight
from bitsweep.methods.core.spec import ActSpec, QuantSpec

log = logging.getLogger(__name__)

QUANTIZABLE = (nn.Linear, nn.Conv2d)


class ActQuantizer(nn.Module):
    """Fake-quantizes inputs per ``ActSpec``; a static per-tensor scale is a buffer."""

    def __init__(self, spec: ActSpec, static_scale: torch.Tensor | None = None):
        super().__init__()
        self.spec = spec
        self.register_buffer("static_scale", static_scale, persistent=static_scale is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        fmt_int = s.format == "int"
        if not fmt_int:
            from bitsweep.methods.core.formats import get_format
            g = s.group_size if s.granularity == "group" else -1
            flat = x.reshape(-1, x.shape[-1]).float()
            if s.granularity == "tensor":
                flat = flat.reshape(1, -1)
            return get_format(s.format).fake_quantize(flat, g).reshape(x.shape).to(x.dtype)
        return quantize_activation(x, s.bits, s.sym, s.granularity, s.group_size,
                                   scale=None if s.dynamic else self.static_scale,
                                   clip_ratio=s.clip_ratio)

    def extra_repr(self) -> str:
        return f"{self.spec.format}{self.spec.bits} {self.spec.granularity} dynamic={self.spec.dynamic}"


class QuantLinear(nn.Module):
    """y = F.linear(act_quant(x), W_hat, b); W_hat [N, K] in the model dtype."""

    def __init__(self, in_features: int, out_features: int, weight: torch.Tensor,
                 bias: torch.Tensor | None, qweight: QuantizedWeight | None,
                 act_quant: ActQuantizer | None = None, effective_bits: float = 16.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(weight, requires_grad=False)  # [N, K]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.qweight = qweight
        self.act_quant = act_quant
        self.effective_bits = effective_bits
        self.mode = "fake"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        q = self.qweight
        desc = f"{q.format}{q.bits} {q.granularity} g{q.group_size}" if q else "16-bit"
        return f"in={self.in_features}, out={self.out_features}, w={desc}, mode={self.mode}"


class QuantConv2d(nn.Module):
    """Conv2d with a fake-quantized weight; quantized as [O, I*kh*kw] rows."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, qweight: QuantizedWeight | None,
                 act_quant: ActQuantizer | None = None, effective_bits: float = 16.0):
        super().__init__()
        self.conv_args = dict(stride=conv.stride, padding=conv.padding,
                              dilation=conv.dilation, groups=conv.groups)
        self.padding_mode = conv.padding_mode
        if conv.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d supports padding_mode='zeros', not {conv.padding_mode!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = nn.Parameter(weight, requires_grad=False)  # [O, I/groups, kh, kw]
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.data, requires_grad=False)
        self.qweight = qweight
        self.act_quant = act_quant
        self.effective_bits = effective_bits
        self.mode = "fake"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x.movedim(1, -1)).movedim(-1, 1)  # channels last for per-token
        return F.conv2d(x, self.weight, self.bias, **self.conv_args)


def quantizable_modules(model: nn.Module, spec: QuantSpec) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear / Conv2d the spec's module filter admits."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, QUANTIZABLE) and spec.applies_to(n)]


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as a 2-D matrix [N, K] (conv: [O, I*kh*kw])."""
    w = module.weight.data
    return w.reshape(w.shape[0], -1)


def check_shapes(model: nn.Module, spec: QuantSpec) -> None:
    """Validate group sizes against every layer before any work (raises ConfigError)."""
    if spec.weights is None:
        return
    for name, m in quantizable_modules(model, spec):
        n, k = weight_matrix(m).shape
        spec.weights.check_shape(name, n, k)


def make_quant_module(module: nn.Module, spec: QuantSpec, w: torch.Tensor | None = None,
                      qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
                      act_quant: ActQuantizer | None = None,
                      w_hat: torch.Tensor | None = None,
                      qweight: QuantizedWeight | None = None) -> nn.Module:
    """Build the fake-quant replacement of ``module``.

    ``w`` overrides the weight to quantize (e.g. after a method rescaled it),
    ``qparams`` gives (scale, zero) from a search; ``w_hat``/``qweight`` pass an
    already-quantized result (e.g. GPTQ). Without a weight spec the weight stays 16-bit.
    """
    w2 = weight_matrix(module) if w is None else w.reshape(w.shape[0], -1)
    n, k = w2.shape
    if w_hat is None:
        if spec.weights is None:
            w_hat, qweight, ebits = w2, None, 16.0
        else:
            scale, zero = qparams if qparams is not None else (None, None)
            w_hat, qweight = quantize_weight(w2, spec.weights, scale, zero)
    ebits = spec.weights.effective_bits(n, k) if spec.weights is not None else 16.0
    if act_quant is None and spec.activations is not None:
        act_quant = ActQuantizer(spec.activations)
    w_hat = w_hat.to(module.weight.dtype)
    if isinstance(module, nn.Conv2d):
        return QuantConv2d(module, w_hat.reshape(module.weight.shape), qweight, act_quant, ebits)
    bias = None if module.bias is None else module.bias.data
    return QuantLinear(k, n, w_hat, bias, qweight, act_quant, ebits)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quant_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "effective_bits")
            and isinstance(getattr(m, "weight", None), torch.Tensor)]


def effective_bits(model: nn.Module) -> float | None:
    """Weight-count-weighted mean effective bits over quantized modules (None if none)."""
    mods = quant_modules(model)
    total = sum(m.weight.numel() for _, m in mods)
    if not total:
        return None
    return sum(m.effective_bits * m.weight.numel() for _, m in mods) / total
