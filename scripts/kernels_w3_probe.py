"""W3 g128 8192^2 at M=16 on the GPU: where the time goes (kernels/NOTES.md run 9).

Prints one JSON line: the vectorized 3-bit dequantize pass alone, torch's F.linear at M=16 on the
dequantized weight, the tuned dispatch (weight_only_linear), each on rotating copies, and the tuner's
choice (fused GEMM or dequant + matmul). Usage: python scripts/kernels_w3_probe.py
"""
import torch,json
from bitsweep.kernels.packing import random_packed
from bitsweep.kernels import dequant as D, weight_only as W
from bitsweep.kernels._timing import gpu_time_rotating_us as R
from bitsweep.kernels._tuning import _cache
pws=[random_packed(8192,8192,3,128,device="cuda",seed=i)[0] for i in range(12)]
x=torch.randn(16,8192,device="cuda",dtype=torch.float16)
w=D.dequantize(pws[0],torch.float16)
r={}
r["dequant_w3_us"]=R([lambda p=p:D.dequantize(p,torch.float16) for p in pws],n=24)
r["linear_m16_us"]=R([lambda:torch.nn.functional.linear(x,w)],n=24)
r["auto_m16_us"]=R([lambda p=p:W.weight_only_linear(x,p) for p in pws],n=24)
r["cache"]={k:v for k,v in _cache().items() if "gemm_or" in k}
print(json.dumps(r))
