"""The half2 dequant PTX (kernels/_asm.py) run on CPU by a small emulator of the PTX it emits.

The interpreter cannot run inline PTX, so these tests execute the generated instruction lists
with an emulator of the handful of instructions they use (shr, lop3, f16x2 / bf16x2 sub, mul,
fma and add with one rounding, the f32 epilogue) and compare with exact integer / float64
references: the pair plan's in-place extraction and 2^-off centring must give exactly q - c.
The tensor-core GEMV's warp-collective block runs on 32 emulated lanes in lock step, with
``mma.sync`` done from the PTX ISA's fragment layouts, against a float64 reference for every
output register (one and two 16-row blocks per call; a swapped operand is caught).
"""
import re

import numpy as np
import pytest
import torch

from bitsweep.kernels import _asm, wo_mma
from bitsweep.kernels.packing import pack, values_per_word


def _to_half(bits16: int, bf16: bool) -> float:
    if bf16:
        return float(np.array([bits16 << 16], dtype=np.uint32).view(np.float32)[0])
    return float(np.array([bits16], dtype=np.uint16).view(np.float16)[0])


def _from_float(v: float, bf16: bool) -> int:
    t = torch.tensor([v], dtype=torch.float64).to(torch.bfloat16 if bf16 else torch.float16)
    return int(t.view(torch.int16).item()) & 0xFFFF


def _f32(v: float) -> float:
    return float(np.float32(v))


class Emu:
    """Registers are Python ints (b32 / b16) or floats (f32); $n operands come from ``ops``."""

    def __init__(self, ops: dict):
        self.r = dict(ops)

    def val(self, tok: str):
        tok = tok.strip()
        if tok in self.r:
            return self.r[tok]
        if tok.startswith("0f"):
            return float(np.array([int(tok[2:], 16)], dtype=np.uint32).view(np.float32)[0])
        return int(tok, 0)

    def half2(self, tok: str, bf16: bool) -> tuple[float, float]:
        v = self.val(tok)
        return _to_half(v & 0xFFFF, bf16), _to_half(v >> 16, bf16)

    def set_half2(self, dst: str, lo: float, hi: float, bf16: bool) -> None:
        self.r[dst] = _from_float(lo, bf16) | _from_float(hi, bf16) << 16

    def run(self, asm: str) -> dict:
        for line in asm.splitlines():
            line = line.strip().rstrip(";")
            if line in ("{", "}") or line.startswith(".reg"):
                continue
            op, rest = line.split(None, 1)
            if m := re.fullmatch(r"\{([\w$]+), ([\w$]+)\}, (\S+)", rest):  # mov.b32 {lo, hi}, r
                v = self.val(m.group(3))
                self.r[m.group(1)], self.r[m.group(2)] = v & 0xFFFF, v >> 16
                continue
            if m := re.fullmatch(r"(\S+), \{([\w$]+), ([\w$]+)\}", rest):  # mov.b32 r, {lo, hi}
                self.r[m.group(1)] = self.val(m.group(2)) | self.val(m.group(3)) << 16
                continue
            args = [a.strip() for a in rest.split(",")]
            d, a = args[0], args[1:]
            half = re.fullmatch(r"(?:sub|mul|fma|add)(?:\.rn)?\.(f16x2|bf16x2)", op)
            if op == "mov.b32":
                self.r[d] = self.val(a[0])
            elif op == "shr.b32":
                self.r[d] = (self.val(a[0]) & 0xFFFFFFFF) >> self.val(a[1])
            elif op == "neg.f16":
                self.r[d] = self.val(a[0]) ^ 0x8000
            elif op == "cvt.rn.bf16x2.f32":  # d = {bf16(a) in the high half, bf16(b) in the low half}
                self.r[d] = _from_float(self.val(a[0]), True) << 16 | _from_float(self.val(a[1]), True)
            elif op == "lop3.b32":
                assert a[3] == "0xEA", line  # (a & b) | c
                self.r[d] = (self.val(a[0]) & self.val(a[1])) | self.val(a[2])
            elif half:
                bf16 = half.group(1) == "bf16x2"
                xs = [self.half2(t, bf16) for t in a]
                kind = op.split(".")[0]
                res = []
                for i in range(2):
                    v = [x[i] for x in xs]
                    res.append({"sub": lambda: v[0] - v[1], "add": lambda: v[0] + v[1], "mul": lambda: v[0] * v[1],
                                "fma": lambda: v[0] * v[1] + v[2]}[kind]())  # exact in float64, one rounding
                self.set_half2(d, res[0], res[1], bf16)
            elif op in ("cvt.f32.f16", "cvt.f32.bf16"):
                self.r[d] = _to_half(self.val(a[0]), op.endswith("bf16"))
            elif op == "add.f32":
                self.r[d] = _f32(self.val(a[0]) + self.val(a[1]))
            elif op == "mul.f32":
                self.r[d] = _f32(self.val(a[0]) * self.val(a[1]))
            elif op == "fma.rn.f32":
                self.r[d] = _f32(self.val(a[0]) * self.val(a[1]) + self.val(a[2]))
            elif op == "neg.f32":
                self.r[d] = -self.val(a[0])
            else:
                raise NotImplementedError(line)
        return self.r


