"""PTX snippets for packed half2 dequantization (used through tl.inline_asm_elementwise).

The half-word paired layout (kernels/packing.py) puts the codes of slots 2j
and 2j+1 at bits ``b*j`` and ``16 + b*j`` of a word. One ``lop3`` computes
``((word >> b*j) & (m | m << 16)) | MAGIC`` where MAGIC is two copies of the
fp16 number 1024 (0x6400; bf16: 128, 0x4300): the result is the half2
``(1024 + q_2j, 1024 + q_2j+1)``, exact. One ``sub.f16x2`` with
``1024 + 2^(b-1)`` gives the centred codes, exactly, and one ``fma.f16x2`` with
the matching x pair accumulates. About 2 instructions per weight for 4-bit.

Partial sums in half precision stay small: the codes are centred (|q| <= 2^(b-1))
and a word holds at most 16 codes, so |partial| <= 8 * 2^(b-1) * max|x|.
Only bits 2, 3 and 4 use this path (8-bit codes would risk fp16 overflow and
are not exact in bf16 after the magic offset).
"""
from __future__ import annotations

import functools

ASM_BITS = (2, 3, 4)


def _halves(bits: int, bf16: bool) -> tuple[str, str, str]:
    m = 2 ** bits - 1
    mask = m | (m << 16)
    if bf16:
        magic, center = 0x4300, 0x4300 + 2 ** (bits - 1)  # 128 + q is exact in bf16 for q < 128
    else:
        magic, center = 0x6400, 0x6400 + 2 ** (bits - 1)  # 1024 + q
    return f"0x{mask:08X}", f"0x{magic | magic << 16:08X}", f"0x{center | center << 16:08X}"


@functools.lru_cache(maxsize=None)
def dot_word_asm(bits: int, bf16: bool) -> str:
    """PTX: $0 (f32) = sum over the word's slots of (q - 2^(b-1)) * x; $1 word, $2.. x pairs."""
    if bits not in ASM_BITS:
        raise ValueError(f"packed-half2 path supports bits {ASM_BITS}, got {bits}")
    mask, magic, center = _halves(bits, bf16)
    ty = "bf16x2" if bf16 else "f16x2"
    cvt = "cvt.f32.bf16" if bf16 else "cvt.f32.f16"
    lines = ["{", ".reg .b32 t, h, acc, mg;", ".reg .b16 lo, hi;", ".reg .f32 flo, fhi;",
             f"mov.b32 mg, {center};"]
    for j in range(16 // bits):
        src = "$1"
        if j:
            lines.append(f"shr.b32 t, $1, {bits * j};")
            src = "t"
        lines.append(f"lop3.b32 h, {src}, {mask}, {magic}, 0xEA;")
        lines.append(f"sub.{ty} h, h, mg;")
        if j == 0:
            lines.append(f"mul.rn.{ty} acc, h, ${2 + j};")
        else:
            lines.append(f"fma.rn.{ty} acc, h, ${2 + j}, acc;")
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
