"""Packed layouts for low-bit weights (2/3/4/8 bit), shared by every bitsweep kernel.

Input convention (GPTQ, see methods/quantizers.py): unsigned integer codes
``q`` in [0, 2^b - 1] (uint8 [N, K]), per-group ``scale`` and ``zero`` (float
[N, G], G = K // g; per-channel is g = K, G = 1); the weight is
``w = scale * (q - zero)`` over each group of g consecutive input columns.
Zeros may be fractional (HQQ): they are never rounded.

Stored form (``PackedWeight``):

* ``qweight`` int32 [N, G * WPG]. Each group of g codes of a row is stored in
  WPG = ceil(g / P) 32-bit words, P values per word, in the
  **half-word paired layout**: a word is two 16-bit halves; slot s of the word
  (input column ``k = group*g + word_in_group*P + s``) lives in the low half
  for even s and in the high half for odd s, at bit ``b * (s // 2)`` of that
  half. So pair j = (slot 2j, slot 2j+1) is extracted by ONE shift and ONE
  mask: ``(word >> (b*j)) & (mask | mask << 16)``, which puts the two codes at
  bits 0 and 16, ready for the fp16/bf16 "magic number" conversion
  (``code | 0x6400`` is the fp16 number 1024 + code) with packed half2 math.

  ======  ============  =====  ===========================================
  bits    P per word    pad    stored bits/weight (codes only)
  ======  ============  =====  ===========================================
  2       16            none   2
  3       10            g % 10 (2 spare bits/word; g=128 -> 13 words, 3.25)
  4       8             none   4
  8       4             none   8
  ======  ============  =====  ===========================================

  Padded slots (3-bit only, last word of a group) hold code 0 and are masked
  out by every kernel.
* ``scale`` fp16 [N, G] and ``szero`` fp16 [N, G] with
  ``szero = scale * (zero - 2^(b-1))``, so kernels compute
  ``w = scale * (q - 2^(b-1)) - szero``: the centred code ``q - 2^(b-1)`` keeps
  fp16 partial dot products small, and symmetric quantization has
  ``szero == 0``. Both are kept in fp16 (not the activation dtype) so that bf16
  models get fp16 precision for scales.

Effective bits (the leaderboard axis) count a 16-bit scale and, for
asymmetric quantization, a 16-bit zero per group: ``effective_bits``.
"""
from __future__ import annotations

import dataclasses
import math

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)  # plus per-channel: group_size == K


class PackingError(ValueError):
    """A weight cannot be packed (bad bits, group size, shape or dtype)."""


