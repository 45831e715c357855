"""INT quantization primitives (GPTQ's convention), as small tensor -> tensor functions.

Convention (shared with ``kernels/``): codes ``q`` are unsigned integers in
[0, 2^b - 1]; each group has a ``scale`` and a ``zero`` and dequantizes as
``w_hat = scale * (q - zero)``.

* asymmetric: the group's range is widened to include 0 (``xmin = min(w.min, 0)``,
  ``xmax = max(w.max, 0)``), ``scale = (xmax - xmin) / (2^b - 1)``,
  ``zero = round(-xmin / scale)``;
* symmetric: ``scale = 2 * absmax / (2^b - 1)``, ``zero = 2^(b-1)``;
* an all-zero group gets the range [-1, 1] (no division by zero);
* rounding is round-half-to-even (``torch.round``), codes are clamped to range.

Granularities (``WeightSpec.granularity``), for a weight [N, K] (out, in):
``tensor`` one scale; ``channel`` one per output row; ``group`` one per row per
``group_size`` consecutive input columns; ``input_channel`` one per input column
per ``group_size`` consecutive output rows (AdaDim's per-input-channel grouping).
Scales/zeros are stored in a shape that broadcasts through :func:`expand_groups`:
[N, K/g] for channel/group (channel: g = K), [1, 1] for tensor, [N/g, K] for
input_channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bitsweep.methods.core.formats import get_format
from bitsweep.methods.core.spec import WeightSpec


@dataclass
class QuantizedWeight:
    """Quantized form of one weight [N, K]; ``codes`` is None for non-integer formats."""

    codes: torch.Tensor | None  # uint8 [N, K] (int16 for bits > 8)
    scale: torch.Tensor | None  # float32, see module docstring for the shape
    zero: torch.Tensor | None  # float32, same shape as scale
    bits: int
    group_size: int  # along K for channel/group (channel: K); along N for input_channel
    sym: bool
    format: str = "int"
    granularity: str = "group"

    def dequantize(self) -> torch.Tensor:
        assert self.codes is not None, "non-integer formats keep only the dequantized weight"
        return dequantize(self.codes, self.scale, self.zero, self.granularity, self.group_size)


def group_size_for(spec: WeightSpec, shape: tuple[int, int]) -> int:
    """Resolved group size: number of elements along the grouped axis."""
    n, k = shape
    if spec.granularity == "channel":
        return k
    if spec.granularity == "tensor":
        return k
    if spec.granularity == "input_channel":
        return n if spec.group_size == -1 else spec.group_size
    return spec.group_size


def _grouped(w: torch.Tensor, granularity: str, g: int) -> torch.Tensor:
    """View w [N, K] as [rows, groups, g]: each last-axis slice shares a scale."""
    n, k = w.shape
    if granularity == "tensor":
        return w.reshape(1, 1, n * k)
    if granularity in ("channel", "group"):
        assert k % g == 0, f"group size {g} does not divide K={k}"
        return w.reshape(n, k // g, g)
    assert n % g == 0, f"group size {g} does not divide N={n}"
    return w.t().reshape(k, n // g, g)  # [K, N/g, g]


def _from_groups(p: torch.Tensor, granularity: str) -> torch.Tensor:
    """Per-group params [rows, groups] -> storage shape (see module docstring)."""
    return p.t().contiguous() if granularity == "input_channel" else p


def expand_groups(p: torch.Tensor, shape: tuple[int, int], granularity: str, g: int) -> torch.Tensor:
    """Storage-shaped params -> full [N, K] (each weight's own scale or zero)."""
    n, k = shape
    if granularity == "tensor":
        return p.reshape(1, 1).expand(n, k)
    if granularity == "input_channel":
        return p.repeat_interleave(g, dim=0)  # [N/g, K] -> [N, K]
    return p.repeat_interleave(g, dim=1)  # [N, K/g] -> [N, K]


def minmax_qparams(xmin: torch.Tensor, xmax: torch.Tensor, bits: int, sym: bool):
    """(scale, zero) from per-group ranges, GPTQ's convention. Shapes preserved."""
    maxq = 2**bits - 1
    xmin = torch.minimum(xmin, torch.zeros_like(xmin))
    xmax = torch.maximum(xmax, torch.zeros_like(xmax))
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def int_qparams(w: torch.Tensor, bits: int, sym: bool, granularity: str, g: int):
    """w [N, K] -> (scale, zero) in storage shape, from each group's min/max."""
    x = _grouped(w.float(), granularity, g)
    scale, zero = minmax_qparams(x.amin(-1), x.amax(-1), bits, sym)
    return _from_groups(scale, granularity), _from_groups(zero, granularity)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   granularity: str, g: int) -> torch.Tensor:
    """w [N, K] -> integer codes [N, K] in [0, 2^b - 1] (uint8, or int16 above 8 bits)."""
    s = expand_groups(scale, w.shape, granularity, g)
    z = expand_groups(zero, w.shape, granularity, g)
    q = torch.clamp(torch.round(w.float() / s) + z, 0, 2**bits - 1)
    return q.to(torch.uint8 if bits <= 8 else torch.int16)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
               granularity: str, g: int) -> torch.Tensor:
    """codes [N, K] -> float32 [N, K] = scale * (q - zero)."""
    s = expand_groups(scale, codes.shape, granularity, g)
    z = expand_groups(zero, codes.shape, granularity, g)
    return s * (codes.float() - z)


