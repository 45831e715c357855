"""Shared Triton device helpers: tile ordering, the split-K output write, the fp32-accumulating dot."""
import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """L2-friendly tile order: GROUP_M row tiles sweep the columns together -> (pid_m, pid_n)."""
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * n_n
    first_m = (pid // width) * GROUP_M
    gm = tl.minimum(n_m - first_m, GROUP_M)
    return first_m + (pid % width) % gm, (pid % width) // gm


@triton.jit
def store_or_add(optr, y, mask, SPLIT_K: tl.constexpr):
    """Write fp32 partial ``y``: a plain store without split-K, else an atomic add."""
    if SPLIT_K == 1:
        tl.store(optr, y.to(optr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(optr, y, mask=mask, sem="relaxed")


@triton.jit
def dot_acc(acc, a, b, IEEE: tl.constexpr):
    """acc + a @ b in fp32; IEEE: exact fp32 products (fp32 activations) instead of tf32."""
    if IEEE:
        acc += tl.dot(a, b, out_dtype=tl.float32, input_precision="ieee")
    else:
        acc += tl.dot(a, b, out_dtype=tl.float32)
    return acc