def values_per_word(bits: int) -> int:
    """P: codes stored in one int32 word (two 16-bit halves of 16 // bits)."""
    _check_bits(bits)
    return 2 * (16 // bits)


def words_per_group(bits: int, group_size: int) -> int:
    """WPG = ceil(group_size / P) words per group of one row."""
    return -(-group_size // values_per_word(bits))


def slot_shift(bits: int, slot: int) -> int:
    """Bit position of slot ``slot`` inside its word (half-word paired layout)."""
    return 16 * (slot % 2) + bits * (slot // 2)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise PackingError(f"bits={bits} is not supported; valid: {SUPPORTED_BITS}")


def check_group_size(group_size: int, in_features: int) -> None:
    """Raise PackingError unless g is 32/64/128 (dividing K) or g == K (per-channel)."""
    if group_size == in_features:
        return
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise PackingError(
            f"group_size={group_size} is not supported; valid: {SUPPORTED_GROUP_SIZES} "
            f"or per-channel (group_size == in_features == {in_features})")
    if in_features % group_size:
        raise PackingError(
            f"in_features K={in_features} must be a multiple of group_size={group_size}")


@dataclasses.dataclass(frozen=True)
class PackedWeight:
    """A packed low-bit weight, see the module docstring for the layout."""

    qweight: torch.Tensor  # int32 [N, G * WPG]
    scale: torch.Tensor  # fp16 [N, G]
    szero: torch.Tensor  # fp16 [N, G] = scale * (zero - 2^(bits-1))
    bits: int
    group_size: int
    in_features: int  # K
    out_features: int  # N
    sym: bool

    @property
    def num_groups(self) -> int:
        return self.in_features // self.group_size

    @property
    def words_per_group(self) -> int:
        return words_per_group(self.bits, self.group_size)

    @property
    def effective_bits(self) -> float:
        return effective_bits(self.bits, self.group_size, self.sym)

    def nbytes(self) -> int:
        """Bytes stored on the device (codes + scales + zeros if asym)."""
        n = self.qweight.numel() * 4 + self.scale.numel() * 2
        return n + (0 if self.sym else self.szero.numel() * 2)

    def to(self, device: torch.device | str) -> "PackedWeight":
        return dataclasses.replace(self, qweight=self.qweight.to(device),
                                   scale=self.scale.to(device), szero=self.szero.to(device))


def effective_bits(bits: int, group_size: int, sym: bool) -> float:
    """Spec bits/weight: b + 16/g (scale) + 16/g (zero, asym only)."""
    return bits + 16.0 / group_size + (0.0 if sym else 16.0 / group_size)


def pack(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
         group_size: int, sym: bool = False) -> PackedWeight:
    """Pack GPTQ-convention codes [N, K] (uint8) with scale/zero [N, K // g]."""
    _check_bits(bits)
    if codes.dim() != 2:
        raise PackingError(f"codes must be 2-D [N, K], got shape {tuple(codes.shape)}")
    n, k = codes.shape
    check_group_size(group_size, k)
    g_count = k // group_size
    for name, t in (("scale", scale), ("zero", zero)):
        if tuple(t.shape) != (n, g_count):
            raise PackingError(f"{name} must have shape [N, K//g] = {(n, g_count)}, got {tuple(t.shape)}")
    if codes.dtype not in (torch.uint8, torch.int32, torch.int64, torch.int16):
        raise PackingError(f"codes must be an integer tensor, got {codes.dtype}")
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > 2 ** bits - 1):
        raise PackingError(f"codes must lie in [0, {2 ** bits - 1}] for bits={bits}")
    p, wpg = values_per_word(bits), words_per_group(bits, group_size)
    c = c.view(n, g_count, group_size)
    c = torch.nn.functional.pad(c, (0, wpg * p - group_size)).view(n, g_count * wpg, p)
    shifts = torch.tensor([slot_shift(bits, s) for s in range(p)], device=c.device)
    words = (c << shifts).sum(-1)  # disjoint bit fields: sum == bitwise or
    qweight = (words - ((words >> 31) << 32)).to(torch.int32)  # wrap to signed int32
    scale32 = scale.to(torch.float32)
    szero = scale32 * (zero.to(torch.float32) - 2 ** (bits - 1))
    for name, t in (("scale", scale32), ("scale * zero", szero)):
        if not torch.isfinite(t.to(torch.float16)).all():
            raise PackingError(f"{name} does not fit in fp16 (non-finite after conversion)")
    return PackedWeight(qweight.contiguous(), scale32.to(torch.float16).contiguous(),
                        szero.to(torch.float16).contiguous(), bits, group_size, k, n, sym)


def unpack_codes(pw: PackedWeight) -> torch.Tensor:
    """Inverse of the code packing: uint8 codes [N, K]."""
    p, wpg = values_per_word(pw.bits), pw.words_per_group
    words = pw.qweight.to(torch.int64) & 0xFFFFFFFF  # [N, G*WPG]
    shifts = torch.tensor([slot_shift(pw.bits, s) for s in range(p)], device=words.device)
    c = (words[..., None] >> shifts) & (2 ** pw.bits - 1)  # [N, G*WPG, P]
    c = c.view(pw.out_features, pw.num_groups, wpg * p)[..., : pw.group_size]
    return c.reshape(pw.out_features, pw.in_features).to(torch.uint8)


def dequantize(pw: PackedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w = scale * (q - 2^(b-1)) - szero, as the kernels compute it: [N, K]."""
    q = unpack_codes(pw).to(torch.float32) - 2 ** (pw.bits - 1)
    q = q.view(pw.out_features, pw.num_groups, pw.group_size)
    w = q * pw.scale.float()[..., None] - pw.szero.float()[..., None]
    return w.reshape(pw.out_features, pw.in_features).to(dtype)


def random_packed(n: int, k: int, bits: int, group_size: int, sym: bool = False,
                  device: str | torch.device = "cpu", seed: int = 0,
                  fractional_zero: bool = False) -> tuple[PackedWeight, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random codes/scale/zero (for tests and benchmarks) -> (packed, codes, scale, zero)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    g_count = k // group_size if group_size else 1
    codes = torch.randint(0, 2 ** bits, (n, k), generator=gen, dtype=torch.int64).to(torch.uint8)
    scale = (torch.rand(n, g_count, generator=gen) * 0.02 + 0.005) / math.sqrt(k / 4096)
    if sym:
        zero = torch.full((n, g_count), float(2 ** (bits - 1)))
    elif fractional_zero:
        zero = torch.rand(n, g_count, generator=gen) * (2 ** bits - 1)
    else:
        zero = torch.randint(0, 2 ** bits, (n, g_count), generator=gen).float()
    codes, scale, zero = codes.to(device), scale.to(device), zero.to(device)
    return pack(codes, scale, zero, bits, group_size, sym), codes, scale, zero
