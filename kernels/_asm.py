"""PTX snippets for packed half2 dequantization (used through tl.inline_asm_elementwise).

The half-word paired layout (kernels/packing.py) puts the codes of slots 2j
and 2j+1 at bits ``b*j`` and ``16 + b*j`` of a word. One ``lop3`` computes
``((word >> b*j) & (m | m << 16)) | MAGIC`` where MAGIC is two copies of the
fp16 number 1024 (0x6400; bf16: 128, 0x4300): the result is the half2
``(1024 + q_2j, 1024 + q_2j+1)``, exact. One ``sub.f16x2`` with
``1024 + 2^(b-1)`` gives the centred codes, exactly, and one ``fma.f16x2`` with
the matching x pair accumulates. ``pair_plan`` avoids most shifts: a pair whose
field still fits in the mantissa at bit offset ``off`` is extracted in place
(``1024 + 2^off q``) and centred by an exact ``fma`` with 2^-off instead of the
``sub``: a 4-bit word takes 1 shift instead of 3 (fp16). About 1.6 instructions
per weight for 4-bit.

Partial sums in half precision stay small: the codes are centred (|q| <= 2^(b-1))
and a word holds at most 16 codes, so |partial| <= 8 * 2^(b-1) * max|x|.
Only bits 2, 3 and 4 use this path (8-bit codes would risk fp16 overflow and
are not exact in bf16 after the magic offset).
"""
from __future__ import annotations

import functools

import torch

from bitsweep.kernels.packing import values_per_word

ASM_BITS = (2, 3, 4)


MANTISSA_BITS = {False: 10, True: 7}  # fp16 / bf16 explicit mantissa bits


def _h2(value: float, bf16: bool) -> int:
    """Two copies of ``value`` as fp16 / bf16 bits (a half2 constant)."""
    t = torch.tensor([value], dtype=torch.bfloat16 if bf16 else torch.float16)
    bits16 = int(t.view(torch.int16).item()) & 0xFFFF
    return bits16 | bits16 << 16


