"""Real-mode quantized linear layers: packed weights + bitsweep's Triton kernels.

``to_real(model)`` swaps every eligible ``QuantLinear`` (fake mode: dequantized
weight + F.linear) for a real module and returns ``{name: "real" | "fake: <reason>"}``
for every quantized layer; the run record stores it. Two real kinds:

* ``RealWeightOnlyLinear``: INT weights of 2/3/4/8 bits, group 32/64/128 or
  per-channel, any zero (fractional too), no activation quantization; packed
  with ``bitsweep.kernels.packing.pack`` and run by ``bitsweep.kernels.weight_only_linear``.
* ``RealW8A8Linear``: INT8 symmetric per-channel weights (zero == 128) with
  dynamic per-token INT8 activations; run by ``bitsweep.kernels.w8a8_linear``
  (fused per-token quantize + INT8 GEMM with scale epilogue). The kernel's
  activation scale is absmax/127 where the fake quantizer uses 2*absmax/255,
  so outputs agree to activation-rounding noise, not bit for bit.

Both forwards are ``torch.compile``-friendly: under dynamo tracing they call the
custom ops of ``bitsweep.kernels.ops`` (``torch.ops.bitsweep.*``, opaque to the
compiler, with fake impls for shapes); in eager mode they call the same kernel
functions directly, skipping the custom-op dispatcher's ~10-20 us of host
overhead per call, so eager numbers are those of the kernels either way. Run
one eager forward per input shape before compiling or CUDA-graph capture: the
kernels tune their configs on the first CUDA call per shape.

Everything else stays fake and the reason is logged. The dequantized weight
is dropped from real modules (that is the memory saving), so a real model
cannot be switched back; keep the fake model if you need both.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from bitsweep import kernels
from bitsweep.kernels import ops
from bitsweep.kernels._tuning import interpreting
from bitsweep.kernels.packing import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES, PackedWeight

from bitsweep.methods.core.qmodules import QuantLinear

log = logging.getLogger(__name__)

REAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class RealWeightOnlyLinear(nn.Module):
    """y = x @ dequant(packed).T + b through the weight-only Triton kernels."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = packed.in_features, packed.out_features
        self.bits, self.group_size, self.sym = packed.bits, packed.group_size, packed.sym
        self.register_buffer("qweight", packed.qweight)
        self.register_buffer("scale", packed.scale)
        self.register_buffer("szero", packed.szero)
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        self.dtype = dtype
        self.mode = "real"

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.qweight, self.scale, self.szero, self.bits, self.group_size,
                            self.in_features, self.out_features, self.sym)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if torch.compiler.is_compiling():
            return ops.weight_only_linear_op(x, self.qweight, self.scale, self.szero, self.bias, self.bits,
                                             self.group_size, self.in_features, self.out_features, self.sym)
        return kernels.weight_only_linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, w=int{self.bits} g{self.group_size}, mode=real"


class RealW8A8Linear(nn.Module):
    """y = int8 GEMM(quant(x), W_int8) * s_x * s_w + b."""

    def __init__(self, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = wq.shape
        self.register_buffer("wq", wq)  # int8 [N, K]
        self.register_buffer("w_scale", w_scale.float())  # [N]
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        self.dtype = dtype
        self.mode = "real"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if torch.compiler.is_compiling():
            return ops.w8a8_linear_op(x, self.wq, self.w_scale, self.bias)
        return kernels.w8a8_linear(x, self.wq, self.w_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, w8a8 int8, mode=real"


def _runnable_device(module: QuantLinear) -> str | None:
    dev = module.weight.device
    if dev.type == "cuda" or interpreting():
        return None
    return f"weights on {dev} and TRITON_INTERPRET is unset (real kernels need CUDA)"


def weight_only_reason(module: QuantLinear) -> str | None:
    """Why ``module`` cannot run the weight-only real kernel (None: it can)."""
    q = module.qweight
    if q is None:
        return "no quantized weight (16-bit layer)"
    if q.format != "int" or q.codes is None:
        return f"weight format {q.format!r} has no real kernel (only 'int')"
    if q.granularity not in ("group", "channel"):
        return f"granularity {q.granularity!r} has no real kernel (only group/channel)"
    if q.bits not in SUPPORTED_BITS:
        return f"bits={q.bits} has no real kernel (valid: {SUPPORTED_BITS})"
    if q.group_size != module.in_features and q.group_size not in SUPPORTED_GROUP_SIZES:
        return f"group_size={q.group_size} has no real kernel (valid: {SUPPORTED_GROUP_SIZES} or per-channel)"
    if module.in_features % q.group_size:
        return f"in_features={module.in_features} is not a multiple of group_size={q.group_size}"
    if module.weight.dtype not in REAL_DTYPES:
        return f"model dtype {module.weight.dtype} has no real kernel"
    return _runnable_device(module)


def w8a8_reason(module: QuantLinear) -> str | None:
    """Why ``module`` (with an activation quantizer) cannot run the INT8 W8A8 kernel."""
    q, a = module.qweight, module.act_quant
    s = getattr(a, "spec", None)
    if s is None or s.format != "int" or s.bits != 8 or not s.dynamic or s.granularity != "token" or not s.sym:
        return "activation quantization is not dynamic per-token symmetric INT8"
    if s.clip_ratio != 1.0:
        return f"activation clip_ratio={s.clip_ratio} has no real kernel"
    if q is None or q.format != "int" or q.codes is None or q.bits != 8:
        return "W8A8 real kernel needs INT8 weights"
    if q.granularity != "channel" or not q.sym or not bool((q.zero == 128).all()):
        return "W8A8 real kernel needs symmetric per-channel weights (zero == 128)"
    if module.weight.dtype not in (torch.float16, torch.bfloat16):
        return f"model dtype {module.weight.dtype} has no W8A8 kernel (fp16/bf16)"
    return _runnable_device(module)


def make_real(module: QuantLinear) -> tuple[nn.Module | None, str]:
    """(real module or None, "real" or "fake: reason") for one QuantLinear."""
    dtype = module.weight.dtype
    bias = None if module.bias is None else module.bias.data
    q = module.qweight
    if module.act_quant is not None:
        reason = w8a8_reason(module)
        if reason:
            return None, f"fake: {reason}"
        wq = (q.codes.to(torch.int16) - 128).to(torch.int8).to(module.weight.device)
        return RealW8A8Linear(wq, q.scale.reshape(-1).to(wq.device), bias, dtype), "real"
    reason = weight_only_reason(module)
    if reason:
        return None, f"fake: {reason}"
    dev = module.weight.device
    packed = kernels.pack(q.codes.to(dev), q.scale.to(dev), q.zero.to(dev), q.bits, q.group_size, q.sym)
    return RealWeightOnlyLinear(packed, bias, dtype), "real"


def to_real(model: nn.Module) -> dict[str, str]:
    """Swap eligible QuantLinear modules for real ones in place; report every quantized layer."""
    report: dict[str, str] = {}
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    for name, module in targets:
        real, status = make_real(module)
        report[name] = status
        if real is None:
            log.info("layer %s stays fake: %s", name, status[len("fake: "):])
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, real)
    for name, module in model.named_modules():
        if type(module).__name__ == "QuantConv2d":
            report[name] = "fake: conv2d has no real kernel"
    n_real = sum(v == "real" for v in report.values())
    log.info("real mode: %d of %d quantized layers run real kernels", n_real, len(report))
    return report