def _words(bits: int, seed: int, n_words: int = 64):
    """Random packed words and their codes [n_words, P] (half-word paired layout)."""
    p = values_per_word(bits)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2 ** bits, (1, n_words * p), generator=g, dtype=torch.uint8)
    codes[0, :p] = 2 ** bits - 1  # the extreme codes are covered
    codes[0, p:2 * p] = 0
    pw = pack(codes, torch.ones(1, 1), torch.zeros(1, 1), bits, n_words * p)  # per-channel: no padding
    return [int(w) & 0xFFFFFFFF for w in pw.qweight[0].tolist()], codes[0].view(n_words, p).tolist()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("bf16", [False, True])
def test_pair_plan_extracts_centred_codes_exactly(bits, bf16):
    """Every pair of every word comes out as exactly (q_2j - c, q_2j+1 - c) (c = 2^(b-1))."""
    if bits == 8 and bf16:
        pytest.skip("8-bit codes are not exact after the bf16 magic offset (never used)")
    words, codes = _words(bits, seed=bits + 7 * bf16)
    c = 2 ** (bits - 1)
    regs, consts = _asm.dequant_consts(bits, bf16)
    n_pairs = len(_asm.pair_plan(bits, bf16))
    for word, cw in zip(words, codes):
        emu = Emu({"$1": word})
        emu.run("\n".join(consts))
        shifted = {}
        for j in range(n_pairs):
            emu.run("\n".join(_asm.pair_lines("$1", j, bits, bf16, "h", "t", shifted)))
            assert emu.half2("h", bf16) == (cw[2 * j] - c, cw[2 * j + 1] - c), (bits, bf16, j, hex(word))


