"""Fused W4A16 GEMM for large M on Hopper (Gluon): dequantize straight into wgmma's A registers.

Contract: ``wgmma_gemm(x2 [M, K], pw, bias, cfg) -> [M, N]`` in x2's dtype, the same
function as ``bitsweep.kernels.reference.weight_only_linear`` with the weight rounded once to
fp16 (bf16 activations: fp16 dequant, then one rounding to bf16), i.e. the same numbers
as the ``dequant`` path (dequantize + torch matmul). ``supported(pw, x2)`` says whether
this kernel takes the layout; it needs a CUDA device of compute capability 9.x (wgmma,
TMA) and is never run under the interpreter.

Why (kernels/NOTES.md, run 8): above M = 64 the weight-only path was one dequantize pass
to an N x K fp16 buffer, then cuBLAS. At M = 1024 that pass (it writes 2 bytes per weight)
costs 25-35% of cuBLAS's own time, so the best ratio was ~0.76x. Triton's ``tl.dot`` sends
a dequantized tile through shared memory (``st.shared`` + ``ldmatrix``) and measured 0.47x.

Design (swap-AB): a program owns BN = 16 * WARPS weight rows (4 or 8 warps) x BM tokens and
computes ``acc[BN, BM] += W[BN, BK] @ X[BM, BK]^T`` with ``warpgroup_mma``: the dequantized
weight is the A operand *in registers*, X the B operand in shared memory. X and the packed
words arrive by TMA in a STAGES-deep ring (one mbarrier per stage); warp w owns weight rows
16w .. 16w + 15 (wgmma's M). Programs sharing a weight tile are launched together.

The register A operand of ``m64nNk16`` gives lane (g, t) = (lane // 4, lane % 4) rows
g and g + 8 and, in each 16-column chunk, columns 2t, 2t + 1, 2t + 8, 2t + 9. In the
half-word paired layout (kernels/packing.py) column pair (2i, 2i + 1) is pair i % 4 of
word i // 4, so over a BK = 64 step the lane needs pair t of all 8 words of its two rows:
the words are read from shared memory as [BN, 8] broadcast over a pair axis t (the quad's
lanes; ``_word_layout``), one PTX block per element extracts pair t (shift 4t, ``lop3`` with the
fp16 magic number, exact centring, one ``fma`` with scale / -szero) into two fp16, and
``join`` + ``reshape`` give exactly the [BN, 64] A-operand layout: the final
``convert_layout(..., assert_trivial=True)`` is checked at compile time to move no data.
The K loop keeps the previous step's wgmma in flight while it dequantizes the next step
(``wait(1)`` after each issue, ``_mainloop``); tests/test_kernels_wgmma.py checks the SASS for
the overlap and for writes to an in-flight A register (the run-8 hazard). Scales are loaded one
iteration ahead. ``WS``: a warp-specialized variant whose one-warp load partition issues the TMA
loads (``_wgmma_ws_kernel``); the tuner has both.
"""
from __future__ import annotations

import functools

import torch
import triton

from bitsweep.kernels.packing import PackedWeight

try:  # Gluon ships with Triton >= 3.5; without it this path is simply unavailable
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                   warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    # Triton 3.6 (the H100 image) names the TMA load async_copy_global_to_shared, 3.9 async_load
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    HAVE_GLUON = True
except Exception:  # noqa: BLE001 - any import problem means: not available
    HAVE_GLUON = False

BK = 64  # input columns per step (8 words of 4-bit codes per row)
BN_MIN = 64  # weight rows per program: 16 per warp, 4 or 8 warps
# tokens per program (wgmma's N): the tuner uses 128 and 256; 8..64 work (H100 probe, M = 1 / 16,
# results/kernels/wgmma_probe11_small_m_h100.json) but are slower than the GEMV kernels there
BMS = (8, 16, 32, 64, 128, 256)


