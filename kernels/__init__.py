"""bitsweep kernels: Triton kernels, their pure-torch references, and bit packing.

Public API (each kernel has a same-signature reference in ``kernels.reference``):

* ``pack`` / ``unpack_codes`` / ``dequantize`` / ``PackedWeight`` (kernels.packing)
* ``weight_only_linear(x, packed, bias)``: W2/W3/W4/W8 x fp16/bf16/fp32, dispatch by M
* ``quantize_activation(x, fmt)``: per-token int8 / fp8-e4m3 quantization
* ``scaled_mm(xq, xs, wq, ws, bias, out_dtype)``: INT8 or FP8 GEMM with scale epilogue
* ``w8a8_linear(x, wq, ws, bias)``: quantize + scaled_mm

``kernels`` knows nothing about models or configs.
"""
from kernels.packing import PackedWeight, PackingError, dequantize, pack, unpack_codes
from kernels.w8a8 import quantize_activation, scaled_mm, w8a8_linear
from kernels.weight_only import KernelInputError, weight_only_linear

__all__ = ["PackedWeight", "PackingError", "KernelInputError", "dequantize", "pack", "unpack_codes",
           "weight_only_linear", "quantize_activation", "scaled_mm", "w8a8_linear"]