def quantize_weight(w: torch.Tensor, spec: WeightSpec,
                    scale: torch.Tensor | None = None, zero: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, QuantizedWeight]:
    """RTN-quantize w [N, K] per ``spec`` -> (dequantized w_hat [N, K] in w.dtype, QuantizedWeight).

    ``scale``/``zero`` may be given (e.g. from a clipping search); otherwise min/max.
    """
    g = group_size_for(spec, tuple(w.shape))
    fmt = get_format(spec.format)
    if not fmt.integer:
        w_hat = _fake_quantize_format(w.float(), fmt, spec.granularity, g)
        return w_hat.to(w.dtype), QuantizedWeight(None, None, None, spec.bits, g, spec.sym,
                                                  spec.format, spec.granularity)
    if scale is None:
        scale, zero = int_qparams(w, spec.bits, spec.sym, spec.granularity, g)
    codes = quantize_codes(w, scale, zero, spec.bits, spec.granularity, g)
    qw = QuantizedWeight(codes, scale, zero, spec.bits, g, spec.sym, "int", spec.granularity)
    return qw.dequantize().to(w.dtype), qw


def _fake_quantize_format(w: torch.Tensor, fmt, granularity: str, g: int) -> torch.Tensor:
    """Non-integer formats: absmax scaling per tensor / row / group / input-channel group."""
    n, k = w.shape
    if granularity == "tensor":
        return fmt.fake_quantize(w.reshape(1, n * k), -1).reshape(n, k)
    if granularity == "channel":
        return fmt.fake_quantize(w, -1)
    if granularity == "input_channel":
        return fmt.fake_quantize(w.t().contiguous(), g).t()
    return fmt.fake_quantize(w, g)


def quantize_activation(x: torch.Tensor, bits: int, sym: bool, granularity: str,
                        group_size: int = -1, scale: torch.Tensor | None = None,
                        clip_ratio: float = 1.0) -> torch.Tensor:
    """Fake-quantize activations x [..., K]: per token (dynamic), per tensor, or per group.

    Symmetric uses signed codes in [-(2^(b-1)-1), 2^(b-1)-1] with scale absmax/qmax
    (the usual W8A8 convention); asymmetric uses min/max over the same slices.
    ``scale`` (static, per-tensor) skips the dynamic range computation.
    """
    shape = x.shape
    xf = x.float()
    if granularity == "group" and group_size > 0:
        xf = xf.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    dims = tuple(range(xf.dim())) if granularity == "tensor" else (-1,)
    if sym:
        qmax = 2 ** (bits - 1) - 1
        if scale is None:
            scale = xf.abs().amax(dim=dims, keepdim=True).clamp(min=1e-8) * clip_ratio / qmax
        out = torch.clamp(torch.round(xf / scale), -qmax, qmax) * scale
    else:
        lo = xf.amin(dim=dims, keepdim=True) * clip_ratio
        hi = xf.amax(dim=dims, keepdim=True) * clip_ratio
        s, z = minmax_qparams(lo, hi, bits, sym=False)
        if scale is not None:  # static: a given scale with a symmetric-around-zero range
            s, z = scale, torch.full_like(scale, float(2 ** (bits - 1)))
        out = (torch.clamp(torch.round(xf / s) + z, 0, 2**bits - 1) - z) * s
    return out.reshape(shape).to(x.dtype)