def _dequant_pair_asm(bf16: bool) -> str:
    """PTX: $0 = the two values of pair ``$2 / 4`` of word $1, dequantized: (q - 8) * $3 - $4 (fp16 math, one
    rounding; bf16: then rounded once to bf16), packed as one b32 (slot 2t low, 2t + 1 high: the A-operand
    register). Operands: =r, r word, r shift (4 * pair), h scale, h szero."""
    lines = ["{", ".reg .b32 h, t, s2, z2, c;", ".reg .b16 nz;", "shr.b32 t, $1, $2;", "mov.b32 c, 0x64086408;",
             "lop3.b32 h, t, 0x000F000F, 0x64006400, 0xEA;",  # (t & mask) | magic: half2(1024 + q)
             "sub.f16x2 h, h, c;",  # - half2(1032, 1032): q - 8, exact
             "neg.f16 nz, $4;", "mov.b32 s2, {$3, $3};", "mov.b32 z2, {nz, nz};",
             "fma.rn.f16x2 h, h, s2, z2;"]
    if bf16:
        lines += [".reg .b16 lo, hi;", ".reg .f32 a, b;", "mov.b32 {lo, hi}, h;", "cvt.f32.f16 a, lo;",
                  "cvt.f32.f16 b, hi;", "cvt.rn.bf16x2.f32 h, b, a;"]
    lines += ["mov.b32 $0, h;", "}"]
    return "\n".join(lines)


