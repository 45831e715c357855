"""GPU correctness sweep for bitsweep kernels (fresh random inputs, every path): prints a table, exits 1 on failure."""
import sys

import torch

from bitsweep.kernels import reference as R
from bitsweep.kernels.packing import random_packed
from bitsweep.kernels.w8a8 import quantize_activation, scaled_mm
from bitsweep.kernels.weight_only import weight_only_linear


def main() -> int:
    bad = 0
    tol = {torch.float16: 3e-3, torch.bfloat16: 1.5e-2, torch.float32: 1e-4}
    for bits in (2, 3, 4, 8):
        for g, k in ((32, 256), (128, 1024), (None, 1000)):
            g = g or k
            for dtype in (torch.float16, torch.bfloat16) + ((torch.float32,) if bits in (4, 8) else ()):
                pw, *_ = random_packed(200, k, bits, g, device="cuda", seed=bits + k, fractional_zero=True)
                for m in (1, 77):
                    for path in (None, "gemv3", "gemv", "gemv_plain", "gemv_v1", "gemm", "dequant"):
                        if path in ("gemv3", "gemv", "gemv_plain", "gemv_v1") and m > 4:
                            continue
                        x = torch.randn(m, k, device="cuda", dtype=dtype)
                        b = torch.randn(200, device="cuda", dtype=dtype)
                        y = weight_only_linear(x, pw, b, path=path)
                        r = R.weight_only_linear(x, pw, b)
                        e = ((y.float() - r.float()).norm() / r.float().norm()).item()
                        ok = e < tol[dtype]
                        bad += not ok
                        if not ok or m == 1:
                            print(f"w{bits} g{g} K={k} {dtype} M={m} path={path}: rel={e:.2e} {'OK' if ok else 'FAIL'}")
    for fmt in ("int8", "fp8"):
        for m, k, n in ((1, 256, 64), (33, 1000, 200), (300, 4096, 512)):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            q, s = quantize_activation(x, fmt)
            rq, rs = (R.quantize_activation_int8 if fmt == "int8" else R.quantize_activation_fp8)(x)
            eq = (q.float() - rq.float()).abs().max().item()
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            wq, ws = (R.quantize_weight_int8 if fmt == "int8" else R.quantize_weight_fp8)(w)
            b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
            y = scaled_mm(q, s, wq, ws, b, torch.bfloat16)
            r = (R.int8_scaled_mm if fmt == "int8" else R.fp8_scaled_mm)(q, s, wq, ws, b, torch.bfloat16)
            e = ((y.float() - r.float()).norm() / r.float().norm()).item()
            ok = e < 1e-2 and eq == 0 and torch.allclose(s, rs)
            bad += not ok
            print(f"{fmt} M={m} K={k} N={n}: act max code diff={eq} mm rel={e:.2e} {'OK' if ok else 'FAIL'}")
    print("FAILURES:", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
