"""Number formats: one table with exact rounding semantics, shared by methods and kernels.

Contract
--------
``FORMATS`` maps a name to a :class:`NumberFormat`. A format answers:

* ``bits``: storage bits per element;
* ``scale_bits`` / ``block_size``: storage of its shared scale (a block format such
  as MXFP4 forces ``block_size`` = 32 and an 8-bit E8M0 scale; plain element
  formats use a 16-bit scale per group chosen by the spec);
* ``round(x)``: round already-scaled values onto the element grid (no scaling);
  :func:`round_to_format` is the same as a free function;
* ``group_scales(x, g)`` -> one scale per group and ``apply_scales(x, s, g)`` ->
  ``round(x / s) * s``: the two halves of fake quantization, so a method that
  fixes scales first (GPTQ column by column) can reuse the rounding;
* ``fake_quantize(x, group_size)``: ``x`` [N, K] -> dequantized [N, K], scaling each
  group of ``group_size`` consecutive elements of a row (``-1`` = whole row).
  Block formats (MX*, NVFP4) always use their own block size (``group_size``
  must be the block size or -1).

Families and their exact semantics
----------------------------------
* ``int``: INT-k, special-cased by :mod:`bitsweep.methods.core.quantizers` (integer codes + scale
  + zero in GPTQ's convention so real kernels can pack them).
* minifloats ``fp8_e4m3`` (OCP "fn": no inf, max 448), ``fp8_e5m2`` (IEEE-like,
  max 57344), ``fp6_e3m2`` (max 28), ``fp6_e2m3`` (max 7.5), ``fp4_e2m1``
  (max 6; values 0, .5, 1, 1.5, 2, 3, 4, 6): round to nearest, ties to even,
  subnormals kept, *saturating* to +-max (never inf/NaN; note torch's E5M2
  cast overflows to inf instead). Scale per group = absmax / max.
* ``nf4`` / ``nf3``: QLoRA NormalFloat tables (arXiv 2305.14314): absmax scaling,
  round to the nearest table value (ties go to the smaller table value).
* ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e3m2``, ``mxfp6_e2m3``, ``mxfp4``,
  ``mxint8``: OCP Microscaling v1.0: blocks of 32, shared E8M0 scale
  ``2^(floor(log2(amax)) - emax_elem)`` (exponent clamped to [-127, 127]),
  elements rounded (RNE, saturating) to the element format. MXINT8 elements are
  8-bit two's complement with an implicit 2^-6 (codes -128..127 / 64).
* ``nvfp4``: E2M1 elements in blocks of 16, block scale in E4M3 =
  e4m3(amax_block / (6 * s_global)), per-tensor fp32 ``s_global = amax / (6 * 448)``.
* ``log2_k`` (k = 3..8): sign + power of two: magnitude ``2^e``, e in
  [-(2^(k-1) - 2), 0] relative to the group absmax, or 0; the exponent is
  rounded in the log domain (``round(log2|x|)``), below the smallest power -> 0.
* ``ternary``: BitNet b1.58 (arXiv 2402.17764): scale = mean |x| of the group,
  ``clip(round(x / scale), -1, 1) * scale``; stored in 2 bits (1.58 bits of entropy).
* ``binary``: ``sign(x) * mean|x|`` per group (sign(0) = +1).

Scales of the element formats are kept in float32 (counted as ``scale_bits``=16
in effective bits); block formats quantize their scales exactly as the spec says.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bitsweep.methods.core.registry import Registry

FORMATS: Registry["NumberFormat"] = Registry("number format")

_TINY = 1e-30  # guard for all-zero groups


# ------------------------------------------------------------- pure rounding ----

def round_to_float(x: torch.Tensor, ebits: int, mbits: int, max_value: float) -> torch.Tensor:
    """Round x (any shape) to a minifloat with ``ebits``/``mbits``: RNE, subnormals, saturating.

    The exponent bias is ``2^(ebits-1) - 1``; the grid spacing in the binade
    [2^e, 2^(e+1)) is ``2^(e - mbits)``, and below the smallest normal 2^(1-bias)
    it stays ``2^(1 - bias - mbits)`` (subnormals). Computed in float64, exact.
    """
    xd = x.double()
    bias = 2 ** (ebits - 1) - 1
    emin = 1 - bias
    _, exp = torch.frexp(xd)  # |x| = m * 2^exp, m in [0.5, 1)
    e = torch.clamp(exp - 1, min=emin)  # floor(log2|x|), subnormal binade clamped
    quantum = torch.exp2((e - mbits).double())
    y = torch.round(xd / quantum) * quantum  # torch.round: ties to even
    y = torch.clamp(y, -max_value, max_value)
    return y.to(x.dtype)


def round_to_table(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Round x (any shape) to the nearest value of a sorted 1-D ``table``; ties -> smaller value."""
    table = table.to(device=x.device, dtype=torch.float64)
    mids = (table[1:] + table[:-1]) / 2
    idx = torch.bucketize(x.double().contiguous(), mids, right=False)  # x == mid -> lower index
    return table[idx].to(x.dtype)


