"""bitsweep kernels: Triton kernels, their pure-torch references, and bit packing.

Public API (each kernel has a same-signature reference in ``bitsweep.kernels.reference``):

* ``pack`` / ``unpack_codes`` / ``dequantize`` / ``PackedWeight`` (bitsweep.kernels.packing)
* ``weight_only_linear(x, packed, bias)``: W2/W3/W4/W8 x fp16/bf16/fp32, dispatch by M
* ``quantize_activation(x, fmt)``: per-token int8 / fp8-e4m3 quantization
* ``scaled_mm(xq, xs, wq, ws, bias, out_dtype)``: INT8 or FP8 GEMM with scale epilogue
* ``w8a8_linear(x, wq, ws, bias)``: quantize + scaled_mm

``kernels`` knows nothing about models or configs.
"""
from bitsweep.kernels._checkout import drop_checkout_root

drop_checkout_root()  # a checkout root on sys.path would shadow PyPI's `kernels`

# isort: split
from bitsweep.kernels.packing import PackedWeight, PackingError, dequantize, pack, unpack_codes
from bitsweep.kernels.w8a8 import quantize_activation, scaled_mm, w8a8_linear
from bitsweep.kernels.weight_only import KernelInputError, weight_only_linear

__all__ = ["PackedWeight", "PackingError", "KernelInputError", "dequantize", "pack", "unpack_codes",
           "weight_only_linear", "quantize_activation", "scaled_mm", "w8a8_linear"]