if HAVE_GLUON:
    def _word_layout(warps: int):
        """[BN, 8, 4] int32 (BN = 16 * warps): (row, word of the step, pair t) -> the lane of the A operand that
        needs it. Registers: the 8 words, then row + 8; lanes: t (the replicated axis), then g = rows 0..7;
        warps: 16-row blocks."""
        return gl.DistributedLinearLayout(
            reg_bases=[[0, 1, 0], [0, 2, 0], [0, 4, 0], [8, 0, 0]],
            lane_bases=[[0, 0, 1], [0, 0, 2], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
            warp_bases=[[16 << i, 0, 0] for i in range(warps.bit_length() - 1)],
            block_bases=[], shape=[16 * warps, 8, 4])

    @gluon.jit
    def _load_scales(s_ptr, sz_ptr, rows1, step, G, GROUP: gl.constexpr, L3: gl.constexpr):
        """(scale, szero) of K step ``step``: [BN, 1, 1], or [BN, 8, 1] for groups smaller than BK."""
        if GROUP >= 64:
            g = (step * 64) // GROUP
            s = gl.load(s_ptr + rows1 * G + g)
            z = gl.load(sz_ptr + rows1 * G + g)
            s = gl.expand_dims(gl.expand_dims(s, 1), 2)
            z = gl.expand_dims(gl.expand_dims(z, 1), 2)
        else:
            c2 = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))
            off = gl.expand_dims(rows1, 1) * G + (step * 64 + c2 * 8)[None, :] // GROUP
            s = gl.expand_dims(gl.load(s_ptr + off), 2)
            z = gl.expand_dims(gl.load(sz_ptr + off), 2)
        return s, z

    @gluon.jit
    def _dequant_a(q, s, z, shift, a_layout: gl.constexpr, ASM: gl.constexpr, OUT_DTYPE: gl.constexpr):
        """[BN, 8, 1] words (broadcast over the pair axis) -> A operand [BN, 64] in ``a_layout``. No data
        movement: the packed halves are split and re-joined (LLVM folds it back to the packed registers) and
        the layout change is checked at compile time to be trivial."""
        v = gl.inline_asm_elementwise(ASM, "=r,r,r,h,h", [q, shift, s, z], dtype=gl.int32, is_pure=True, pack=1)
        lo = v.to(gl.int16)
        hi = (v >> 16).to(gl.int16)
        w = gl.reshape(gl.join(lo, hi), [shift.shape[0], 64]).to(OUT_DTYPE, bitcast=True)  # column 8c + 2t + e
        return gl.convert_layout(w, a_layout, assert_trivial=True)

    @gluon.jit
    def _refill(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, j, n_k, STAGES: gl.constexpr,
                nbytes: gl.constexpr):
        """TMA loads of K step j (if j < n_k) into stage j % STAGES."""
        pred = j < n_k
        js = j % STAGES
        mbarrier.expect(bars.index(js), nbytes, pred=pred)
        _tma_load(x_desc, [off_m, j * 64], bars.index(js), x_smem.index(js), pred=pred)
        _tma_load(w_desc, [off_n, j * 8], bars.index(js), w_smem.index(js), pred=pred)

    @gluon.jit
    def _load_q(w_smem, bars, k, STAGES: gl.constexpr, L3: gl.constexpr):
        """Wait for K step k's tiles, then load its words [BN, 8, 1] (broadcast over the pair axis)."""
        st = k % STAGES
        mbarrier.wait(bars.index(st), (k // STAGES) & 1)
        return gl.expand_dims(w_smem.index(st).load(gl.SliceLayout(2, L3)), 2)

    @gluon.jit
    def _release(x_desc, w_desc, x_smem, w_smem, bars, empty, off_m, off_n, k, n_k, STAGES: gl.constexpr,
                 nbytes: gl.constexpr, WS: gl.constexpr, pred=True):
        """Step k's stage is free (its wgmma was waited for): WS signals the load partition (Gluon's arrive
        syncs the partition's warps first, then one thread arrives); else this program refills it with
        step k + STAGES itself."""
        if WS:  # the words were read with generic loads: order them before the load warp's TMA rewrites the stage
            fence_async_shared()
            mbarrier.arrive(empty.index(k % STAGES), count=1, pred=pred)
        else:
            _refill(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, gl.where(pred, k + STAGES, n_k), n_k, STAGES,
                    nbytes)

    @gluon.jit
    def _mainloop(x_desc, w_desc, x_smem, w_smem, bars, empty, s_ptr, sz_ptr, off_m, off_n, n_k, G,
                  BM: gl.constexpr, GROUP: gl.constexpr, STAGES: gl.constexpr, ASM: gl.constexpr,
                  L3: gl.constexpr, WARPS: gl.constexpr, U: gl.constexpr, WS: gl.constexpr):
        """acc [BN, BM] fp32 (mma layout) of the program's tile over all n_k K steps.

        Pipelined with one wgmma in flight behind the one just issued: per step k, dequantize step k (its words
        were loaded from shared memory a step ahead) while wgmma k - 1 runs, issue wgmma k (it queues behind
        k - 1 on the same accumulator), then ``wait(1)``: wgmma k - 1 has retired, so its A registers may be
        reused and its stage released. The run-8 loop waited for every wgmma (``wait(0)``) before the next
        step's dequant, and ptxas then placed every dequant after that wait: the tensor core idled through
        each dequant (SASS; ncu: 58-68% tensor pipe; NOTES.md run 10). tests/test_kernels_wgmma.py checks in
        the SASS that every dequant fma runs with a wgmma group in flight and none writes an in-flight A
        register. U steps per iteration share one scale prefetch (n_k % U == 0)."""
        BN_: gl.constexpr = 16 * WARPS
        gl.assume(n_k >= 2)  # K % 128 == 0 (supported): no zero-trip path around the loop for ptxas to see
        dtype: gl.constexpr = x_smem.dtype
        nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                            instr_shape=[16, BM, 16])
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout, k_width=2)
        rows1 = off_n + gl.arange(0, BN_, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))
        t3 = gl.expand_dims(gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3))), 0), 1)
        shift = gl.full([BN_, 8, 4], 0, gl.int32, L3) + t3 * 4

        s0n, z0n = _load_scales(s_ptr, sz_ptr, rows1, 0, G, GROUP, L3)
        s1n, z1n = _load_scales(s_ptr, sz_ptr, rows1, 1, G, GROUP, L3)
        s2n, z2n = s1n, z1n
        s3n, z3n = s1n, z1n
        if U == 4:
            s2n, z2n = _load_scales(s_ptr, sz_ptr, rows1, 2, G, GROUP, L3)
            s3n, z3n = _load_scales(s_ptr, sz_ptr, rows1, 3, G, GROUP, L3)
        acc = gl.zeros([BN_, BM], gl.float32, mma_layout)
        a_p = gl.zeros([BN_, 64], dtype, a_layout)  # the previous step's A operand
        q = _load_q(w_smem, bars, 0, STAGES, L3)
        for i in range(0, n_k, U):
            s0, z0, s1, z1, s2, z2, s3, z3 = s0n, z0n, s1n, z1n, s2n, z2n, s3n, z3n
            last = n_k - 1
            s0n, z0n = _load_scales(s_ptr, sz_ptr, rows1, gl.minimum(i + U, last), G, GROUP, L3)
            s1n, z1n = _load_scales(s_ptr, sz_ptr, rows1, gl.minimum(i + U + 1, last), G, GROUP, L3)
            if U == 4:
                s2n, z2n = _load_scales(s_ptr, sz_ptr, rows1, gl.minimum(i + U + 2, last), G, GROUP, L3)
                s3n, z3n = _load_scales(s_ptr, sz_ptr, rows1, gl.minimum(i + U + 3, last), G, GROUP, L3)
            for u in gl.static_range(U):
                if u == 0:
                    s, z = s0, z0
                elif u == 1:
                    s, z = s1, z1
                elif u == 2:
                    s, z = s2, z2
                else:
                    s, z = s3, z3
                k = i + u
                # step k's dequant runs while step k - 1's wgmma does; its words were loaded a step ahead
                a = _dequant_a(q, s, z, shift, a_layout, ASM, dtype)
                q = _load_q(w_smem, bars, gl.minimum(k + 1, last), STAGES, L3)  # the last step re-reads its own
                acc = warpgroup_mma(a, x_smem.index(k % STAGES).permute((1, 0)), acc, is_async=True)
                # wgmma k - 1 done (k queued behind it on the same accumulator): its A registers and stage are free
                acc, a_p = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_p))
                _release(x_desc, w_desc, x_smem, w_smem, bars, empty, off_m, off_n, k - 1, n_k, STAGES, nbytes, WS,
                         pred=k > 0)
                a_p = a
        acc, a_p = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a_p))
        _release(x_desc, w_desc, x_smem, w_smem, bars, empty, off_m, off_n, n_k - 1, n_k, STAGES, nbytes, WS)
        return acc

    @gluon.jit
    def _epilogue(acc, out_ptr, bias_ptr, off_m, off_n, M, N, stride_om, BM: gl.constexpr, HAS_BIAS: gl.constexpr,
                  WARPS: gl.constexpr):
        """out[off_m:, off_n:] = acc^T (+ bias), masked to M x N, in out's dtype."""
        BN_: gl.constexpr = 16 * WARPS
        out_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[8, 1],
                                                    threads_per_warp=[BN_ // 8, 32 // (BN_ // 8)],
                                                    warps_per_cta=[1, WARPS], order=[0, 1])
        res = gl.convert_layout(acc, out_layout)
        on = off_n + gl.arange(0, BN_, layout=gl.SliceLayout(1, out_layout))
        om = off_m + gl.arange(0, BM, layout=gl.SliceLayout(0, out_layout))
        if HAS_BIAS:
            res = res + gl.expand_dims(gl.load(bias_ptr + on).to(gl.float32), 1)
        ptrs = out_ptr + gl.expand_dims(om, 0) * stride_om + gl.expand_dims(on, 1)
        mask = (gl.expand_dims(om, 0) < M) & (gl.expand_dims(on, 1) < N)
        gl.store(ptrs, res.to(out_ptr.dtype.element_ty), mask=mask)

    @gluon.jit
    def _tile(M, WARPS: gl.constexpr, BM: gl.constexpr):
        """(off_m, off_n) of this program: the programs sharing one weight tile run together (one HBM read)."""
        num_m = gl.cdiv(M, BM)
        pid = gl.program_id(0)
        return (pid % num_m) * BM, (pid // num_m) * (16 * WARPS)

    @gluon.jit
    def _ring(x_desc, w_desc, BM: gl.constexpr, STAGES: gl.constexpr, WARPS: gl.constexpr):
        """The STAGES-deep shared-memory ring: x tiles [BM, 64] and packed words [16 * WARPS, 8] per stage."""
        x_smem = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BM, 64], x_desc.layout)
        w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, 16 * WARPS, 8], w_desc.layout)
        return x_smem, w_smem

    @gluon.jit
    def _wgmma_kernel(x_desc, w_desc, s_ptr, sz_ptr, out_ptr, bias_ptr, M, N, KW, G, stride_om,
                      BM: gl.constexpr, GROUP: gl.constexpr, STAGES: gl.constexpr, HAS_BIAS: gl.constexpr,
                      ASM: gl.constexpr, L3: gl.constexpr, WARPS: gl.constexpr, U: gl.constexpr):
        off_m, off_n = _tile(M, WARPS, BM)
        n_k = KW // 8
        x_smem, w_smem = _ring(x_desc, w_desc, BM, STAGES, WARPS)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
        for i in gl.static_range(STAGES):
            _refill(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, i, n_k, STAGES, nbytes)
        acc = _mainloop(x_desc, w_desc, x_smem, w_smem, bars, bars, s_ptr, sz_ptr, off_m, off_n, n_k, G,
                        BM, GROUP, STAGES, ASM, L3, WARPS, U, False)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))
        _epilogue(acc, out_ptr, bias_ptr, off_m, off_n, M, N, stride_om, BM, HAS_BIAS, WARPS)

    @gluon.jit
    def _ws_load(x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, n_k, STAGES: gl.constexpr):
        """Load partition (one warp): TMA of K step j into stage j % STAGES once the MMA partition freed it."""
        nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
        for j in range(n_k):
            mbarrier.wait(empty.index(j % STAGES), ((j // STAGES) & 1) ^ 1)  # a fresh barrier passes phase 1 at once
            _refill(x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, j, n_k, STAGES, nbytes)

    @gluon.jit
    def _ws_mma(x_desc, w_desc, x_smem, w_smem, ready, empty, s_ptr, sz_ptr, out_ptr, bias_ptr, off_m, off_n,
                M, N, n_k, G, stride_om, BM: gl.constexpr, GROUP: gl.constexpr, STAGES: gl.constexpr,
                HAS_BIAS: gl.constexpr, ASM: gl.constexpr, L3: gl.constexpr, WARPS: gl.constexpr, U: gl.constexpr):
        """MMA partition (the default one, WARPS warps): dequant + wgmma over the ring, then the epilogue."""
        acc = _mainloop(x_desc, w_desc, x_smem, w_smem, ready, empty, s_ptr, sz_ptr, off_m, off_n, n_k, G,
                        BM, GROUP, STAGES, ASM, L3, WARPS, U, True)
        _epilogue(acc, out_ptr, bias_ptr, off_m, off_n, M, N, stride_om, BM, HAS_BIAS, WARPS)

    @gluon.jit
    def _wgmma_ws_kernel(x_desc, w_desc, s_ptr, sz_ptr, out_ptr, bias_ptr, M, N, KW, G, stride_om,
                         BM: gl.constexpr, GROUP: gl.constexpr, STAGES: gl.constexpr, HAS_BIAS: gl.constexpr,
                         ASM: gl.constexpr, L3: gl.constexpr, WARPS: gl.constexpr, U: gl.constexpr):
        """Warp-specialized: a one-warp load partition issues the TMA loads, so the MMA warps never stop for
        a CTA barrier before a refill (the non-WS kernel's 8-warp variant spent 55% of its stall cycles
        there, ncu, NOTES.md run 10)."""
        off_m, off_n = _tile(M, WARPS, BM)
        n_k = KW // 8
        x_smem, w_smem = _ring(x_desc, w_desc, BM, STAGES, WARPS)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        gl.warp_specialize([
            (_ws_mma, (x_desc, w_desc, x_smem, w_smem, ready, empty, s_ptr, sz_ptr, out_ptr, bias_ptr, off_m, off_n,
                       M, N, n_k, G, stride_om, BM, GROUP, STAGES, HAS_BIAS, ASM, L3, WARPS, U)),
            (_ws_load, (x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, n_k, STAGES)),
        ], [1], [24])  # the load warp needs few registers; the MMA warps get the rest


def _cc9(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] == 9


def supported(pw: PackedWeight, x2: torch.Tensor) -> bool:
    """4-bit codes, N % 64 == 0, K % 128 == 0, group 32/64/128/per-channel (a multiple of 64 or a divisor),
    fp16/bf16 x with 16-byte aligned rows, on a compute capability 9.x GPU with Gluon available."""
    if not (HAVE_GLUON and x2.is_cuda and pw.qweight.is_cuda) or pw.bits != 4:
        return False
    k, n = pw.in_features, pw.out_features
    g = pw.group_size
    return (x2.dtype in (torch.float16, torch.bfloat16) and n % BN_MIN == 0 and k % (2 * BK) == 0
            and (g % BK == 0 or BK % g == 0) and g % 8 == 0 and x2.stride(1) == 1
            and (x2.stride(0) * x2.element_size()) % 16 == 0 and x2.data_ptr() % 16 == 0
            and pw.qweight.is_contiguous() and pw.scale.is_contiguous() and pw.szero.is_contiguous()
            and _cc9(x2.device))


def default_config(m: int, n: int | None = None) -> dict:
    """Untuned: 8 warps (128 weight rows) where N allows, else 4; two K steps per iteration."""
    w8 = n is not None and n % 128 == 0
    return dict(BM=256 if m > 128 else 128, STAGES=4 if w8 else 3, WARPS=8 if w8 else 4, U=2)


def candidates(m: int, n: int) -> list[dict]:
    """The tuner's configs (H100 probes, results/kernels/wgmma_probe10_h100.json and wgmma_probe10_m256_h100.json,
    NOTES.md run 10): two K steps per iteration; BM = 256 tokens with 8 warps (128 weight rows, N % 128 == 0)
    and 4 stages, plain and warp-specialized (WS), or 4 warps (64 rows, any N % 64 == 0); for M <= 384 also
    BM = 128 (4 warps, or WS with 8), which keeps more SMs busy there. Five stages, four-step iterations and 3
    stages with 8 warps measured slower on every bench shape at M = 1024 (U = 4 also needs more registers than
    the SM has with BM = 256)."""
    w8 = n % 128 == 0
    out = [dict(BM=256, STAGES=3, WARPS=4, U=2)]
    if m <= 384:
        out.append(dict(BM=128, STAGES=4, WARPS=4, U=2))
        if w8:
            out.append(dict(BM=128, STAGES=4, WARPS=8, U=2, WS=True))
    if w8:
        out += [dict(BM=256, STAGES=4, WARPS=8, U=2), dict(BM=256, STAGES=4, WARPS=8, U=2, WS=True)]
    return out


@functools.lru_cache(maxsize=None)
def _x_layout(bm: int, bf16: bool):
    return gl.NVMMASharedLayout.get_default_for([bm, BK], gl.bfloat16 if bf16 else gl.float16)


@functools.lru_cache(maxsize=None)
def _w_layout(bn: int):
    return gl.NVMMASharedLayout.get_default_for([bn, 8], gl.int32)


def ws_maxnreg(warps: int) -> int:
    """Registers per thread at launch for the warp-specialized kernel: its WARPS MMA warps plus the load
    warp's warpgroup share the SM's 64K registers (one program per SM); the load warps give theirs up
    (setmaxnreg), so the MMA warps get 240 with 8 warps."""
    return min(240, 65536 // (32 * (warps + 4)) // 8 * 8)


def wgmma_gemm(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: dict) -> torch.Tensor:
    """y [M, N] = x2 [M, K] @ dequant(pw).T + bias (see the module docstring); ``supported`` must hold.
    ``cfg``: BM, STAGES, WARPS, U, and WS (warp-specialized kernel, default off)."""
    m, k = x2.shape
    n = pw.out_features
    bm, stages, warps = int(cfg["BM"]), int(cfg["STAGES"]), int(cfg.get("WARPS", 4))
    ws = bool(cfg.get("WS", False))
    bn = 16 * warps
    unknown = set(cfg) - {"BM", "STAGES", "WARPS", "U", "WS"}
    if unknown or bm not in BMS or not 2 <= stages <= 16 or warps not in (4, 8) or n % bn:
        raise ValueError(f"wo_wgmma config {cfg}: keys BM, STAGES, WARPS, U, WS; BM must be one of {BMS}, "
                         f"STAGES 2..16, WARPS 4 or 8 (with N % (16 * WARPS) == 0; N = {n})")
    u = int(cfg.get("U", 4))
    if u not in (2, 4):
        raise ValueError(f"wo_wgmma config {cfg}: U must be 2 or 4")
    if (k // BK) % u:
        u = 2  # supported() guarantees K % 128 == 0
    bf16 = x2.dtype == torch.bfloat16
    kw = pw.qweight.shape[1]
    x_desc = TensorDescriptor(x2, [m, k], [x2.stride(0), 1], [bm, BK], _x_layout(bm, bf16))
    w_desc = TensorDescriptor(pw.qweight, [n, kw], [kw, 1], [bn, 8], _w_layout(bn))
    out = torch.empty((m, n), device=x2.device, dtype=x2.dtype)
    grid = (triton.cdiv(m, bm) * (n // bn),)
    kernel = _wgmma_ws_kernel if ws else _wgmma_kernel
    extra = dict(maxnreg=ws_maxnreg(warps)) if ws else {}
    kernel[grid](x_desc, w_desc, pw.scale, pw.szero, out, bias if bias is not None else out,
                 m, n, kw, pw.num_groups, out.stride(0),
                 BM=bm, GROUP=pw.group_size, STAGES=stages, HAS_BIAS=bias is not None,
                 ASM=_dequant_pair_asm(bf16), L3=_word_layout(warps), WARPS=warps,
                 U=u, num_warps=warps, **extra)
    return out