def round_to_log2(x: torch.Tensor, emin: int) -> torch.Tensor:
    """Sign * 2^round(log2|x|), exponents clamped to <= 0, below 2^emin -> 0 (x scaled to |x|<=1)."""
    xd = x.double()
    mag = xd.abs()
    e = torch.round(torch.log2(mag.clamp(min=_TINY))).clamp(max=0)
    y = torch.sign(xd) * torch.exp2(e)
    y = torch.where((e < emin) | (mag == 0), torch.zeros_like(y), y)
    return y.to(x.dtype)


def round_to_int(x: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """RNE to integers, saturating to [qmin, qmax]."""
    return torch.clamp(torch.round(x), qmin, qmax)


def float_max(ebits: int, mbits: int, ieee: bool) -> float:
    """Largest finite value: IEEE-like formats reserve the top exponent for inf/NaN."""
    bias = 2 ** (ebits - 1) - 1
    emax = (2**ebits - 2 if ieee else 2**ebits - 1) - bias
    return 2.0**emax * (2 - 2.0**-mbits)


def normal_float_table(bits: int) -> torch.Tensor:
    """QLoRA NormalFloat table with 2^bits values in [-1, 1], exact 0 (float64, sorted).

    2^(b-1) positive quantiles and 2^(b-1) - 1 negative ones of N(0, 1) at evenly
    spaced probabilities from 0.5 to ``offset``, normalised by the largest.
    ``offset`` is the mean of 1 - 1/(2n) and 1 - 1/(2(n-1)), n = 2^b (QLoRA's
    0.9677083 for 4 bits), as in bitsandbytes' ``create_normal_map``.
    """
    n = 2**bits
    offset = 0.5 * ((1 - 1 / (2 * n)) + (1 - 1 / (2 * (n - 1))))
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, n // 2 + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, n // 2, dtype=torch.float64)[:-1])
    vals = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg])
    vals = vals / vals.abs().max()
    return torch.sort(vals).values


# ------------------------------------------------------------- grouping ----

