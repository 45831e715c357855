"""Launch each M=1 GEMV case once (after warm-up) for Nsight Compute: ``ncu ... python scripts/kernels_ncu_target.py``.

Cases: W4 g128 8192^2 (tuned default config), the same with DIAG=1 (weight loads only), W2 and W3 8192^2,
W4 4096^2, v3 (w4v3), the tensor-core GEMV at M=1 / 16 (tc1, tc16), and a pure 33.5 MB read kernel
(scripts/kernels_sweep.py) as the memory ceiling.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bitsweep.kernels.packing import random_packed  # noqa: E402
from bitsweep.kernels.weight_only import weight_only_linear  # noqa: E402
from bitsweep.kernels import gemv as G  # noqa: E402

os.environ.setdefault("BITSWEEP_TUNE", "0")
cases = os.environ.get("NCU_CASES", "w4,w4diag,w2,w3,w4s,read").split(",")
extra = json.loads(os.environ.get("NCU_CFG", "{}"))  # config overrides, e.g. {"BLOCK_N": 8}
for case in cases:
    if case == "read":
        import kernels_sweep as S
        nw = 8192 * 8192 // 8
        buf = torch.randint(-2 ** 30, 2 ** 30, (nw,), device="cuda", dtype=torch.int32)
        out = torch.empty(nw // 1024, device="cuda", dtype=torch.int32)
        for _ in range(2):
            S._read_kernel[(nw // 1024,)](buf, out, nw, BLOCK=1024, ITERS=1, UNROLL=False, num_warps=4)
        continue
    bits = {"w4": 4, "w4diag": 4, "w2": 2, "w3": 3, "w4s": 4, "w4v3": 4, "tc1": 4, "tc16": 4}[case]
    kn = 4096 if case == "w4s" else 8192
    pw, *_ = random_packed(kn, kn, bits, 128, device="cuda", seed=1)
    x = torch.randn(16 if case == "tc16" else 1, kn, device="cuda", dtype=torch.float16)
    cfg = dict(G.default_config(kn, pw), **extra)
    if case == "w4diag":
        cfg["DIAG"] = 1
    path = "gemv"
    if case == "w4v3":
        path, cfg = "gemv3", dict(BLOCK_N=16, TILE_W=128, SPLIT_K=1, num_warps=4, EVICT=True, PREFETCH=True)
    if case in ("tc1", "tc16"):
        from bitsweep.kernels import gemv_tc
        path, cfg = "gemv_tc", dict(gemv_tc.default_config(kn, pw), **extra)
    for _ in range(2):
        weight_only_linear(x, pw, path=path, config=cfg)
    torch.cuda.synchronize()
    print(case, cfg, flush=True)
