"""Prints why the fused MMA kernel's non-swap tile (never dispatched: M > 64 runs dequant + matmul) fails."""
import torch

from bitsweep.kernels import wo_mma
from bitsweep.kernels.packing import random_packed
from bitsweep.kernels.weight_only import weight_only_linear

pw, *_ = random_packed(200, 1024, 4, 128, device="cuda", seed=1)
x = torch.randn(300, 1024, device="cuda", dtype=torch.float16)
cfg = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_W=wo_mma._fit_block_w(pw, 16), SPLIT_K=1, GROUP_M=8, SWAP=False,
           num_warps=4, NUM_STAGES=3)
try:
    weight_only_linear(x, pw, path="mma", config=cfg)
    print("non-swap mma ran")
except Exception as e:  # noqa: BLE001
    print("non-swap mma failed:", type(e).__name__, str(e).strip().splitlines()[-1][:300])