def _groups(x: torch.Tensor, g: int) -> torch.Tensor:
    """x [N, K] -> [N, K/g, g] (g = -1: one group per row)."""
    n, k = x.shape
    g = k if g == -1 else g
    if k % g:
        raise ValueError(f"group size {g} does not divide the row length {k}")
    return x.reshape(n, k // g, g)


def _expand(s: torch.Tensor, g: int, k: int) -> torch.Tensor:
    """Per-group scales [N, K/g] -> [N, K]."""
    return s.repeat_interleave(k if g == -1 else g, dim=1)


# ------------------------------------------------------------- formats ----

@dataclass(frozen=True)
class NumberFormat:
    """Base description of a number format (see module docstring)."""

    name: str
    bits: int
    scale_bits: int = 16
    block_size: int | None = None
    integer: bool = False

    # -- element grid (override) --
    max_value: float = 1.0  # largest element magnitude: absmax scaling maps amax to it

    def round(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"format '{self.name}' has no element rounding")

    # -- scaling (override for mean-based / block formats) --
    def group_scales(self, x: torch.Tensor, group_size: int) -> torch.Tensor:
        """x [N, K] -> scales [N, K/g]: absmax / max_value (all-zero groups -> 1)."""
        amax = _groups(x.float(), self._g(group_size)).abs().amax(-1)
        return torch.where(amax > 0, amax / self.max_value, torch.ones_like(amax))

    def apply_scales(self, x: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
        """x [N, K], scales [N, K/g] -> round(x / s) * s  [N, K] (float32)."""
        s = _expand(scales.float(), self._g(group_size), x.shape[1])
        return self.round(x.float() / s) * s

    def fake_quantize(self, x: torch.Tensor, group_size: int) -> torch.Tensor:
        """x [N, K] -> dequantized [N, K] in x.dtype."""
        assert x.dim() == 2, f"fake_quantize expects [N, K], got {tuple(x.shape)}"
        g = self._g(group_size)
        return self.apply_scales(x, self.group_scales(x, g), g).to(x.dtype)

    def _g(self, group_size: int) -> int:
        if self.block_size is None:
            return group_size
        if group_size not in (-1, self.block_size):
            raise ValueError(f"format '{self.name}' uses blocks of {self.block_size}, "
                             f"not group_size={group_size}")
        return self.block_size


@dataclass(frozen=True)
class IntFormat(NumberFormat):
    """INT-k, symmetric or asymmetric; rounding is done by bitsweep.methods.core.quantizers."""

    integer: bool = True

    def fake_quantize(self, x: torch.Tensor, group_size: int) -> torch.Tensor:
        raise NotImplementedError("format 'int' needs bits/sym: use bitsweep.methods.core.quantizers")


@dataclass(frozen=True)
class FloatFormat(NumberFormat):
    """Minifloat E<ebits>M<mbits>; ``ieee`` formats reserve the top exponent (E5M2)."""

    ebits: int = 4
    mbits: int = 3
    ieee: bool = False
    max_override: float | None = None  # E4M3fn: top code is NaN only -> 448

    def __post_init__(self):
        mx = self.max_override or float_max(self.ebits, self.mbits, self.ieee)
        object.__setattr__(self, "max_value", mx)

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return round_to_float(x, self.ebits, self.mbits, self.max_value)


@dataclass(frozen=True)
class TableFormat(NumberFormat):
    """Lookup-table format (NormalFloat): values in [-1, 1], absmax scaling."""

    table: tuple[float, ...] = ()

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return round_to_table(x, torch.tensor(self.table, dtype=torch.float64))


@dataclass(frozen=True)
class Log2Format(NumberFormat):
    """Sign + power of two, k bits: 2^(k-1) - 1 exponents below absmax, plus zero."""

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return round_to_log2(x, emin=-(2 ** (self.bits - 1) - 2))


@dataclass(frozen=True)
class TernaryFormat(NumberFormat):
    """BitNet b1.58: absmean scale, round-clip to {-1, 0, 1}."""

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return round_to_int(x, -1, 1)

    def group_scales(self, x: torch.Tensor, group_size: int) -> torch.Tensor:
        mean = _groups(x.float(), group_size).abs().mean(-1)
        return torch.where(mean > 0, mean, torch.ones_like(mean))


@dataclass(frozen=True)
class BinaryFormat(TernaryFormat):
    """sign(x) * mean|x| (sign(0) = +1)."""

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


@dataclass(frozen=True)
class MXFormat(NumberFormat):
    """OCP MX: shared E8M0 scale per block of 32 over an element format."""

    element: NumberFormat = field(default=None)  # type: ignore[assignment]
    emax_elem: int = 0  # exponent of the element format's largest normal

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return self.element.round(x)

    def group_scales(self, x: torch.Tensor, group_size: int) -> torch.Tensor:
        """x [N, K] -> E8M0 scales [N, K/32] = 2^(floor(log2 amax) - emax_elem)."""
        amax = _groups(x.float(), self._g(group_size)).abs().amax(-1).double()
        _, exp = torch.frexp(amax)
        e = torch.where(amax > 0, exp - 1, torch.zeros_like(exp)) - self.emax_elem
        return torch.exp2(e.clamp(-127, 127).double()).float()


@dataclass(frozen=True)
class MXIntElement(NumberFormat):
    """MXINT8 element: two's complement 8-bit with implicit scale 2^-6."""

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return round_to_int(x * 64, -128, 127) / 64


@dataclass(frozen=True)
class NVFP4Format(NumberFormat):
    """NVFP4: E2M1 elements, E4M3 scale per 16, per-tensor fp32 scale (folded into the block scale)."""

    def round(self, x: torch.Tensor) -> torch.Tensor:
        return FP4_E2M1.round(x)

    def group_scales(self, x: torch.Tensor, group_size: int) -> torch.Tensor:
        """x [N, K] -> effective scales [N, K/16] = e4m3(amax_b / (6 s_g)) * s_g."""
        xf = x.float()
        amax_t = xf.abs().amax()
        s_global = amax_t / (6.0 * 448.0) if amax_t > 0 else torch.ones((), dtype=xf.dtype)
        amax_b = _groups(xf, self._g(group_size)).abs().amax(-1)
        s_block = FP8_E4M3.round(amax_b / (6.0 * s_global))
        return s_block * s_global

    def apply_scales(self, x: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
        s = _expand(scales.float(), self._g(group_size), x.shape[1])
        safe = torch.where(s > 0, s, torch.ones_like(s))
        return torch.where(s > 0, self.round(x.float() / safe) * safe, torch.zeros_like(s))


def register_format(fmt: NumberFormat) -> NumberFormat:
    FORMATS.register(fmt.name)(fmt)
    return fmt


def round_to_format(x: torch.Tensor, fmt: NumberFormat | str) -> torch.Tensor:
    """Round already-scaled x (any shape) onto the element grid of ``fmt`` (no scaling)."""
    return (get_format(fmt) if isinstance(fmt, str) else fmt).round(x)


def get_format(name: str) -> NumberFormat:
    return FORMATS.get(name)


# ------------------------------------------------------------- the table ----

# INT-k: bits come from the spec (1..16); this entry's ``bits`` is a placeholder.
INT = register_format(IntFormat(name="int", bits=0))

FP8_E4M3 = register_format(FloatFormat("fp8_e4m3", 8, ebits=4, mbits=3, max_override=448.0))
FP8_E5M2 = register_format(FloatFormat("fp8_e5m2", 8, ebits=5, mbits=2, ieee=True))
FP6_E3M2 = register_format(FloatFormat("fp6_e3m2", 6, ebits=3, mbits=2))
FP6_E2M3 = register_format(FloatFormat("fp6_e2m3", 6, ebits=2, mbits=3))
FP4_E2M1 = register_format(FloatFormat("fp4_e2m1", 4, ebits=2, mbits=1))

NF4 = register_format(TableFormat("nf4", 4, table=tuple(normal_float_table(4).tolist())))
NF3 = register_format(TableFormat("nf3", 3, table=tuple(normal_float_table(3).tolist())))

_MX_ELEMENTS = {  # name -> (element format, emax of the element format)
    "mxfp8_e4m3": (FP8_E4M3, 8), "mxfp8_e5m2": (FP8_E5M2, 15),
    "mxfp6_e3m2": (FP6_E3M2, 4), "mxfp6_e2m3": (FP6_E2M3, 2),
    "mxfp4": (FP4_E2M1, 2),
    "mxint8": (MXIntElement("mxint8_element", 8, max_value=127 / 64), 0),
}
for _name, (_elem, _emax) in _MX_ELEMENTS.items():
    register_format(MXFormat(_name, _elem.bits, scale_bits=8, block_size=32,
                             element=_elem, emax_elem=_emax, max_value=_elem.max_value))

NVFP4 = register_format(NVFP4Format("nvfp4", 4, scale_bits=8, block_size=16, max_value=6.0))

for _k in range(3, 9):
    register_format(Log2Format(f"log2_{_k}", _k, max_value=1.0))

TERNARY = register_format(TernaryFormat("ternary", 2))
BINARY = register_format(BinaryFormat("binary", 1))

#: MXFP8 alias (E4M3 elements, the OCP default for MXFP8).
FORMATS.register("mxfp8")(get_format("mxfp8_e4m3"))
FORMATS.register("mxfp6")(get_format("mxfp6_e3m2"))
