"""Launch the Gluon wgmma GEMM (kernels/wo_wgmma.py) for Nsight Compute, twice per case after compiling.

Usage: CASES='[[K, N, M, {"BM": 256, "STAGES": 4, "WARPS": 8, "U": 2}], ...]' \
       ncu --section SpeedOfLight --section WarpStateStats ... -k regex:wgmma python scripts/kernels_ncu_wgmma.py
(results/kernels/ncu_wgmma_run10_h100.txt; kernels/NOTES.md run 10).
"""
import json
import os

import torch

from bitsweep.kernels import wo_wgmma  # noqa: E402
from bitsweep.kernels.packing import random_packed  # noqa: E402

for k, n, m, cfg in json.loads(os.environ["CASES"]):
    pw = random_packed(n, k, 4, 128, device="cuda", seed=1)[0]
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    for _ in range(2):
        wo_wgmma.wgmma_gemm(x, pw, None, cfg)
    torch.cuda.synchronize()
    print(k, n, m, cfg, "done", flush=True)