@pytest.mark.parametrize("bits,bf16,shifts", [(4, False, 1), (2, False, 1), (3, False, 1), (4, True, 3), (2, True, 2)])
def test_pair_plan_shift_count(bits, bf16, shifts):
    """The point of the plan: one shift per 4-bit / 2-bit word in fp16 (was 3 / 7)."""
    assert len({s for s, _, _ in _asm.pair_plan(bits, bf16) if s}) == shifts


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("bf16", [False, True])
def test_dot_word_asm_matches_float64(bits, bf16):
    """The v2 GEMV's whole per-word PTX (dequant + half2 dot + fp32 sum) on emulated registers."""
    words, codes = _words(bits, seed=11 * bits + bf16)
    c = 2 ** (bits - 1)
    asm = _asm.dot_word_asm(bits, bf16)
    gen = torch.Generator().manual_seed(bits)
    for word, cw in zip(words[:16], codes[:16]):
        x = torch.randn(len(cw), generator=gen).to(torch.bfloat16 if bf16 else torch.float16)
        xbits = x.view(torch.int16).to(torch.int64) & 0xFFFF
        ops = {"$1": word}
        for j in range(len(cw) // 2):
            ops[f"${2 + j}"] = int(xbits[2 * j]) | int(xbits[2 * j + 1]) << 16
        got = Emu(ops).run(asm)["$0"]
        want = sum((q - c) * float(xv) for q, xv in zip(cw, x.double()))
        tol = (0.03 if bf16 else 4e-3) * (1 + sum(abs(q - c) * abs(float(xv)) for q, xv in zip(cw, x)))
        assert abs(got - want) <= tol, (bits, bf16, got, want)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mma_dequant_asm_exact(bits):
    """The fused GEMM's dequant PTX gives fp16(( q - c) * s - sz) with one rounding, every slot."""
    words, codes = _words(bits, seed=5 * bits, n_words=16)
    c = 2 ** (bits - 1)
    p = values_per_word(bits)
    asm = wo_mma.dequant_asm(bits, False)
    s, sz = 0.0123, -0.0456
    s2 = _from_float(s, False) * 0x10001
    z2 = _from_float(-sz, False) * 0x10001
    sh, zh = _to_half(s2 & 0xFFFF, False), _to_half(z2 & 0xFFFF, False)
    for word, cw in zip(words, codes):
        out = Emu({f"${p}": word, f"${p + 1}": s2, f"${p + 2}": z2}).run(asm)
        for slot in range(p):
            want = float(np.float16((cw[slot] - c) * sh + zh))
            assert _to_half(out[f"${slot}"], False) == want, (bits, slot)


def test_mma_words_asm_uses_the_plan():
    """The tensor-core GEMV's block: 1 shift per 4-bit word and row in fp16 (4 words x 2 rows)."""
    asm = _asm.mma_words_asm(4, False, False, True)
    assert asm.count("shr.b32") == 8
    assert asm.count("lop3.b32") == 32 and asm.count("fma.rn.f16x2") == 32 + 16


@pytest.mark.parametrize("bf16", [False, True])
def test_wgmma_pair_asm_exact(bf16):
    """kernels/wo_wgmma.py's per-lane block: pair t of a 4-bit word -> ((q - 8) * s - sz) for both slots, rounded
    once to fp16 (bf16: that fp16 value rounded once more), for every pair t and random / extreme words."""
    from bitsweep.kernels import wo_wgmma
    asm = wo_wgmma._dequant_pair_asm(bf16)
    rng = np.random.default_rng(3)
    words = [0, 0xFFFFFFFF, 0x0F0F0F0F, 0x80808080] + [int(w) for w in rng.integers(0, 2 ** 32, 60, dtype=np.uint64)]
    for i, word in enumerate(words):
        s = float(np.float16(rng.uniform(0.001, 0.05)))
        sz = float(np.float16(rng.uniform(-0.2, 0.2))) if i % 3 else 0.0
        for t in range(4):
            out = Emu({"$1": word, "$2": 4 * t, "$3": _from_float(s, False), "$4": _from_float(sz, False)}).run(asm)
            packed = out["$0"]  # one b32: the A-operand register
            for e in range(2):  # slot 2t in the low half, 2t + 1 in the high half (kernels/packing.py)
                q = (word >> (16 * e + 4 * t)) & 0xF
                want = float(np.float16((q - 8) * s - sz))
                if bf16:
                    want = _to_half(_from_float(want, True), True)
                assert _to_half((packed >> (16 * e)) & 0xFFFF, bf16) == want, (hex(word), t, e)


def _mma_warp(lanes: list, line: str) -> None:
    """mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 on the 32 lanes' registers (PTX ISA fragment
    layouts, lane = 4g + t): A a0 (row g, k 2t..2t+1), a1 (row g+8, same k), a2 (row g, k 2t+8..2t+9),
    a3 (row g+8, same k); B b0 (k 2t..2t+1, col g), b1 (k 2t+8..2t+9, col g); C / D d0..d3 = (g, 2t),
    (g, 2t+1), (g+8, 2t), (g+8, 2t+1). Products and sums in float64, D rounded to fp32."""
    groups = re.findall(r"\{([^}]*)\}", line)
    d, a, b, c = ([t.strip() for t in grp.split(",")] for grp in groups)
    amat, bmat, cmat = np.zeros((16, 16)), np.zeros((16, 8)), np.zeros((16, 8))
    for lane, emu in enumerate(lanes):
        g, t = divmod(lane, 4)
        for reg, row, k0 in ((a[0], g, 2 * t), (a[1], g + 8, 2 * t), (a[2], g, 2 * t + 8), (a[3], g + 8, 2 * t + 8)):
            amat[row, k0:k0 + 2] = emu.half2(reg, False)
        for reg, k0 in ((b[0], 2 * t), (b[1], 2 * t + 8)):
            bmat[k0:k0 + 2, g] = emu.half2(reg, False)
        for reg, row, col in zip(c, (g, g, g + 8, g + 8), (2 * t, 2 * t + 1, 2 * t, 2 * t + 1)):
            cmat[row, col] = emu.val(reg)
    dmat = amat @ bmat + cmat
    for lane, emu in enumerate(lanes):
        g, t = divmod(lane, 4)
        for reg, row, col in zip(d, (g, g, g + 8, g + 8), (2 * t, 2 * t + 1, 2 * t, 2 * t + 1)):
            emu.r[reg] = _f32(dmat[row, col])


def _run_warp(asm: str, lane_ops: list[dict], mem: dict) -> list[dict]:
    """Run a warp-collective PTX block on 32 emulated lanes in lock step; ``mem`` maps 4-byte-aligned
    addresses to b32 values for ``ld.global.nc.v4.b32``."""
    lanes = [Emu(ops) for ops in lane_ops]
    for line in asm.splitlines():
        s = line.strip().rstrip(";")
        if s in ("{", "}") or s.startswith(".reg"):
            continue
        if s.startswith("mma.sync"):
            _mma_warp(lanes, s)
        elif m := re.fullmatch(r"ld\.global\.nc\.v4\.b32 \{(\w+), (\w+), (\w+), (\w+)\}, \[(\$\d+)(?:\+(\d+))?\]", s):
            for emu in lanes:
                addr = emu.val(m.group(5)) + int(m.group(6) or 0)
                for i in range(4):
                    emu.r[m.group(1 + i)] = mem[addr + 4 * i]
        else:
            for emu in lanes:
                emu.run(s)
    return [emu.r for emu in lanes]


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("hi", [False, True])
@pytest.mark.parametrize("blocks", [1, 2])
def test_mma_words_asm_warp_exact(bits, hi, blocks, mutate=lambda asm: asm):
    """The tensor-core GEMV's warp-collective block (kernels/gemv_tc.py, fp16, scales a step ahead) run on
    32 emulated lanes: every output register of every block is C + sum over the 16-word step of
    fp16((q - c) * s - sz) * x for the (row, token) the kernel's layout contract assigns to it. With
    blocks=2 both blocks use the one x fragment load; their words, scales and accumulators must not mix."""
    p = values_per_word(bits)
    cols = 16 * p  # input columns of the 16-word step
    nb = 8 * blocks
    rows = 16 * blocks
    gen = torch.Generator().manual_seed(bits * 10 + blocks + 4 * hi)
    codes = torch.randint(0, 2 ** bits, (rows, cols), generator=gen, dtype=torch.uint8)
    qw = pack(codes, torch.ones(rows, 1), torch.zeros(rows, 1), bits, cols).qweight  # [rows, 16] words
    words = [[int(w) & 0xFFFFFFFF for w in r] for r in qw.tolist()]
    s = (torch.rand(rows, generator=gen) * 0.02 + 0.005).half()
    sz = ((torch.rand(rows, generator=gen) - 0.5) * 0.1).half()
    x = (torch.randn(16, cols, generator=gen)).half()  # 16 tokens
    xbits = x.view(torch.int16).to(torch.int64) & 0xFFFF
    base = [0x10000 * (n + 1) for n in range(16)]  # token n's x at base[n] + 2 * column
    mem = {base[n] + 4 * i: int(xbits[n, 2 * i]) | int(xbits[n, 2 * i + 1]) << 16 for n in range(16)
           for i in range(cols // 2)}
    acc_in = torch.randn(32, nb, generator=gen).tolist()
    sv = [int(s.view(torch.int16)[r]) & 0xFFFF | (int(sz.view(torch.int16)[r]) & 0xFFFF) << 16 for r in range(rows)]
    asm = mutate(_asm.mma_words_asm(bits, False, hi, True, blocks))
    ops = []
    for lane in range(32):
        g, t = divmod(lane, 4)
        o = {}
        for b in range(blocks):
            for row in range(2):
                r = 16 * b + g + 8 * row
                for j in range(4):
                    o[f"${nb + 8 * b + 4 * row + j}"] = words[r][4 * t + j]
                o[f"${3 * nb + nb * (2 if hi else 1) + 8 * b + 4 * row}"] = sv[r]
            for i in range(8):
                o[f"${2 * nb + 8 * b + i}"] = _f32(acc_in[lane][8 * b + i])
        for i in range(nb):  # x address copies (first used): token g (and g + 8), the lane's first column
            o[f"${3 * nb + i}"] = base[g] + 2 * 4 * p * t
            if hi:
                o[f"${4 * nb + i}"] = base[g + 8] + 2 * 4 * p * t
        ops.append(o)
    out = _run_warp(asm, ops, mem)
    c = 2 ** (bits - 1)
    w = torch.tensor([[float(np.float16((int(codes[r, k]) - c) * float(s[r]) - float(sz[r]))) for k in range(cols)]
                      for r in range(rows)], dtype=torch.float64)
    ref = w @ x.double().T  # [rows, tokens]
    bound = w.abs() @ x.double().abs().T  # the scale of the sum: the fp32 roundings are relative to it
    worst = 0.0
    for lane in range(32):
        g, t = divmod(lane, 4)
        for b in range(blocks):
            for half in range(2 if hi else 1):
                for i in range(4):
                    r, n = 16 * b + g + 8 * (i // 2), 8 * half + 2 * t + i % 2
                    want = ref[r, n].item() + _f32(acc_in[lane][8 * b + 4 * half + i])
                    got = out[lane][f"${8 * b + 4 * half + i}"]
                    worst = max(worst, abs(got - want) / (bound[r, n].item() + abs(want)))
            if not hi:  # tokens 8-15 pass through
                for i in range(4):
                    assert out[lane][f"${8 * b + 4 + i}"] == _f32(acc_in[lane][8 * b + 4 + i])
    assert worst < 2e-6, worst  # a few fp32 roundings of the running sums; a wrong operand gives ~1