@functools.lru_cache(maxsize=None)
def pair_plan(bits: int, bf16: bool) -> tuple[tuple[int, int, int], ...]:
    """How each half2 pair j of a word is extracted: ``(shift, mask, off)`` per pair.

    Pair j's codes sit at bits ``b*j`` and ``16 + b*j``. The word is shifted right by
    ``shift`` (0: the word itself; shared by consecutive pairs) and one ``lop3`` keeps
    ``mask = (m | m << 16) << off`` and ORs in the magic number, giving the half2
    ``magic + 2^off * q`` exactly as long as the field stays inside the mantissa
    (``off + b <= 10`` for fp16, 7 for bf16). A new shift is taken only when it would
    not, so a 4-bit word needs one shift instead of three (fp16), a 2-bit word one
    instead of seven. The centring step is then ``sub (magic + c)`` for off = 0 and
    ``fma (2^-off, -(magic * 2^-off + c))`` otherwise: exact, the result is the small
    integer q - c (c = 2^(b-1)).
    """
    m = 2 ** bits - 1
    out, cur = [], 0
    for j in range(16 // bits):
        off = bits * j - cur
        if off + bits > MANTISSA_BITS[bf16]:
            cur, off = bits * j, 0
        out.append((cur, (m | m << 16) << off, off))
    return tuple(out)


def dequant_consts(bits: int, bf16: bool) -> tuple[list[str], list[str]]:
    """(register names, PTX mov lines) of the constants the pair plan uses: ``mg`` (magic + c,
    for off = 0) and ``k<off>`` / ``c<off>`` (2^-off and -(magic * 2^-off + c)) per offset."""
    magic = 128.0 if bf16 else 1024.0
    center = 2 ** (bits - 1)
    regs, lines = ["mg"], [f"mov.b32 mg, 0x{_h2(magic + center, bf16):08X};"]
    for off in sorted({o for _, _, o in pair_plan(bits, bf16) if o}):
        regs += [f"k{off}", f"c{off}"]
        lines += [f"mov.b32 k{off}, 0x{_h2(2.0 ** -off, bf16):08X};",
                  f"mov.b32 c{off}, 0x{_h2(-(magic * 2.0 ** -off + center), bf16):08X};"]
    return regs, lines


def magic_bits(bf16: bool) -> str:
    return "0x43004300" if bf16 else "0x64006400"


def pair_lines(word: str, j: int, bits: int, bf16: bool, dst: str, scratch: str, shifted: dict) -> list[str]:
    """PTX lines: ``dst`` (half2) = the centred codes (q - 2^(b-1)) of pair j of ``word``.

    ``scratch`` holds the shifted word; ``shifted`` (per word, kept by the caller) maps the
    scratch register to the shift it holds, so consecutive pairs share one ``shr``. Needs the
    registers of ``dequant_consts``.
    """
    shift, mask, off = pair_plan(bits, bf16)[j]
    ty = "bf16x2" if bf16 else "f16x2"
    lines, src = [], word
    if shift:
        if shifted.get(scratch) != (word, shift):
            lines.append(f"shr.b32 {scratch}, {word}, {shift};")
            shifted[scratch] = (word, shift)
        src = scratch
    lines.append(f"lop3.b32 {dst}, {src}, 0x{mask:08X}, {magic_bits(bf16)}, 0xEA;")
    if off:
        lines.append(f"fma.rn.{ty} {dst}, {dst}, k{off}, c{off};")
    else:
        lines.append(f"sub.{ty} {dst}, {dst}, mg;")
    return lines


def _word_dot(word: str, xregs: list[str], bits: int, bf16: bool) -> list[str]:
    """PTX lines: ``acc`` (half2) = sum over the word's pairs j of (pair j - center) * xregs[j].

    Per pair (``pair_lines``): a shared shift, one ``lop3`` (extract | magic), one exact centring
    ``sub`` / ``fma``, and one ``fma`` with the x pair; uses the scratch registers t and h and
    the constants of ``dequant_consts``.
    """
    ty = "bf16x2" if bf16 else "f16x2"
    lines, shifted = [], {}
    for j, xr in enumerate(xregs):
        lines += pair_lines(word, j, bits, bf16, "h", "t", shifted)
        lines.append(f"mul.rn.{ty} acc, h, {xr};" if j == 0 else f"fma.rn.{ty} acc, h, {xr}, acc;")
    return lines


@functools.lru_cache(maxsize=None)
def dot_word_asm(bits: int, bf16: bool) -> str:
    """PTX: $0 (f32) = sum over the word's slots of (q - 2^(b-1)) * x; $1 word, $2.. x pairs."""
    if bits not in ASM_BITS:
        raise ValueError(f"packed-half2 path supports bits {ASM_BITS}, got {bits}")
    cvt = "cvt.f32.bf16" if bf16 else "cvt.f32.f16"
    cregs, clines = dequant_consts(bits, bf16)
    lines = ["{", f".reg .b32 t, h, acc, {', '.join(cregs)};", ".reg .b16 lo, hi;", ".reg .f32 flo, fhi;"]
    lines += clines
    lines += _word_dot("$1", [f"${2 + j}" for j in range(16 // bits)], bits, bf16)
    lines += ["mov.b32 {lo, hi}, acc;", f"{cvt} flo, lo;", f"{cvt} fhi, hi;",
              "add.f32 flo, flo, fhi;", "mov.b32 $0, flo;", "}"]
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def sum_pairs_asm(n_pairs: int, bf16: bool) -> str:
    """PTX: $0 (f32) = sum of both halves of the n_pairs half2 inputs $1..$n."""
    cvt = "cvt.f32.bf16" if bf16 else "cvt.f32.f16"
    lines = ["{", ".reg .b16 lo, hi;", ".reg .f32 a, b, s;", "mov.f32 s, 0f00000000;"]
    for i in range(n_pairs):
        lines += [f"mov.b32 {{lo, hi}}, ${1 + i};", f"{cvt} a, lo;", f"{cvt} b, hi;",
                  "add.f32 s, s, a;", "add.f32 s, s, b;"]
    lines += ["mov.b32 $0, s;", "}"]
    return "\n".join(lines)


def constraints(n_inputs: int) -> str:
    return "=r," + ",".join(["r"] * n_inputs)


@functools.lru_cache(maxsize=None)
def word_term_asm(bits: int, bf16: bool) -> str:
    """PTX for GEMV v3: one packed word's full contribution, loading its own x and group scales.

    Operands: $0 (f32 out) = scale * sum_s (q_s - 2^(b-1)) * x_s  -  szero * sum_s x_s;
    $1 the word; $2 address of the word's first x value (16-byte aligned for bits 2/4,
    4-byte for 3); $3 / $4 addresses of its group's fp16 scale / szero; $5 (int32) the
    number of valid x pairs in the word (3-bit only: the last word of a group is padded;
    invalid pairs are not loaded and count as 0). x and the scales are read through the
    read-only path (``ld.global.nc``): they are shared by every row and stay in L1/L2.
    The dot and the x sum accumulate in half2 (one word: at most 16 products), then fp32.
    """
    if bits not in ASM_BITS:
        raise ValueError(f"packed-half2 path supports bits {ASM_BITS}, got {bits}")
    cvt = "cvt.f32.bf16" if bf16 else "cvt.f32.f16"
    npairs = 16 // bits
    xs = [f"x{j}" for j in range(npairs)]
    cregs, clines = dequant_consts(bits, bf16)
    lines = ["{", f".reg .b32 t, h, acc, xs, {', '.join(cregs + xs)};", ".reg .b16 lo, hi, sh, zh;",
             ".reg .f32 fa, fb, fd, fx, fs, fz;", ".reg .pred pv;",
             "ld.global.nc.b16 sh, [$3];", "ld.global.nc.b16 zh, [$4];"]
    if bits == 4:
        lines.append("ld.global.nc.v4.b32 {x0, x1, x2, x3}, [$2];")
    elif bits == 2:
        lines += ["ld.global.nc.v4.b32 {x0, x1, x2, x3}, [$2];", "ld.global.nc.v4.b32 {x4, x5, x6, x7}, [$2+16];"]
    else:
        for j in range(npairs):
            lines += [f"mov.b32 x{j}, 0;", f"setp.lt.s32 pv, {j}, $5;", f"@pv ld.global.nc.b32 x{j}, [$2+{4 * j}];"]
    lines += clines
    lines += _word_dot("$1", xs, bits, bf16)
    lines += ["mov.b32 {lo, hi}, acc;", f"{cvt} fa, lo;", f"{cvt} fb, hi;", "add.f32 fd, fa, fb;"]
    if bf16:  # bf16 sums lose too much: sum x in fp32
        lines.append("mov.f32 fx, 0f00000000;")
        for j in range(npairs):
            lines += [f"mov.b32 {{lo, hi}}, x{j};", f"{cvt} fa, lo;", f"{cvt} fb, hi;",
                      "add.f32 fx, fx, fa;", "add.f32 fx, fx, fb;"]
    else:
        lines.append("add.rn.f16x2 xs, x0, x1;" if npairs > 1 else "mov.b32 xs, x0;")
        for j in range(2, npairs):
            lines.append(f"add.rn.f16x2 xs, xs, x{j};")
        lines += ["mov.b32 {lo, hi}, xs;", "cvt.f32.f16 fa, lo;", "cvt.f32.f16 fb, hi;", "add.f32 fx, fa, fb;"]
    lines += ["cvt.f32.f16 fs, sh;", "cvt.f32.f16 fz, zh;", "neg.f32 fz, fz;", "mul.f32 fd, fd, fs;",
              "fma.rn.f32 fd, fx, fz, fd;", "mov.b32 $0, fd;", "}"]
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def words_term_asm(bits: int, bf16: bool, pack: int) -> str:
    """PTX for GEMV v3 with ``pack`` consecutive words of one row and one group per call.

    Operands (tl.inline_asm_elementwise with pack=``pack``): $0..$(pack-1) f32 outputs
    (the whole term in $0, zeros after); then ``pack`` words, ``pack`` x addresses,
    ``pack`` scale and ``pack`` szero addresses (only the first of each address is used:
    the words are consecutive, so their x values are contiguous from the first address,
    and they share one group). Bits 2/4 only (no padded slots).
    ``out = scale * sum (q - 2^(b-1)) * x - szero * sum x``: each word's dot accumulates in
    half2 and is added in fp32 (as word_term_asm: fp16 range for |x| < 2048 at 4 bits);
    the x sum accumulates in half2 over the pack (16-32 values per lane), then fp32.
    """
    if bits not in (2, 4):
        raise ValueError(f"the packed-word PTX supports bits 2 and 4, got {bits}")
    ty = "bf16x2" if bf16 else "f16x2"
    cvt = "cvt.f32.bf16" if bf16 else "cvt.f32.f16"
    npairs = 16 // bits
    cregs, clines = dequant_consts(bits, bf16)
    word = [f"${pack + i}" for i in range(pack)]
    xaddr = f"${2 * pack}"
    saddr, zaddr = f"${3 * pack}", f"${4 * pack}"
    nx = npairs * pack  # x pairs (int32) of the pack, contiguous
    lines = ["{", f".reg .b32 t, h, acc, xs, {', '.join(cregs + [f'x{j}' for j in range(nx)])};",
             ".reg .b16 lo, hi, sh, zh;", ".reg .f32 fa, fb, fd, fx, fs, fz;",
             f"ld.global.nc.b16 sh, [{saddr}];", f"ld.global.nc.b16 zh, [{zaddr}];"]
    for v in range(nx // 4):
        lines.append(f"ld.global.nc.v4.b32 {{x{4 * v}, x{4 * v + 1}, x{4 * v + 2}, x{4 * v + 3}}}, [{xaddr}+{16 * v}];")
    lines += clines
    for i in range(pack):  # per word: half2 dot of its pairs, then added in fp32
        lines += _word_dot(word[i], [f"x{i * npairs + j}" for j in range(npairs)], bits, bf16)
        lines += ["mov.b32 {lo, hi}, acc;", f"{cvt} fa, lo;", f"{cvt} fb, hi;"]
        lines += ["add.f32 fd, fa, fb;"] if i == 0 else ["add.f32 fd, fd, fa;", "add.f32 fd, fd, fb;"]
    lines.append(f"add.rn.{ty} xs, x0, x1;")
    for j in range(2, nx):
        lines.append(f"add.rn.{ty} xs, xs, x{j};")
    lines += ["mov.b32 {lo, hi}, xs;", f"{cvt} fa, lo;", f"{cvt} fb, hi;", "add.f32 fx, fa, fb;",
              "cvt.f32.f16 fs, sh;", "cvt.f32.f16 fz, zh;", "neg.f32 fz, fz;", "mul.f32 fd, fd, fs;",
              "fma.rn.f32 $0, fx, fz, fd;"]
    lines += [f"mov.b32 ${i}, 0;" for i in range(1, pack)]
    lines.append("}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def mma_words_asm(bits: int, bf16: bool, hi: bool, scale_vals: bool = False, blocks: int = 1) -> str:
    """PTX for the tensor-core GEMV (kernels/gemv_tc.py): 4 words of two rows each -> mma.sync.

    A warp-collective block (every lane of the warp runs it together; the kernel's loop is
    uniform), called with pack=8 (``blocks`` = 1) or pack=16 (``blocks`` = 2: two 16-row blocks
    that share one load of the x fragments, halving the x traffic through L1): lane (g, t) =
    (lane // 4, lane % 4) passes 4 consecutive
    words of weight row g and the same 4 words of row g + 8 of a 16-row block, covering input
    columns ``c0 .. c0 + 4P - 1`` (c0 = 4P * t in the 16-word step). The weights are the
    mma's A operand (m16n8k16, rows = weight rows): in the half-word paired layout a
    word's half2 pairs are consecutive column pairs, so dequantized pairs 2h / 2h+1 of a word
    are exactly the A registers for k slots 2t..2t+1 / 2t+8..2t+9: the 16 k slots of an mma
    are mapped to columns ``c0 + 4h .. c0 + 4h + 3`` of the four lanes t, a permutation of
    K that B (x of token g: ``b0, b1`` = the same two column pairs, loaded here) shares.
    No weight repacking, and the B registers come straight from 16-byte x loads.

    Operands, with B = ``blocks`` and block b's registers at offset 8b within each group:
    $0..$(8B-1) (f32) accumulators out; of a block: 4 for tokens 0-7 of the token block,
    C[row g + 8*(i//2)][token 2t + i%2], then 4 for tokens 8-15 (``hi``; else passed through);
    then 8B words (a block: 4 of row g, 4 of row g + 8); 8B accumulators in; then 8B copies
    each of: token g's x address (first used: 2P contiguous x values, shared by the blocks),
    with ``hi`` token g + 8's, the group scale address (copies 8b and 8b + 4 used: rows g and
    g + 8 of block b), the szero address, and an int32 ``valid`` flag (first used): 0 zeroes
    scale and szero, so the words contribute nothing (a K tail step whose words were read from
    a clamped address). ``scale_vals``: instead of the scale, szero and valid operands, 8B int32s
    from ``scale_pair_asm`` (copies 8b and 8b + 4 used: (scale | szero << 16) of rows g and g + 8,
    already zeroed for an invalid step), loaded a step ahead by the kernel.
    Dequant per pair (``pair_lines``): lop3 (code | 1024, most pairs without a shift) -> exact
    centring -> fma (scale, -szero): one rounding to fp16 (bf16: magic 128; scale and szero
    rounded to bf16 once).
    """
    if bits not in (2, 4) and not (bits == 8 and not bf16):
        raise ValueError(f"the mma.sync GEMV supports bits 2/4 (and 8 with fp16), got {bits}")
    if blocks not in (1, 2):
        raise ValueError(f"blocks must be 1 or 2 (pack 8 or 16), got {blocks}")
    ty = "bf16" if bf16 else "f16"
    cregs, clines = dequant_consts(bits, bf16)
    p = values_per_word(bits)
    npairs = p // 2  # half2 pairs per word
    nx = 4 * npairs  # x pairs (b32) per token for the 4 words
    xl = [f"xl{i}" for i in range(nx)]
    xh = [f"xh{i}" for i in range(nx)] if hi else []
    nb = 8 * blocks  # operands per group
    out0, word0, acc0, base = 0, nb, 2 * nb, 3 * nb
    xaddr_l = f"${base}"
    xaddr_h = f"${base + nb}" if hi else None
    sb = base + nb * (2 if hi else 1)
    srow = [(f"${sb + 8 * b}", f"${sb + 8 * b + 4}") for b in range(blocks)]
    zrow = [(f"${sb + nb + 8 * b}", f"${sb + nb + 8 * b + 4}") for b in range(blocks)]
    valid = f"${sb + 2 * nb}"
    sregs = [f"s2{b}{r}, z2{b}{r}" for b in range(blocks) for r in range(2)]
    hregs = [f"sh{b}{r}, zh{b}{r}" for b in range(blocks) for r in range(2)]
    lines = ["{", f".reg .b32 t0, t1, a0, a1, a2, a3, {', '.join(cregs + xl + xh)};",
             f".reg .b32 {', '.join(sregs)};", f".reg .b16 {', '.join(hregs)};", ".reg .f32 fs, fz;",
             ".reg .pred pv;"]
    for b in range(blocks):
        if scale_vals:
            lines += [f"mov.b32 {{sh{b}{r}, zh{b}{r}}}, {srow[b][r]};" for r in range(2)]
        else:
            if b == 0:
                lines.append(f"setp.ne.s32 pv, {valid}, 0;")
            for r in range(2):
                lines += [f"ld.global.nc.b16 sh{b}{r}, [{srow[b][r]}];", f"ld.global.nc.b16 zh{b}{r}, [{zrow[b][r]}];"]
    for v in range(nx // 4):
        lines.append(f"ld.global.nc.v4.b32 {{{', '.join(xl[4 * v:4 * v + 4])}}}, [{xaddr_l}+{16 * v}];")
        if hi:
            lines.append(f"ld.global.nc.v4.b32 {{{', '.join(xh[4 * v:4 * v + 4])}}}, [{xaddr_h}+{16 * v}];")
    for b in range(blocks):
        for r in range(2):
            sh, zh, s2, z2 = f"sh{b}{r}", f"zh{b}{r}", f"s2{b}{r}", f"z2{b}{r}"
            if bf16:
                lines += [f"cvt.f32.f16 fs, {sh};", f"cvt.f32.f16 fz, {zh};", "neg.f32 fz, fz;",
                          f"cvt.rn.bf16.f32 {sh}, fs;", f"cvt.rn.bf16.f32 {zh}, fz;"]
            else:
                lines.append(f"neg.f16 {zh}, {zh};")
            lines += [f"mov.b32 {s2}, {{{sh}, {sh}}};", f"mov.b32 {z2}, {{{zh}, {zh}}};"]
            if not scale_vals:
                lines += [f"selp.b32 {s2}, {s2}, 0, pv;", f"selp.b32 {z2}, {z2}, 0, pv;"]
    lines += clines
    for b in range(blocks):
        first = True
        for j in range(4):  # word j of both rows: columns c0 + P*j ..
            shifted = {}  # scratch t<row> -> (word, shift) it holds: pairs of a word share one shr
            for h in range(p // 4):  # one k16 mma per 4 columns of each lane
                for reg, row, pair in (("a0", 0, 2 * h), ("a1", 1, 2 * h), ("a2", 0, 2 * h + 1),
                                       ("a3", 1, 2 * h + 1)):
                    lines += pair_lines(f"${word0 + 8 * b + 4 * row + j}", pair, bits, bf16, reg, f"t{row}", shifted)
                    lines.append(f"fma.rn.{ty}x2 {reg}, {reg}, s2{b}{row}, z2{b}{row};")
                i0 = j * npairs + 2 * h
                for half, xs in ((0, xl), (1, xh)):
                    if half and not hi:
                        continue
                    o = out0 + 8 * b + 4 * half
                    d = ", ".join(f"${o + i}" for i in range(4))
                    c = ", ".join(f"${acc0 + 8 * b + 4 * half + i}" for i in range(4)) if first else d
                    lines.append(f"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 {{{d}}}, "
                                 f"{{a0, a1, a2, a3}}, {{{xs[i0]}, {xs[i0 + 1]}}}, {{{c}}};")
                first = False
        if not hi:
            lines += [f"mov.b32 ${out0 + 8 * b + 4 + i}, ${acc0 + 8 * b + 4 + i};" for i in range(4)]
    lines.append("}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def scale_pair_asm(blocks: int = 1) -> str:
    """PTX (pack = 8 * blocks, same lanes as ``mma_words_asm``): outputs 8b / 8b + 4 = (scale | szero << 16)
    of block b's rows g / g + 8 (their group's fp16 bits), 0 when the step is invalid; other outputs 0.
    Operands: 8B outputs, then 8B copies each of the scale address, the szero address and the valid flag
    (copies 8b and 8b + 4 of the addresses used). The tensor-core GEMV issues it a step ahead, with the
    words (prefetch)."""
    nb = 8 * blocks
    lines = ["{", ".reg .b16 s0, z0;", ".reg .pred pv;", f"setp.ne.s32 pv, ${3 * nb}, 0;"]
    for o in range(nb):
        if o % 4:
            lines.append(f"mov.b32 ${o}, 0;")
            continue
        lines += [f"ld.global.nc.b16 s0, [${nb + o}];", f"ld.global.nc.b16 z0, [${2 * nb + o}];",
                  f"mov.b32 ${o}, {{s0, z0}};", f"selp.b32 ${o}, ${o}, 0, pv;"]
    lines.append("}")
    return "\n".join(lines)

