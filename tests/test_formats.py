"""Number formats: representable values, round-to-nearest-even, saturation, MX/NVFP4 scales."""
import itertools

import pytest
import torch

from bitsweep.methods.core.formats import (FORMATS, FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, NF3, NF4,
                             get_format, round_to_format)
from bitsweep.methods.core.quantizers import quantize_weight
from bitsweep.methods.core.registry import ConfigError, UnknownNameError
from bitsweep.methods.core.spec import QuantSpec, WeightSpec

E2M1_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]

# bitsandbytes' NF4 table (QLoRA), float32 digits
NF4_BNB = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
           -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
           0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
           0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def _all_values(ebits: int, mbits: int, max_value: float) -> list[float]:
    """Enumerate a minifloat's non-negative finite values from its bit fields (hand table)."""
    bias = 2 ** (ebits - 1) - 1
    vals = set()
    for e, m in itertools.product(range(2**ebits), range(2**mbits)):
        v = (m / 2**mbits) * 2.0 ** (1 - bias) if e == 0 else (1 + m / 2**mbits) * 2.0 ** (e - bias)
        if v <= max_value:
            vals.add(v)
    return sorted(vals)


def test_e2m1_value_set_and_ties():
    x = torch.linspace(-8, 8, 1601)
    got = sorted(set(FP4_E2M1.round(x).abs().tolist()))
    assert got == E2M1_VALUES
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -2.5, -5.0])
    want = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -2.0, -4.0])
    assert torch.equal(FP4_E2M1.round(ties), want)
    assert torch.equal(FP4_E2M1.round(torch.tensor([7.0, 1e9, -100.0])), torch.tensor([6.0, 6.0, -6.0]))


@pytest.mark.parametrize("fmt,ebits,mbits,mx", [(FP6_E3M2, 3, 2, 28.0), (FP6_E2M3, 2, 3, 7.5),
                                                (FP4_E2M1, 2, 1, 6.0)])
def test_fp6_fp4_grids_match_hand_enumeration(fmt, ebits, mbits, mx):
    vals = torch.tensor(_all_values(ebits, mbits, mx))
    assert fmt.max_value == mx == float(vals.max())
    assert torch.equal(fmt.round(vals), vals) and torch.equal(fmt.round(-vals), -vals)  # round trip
    mids = (vals[1:] + vals[:-1]) / 2
    # a midpoint goes to the neighbour with the even mantissa (ties to even):
    # with spacing d = b - a, exactly one of a/d, b/d is even
    a, b = vals[:-1], vals[1:]
    even_low = torch.remainder(a / (b - a), 2) == 0
    assert torch.equal(fmt.round(mids), torch.where(even_low, a, b))
    assert torch.equal(fmt.round(-mids), -torch.where(even_low, a, b))
    assert float(fmt.round(torch.tensor(mx * 10))) == mx


def test_e4m3_matches_torch_cast():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g) * s for s in (1e-3, 0.1, 3.0, 60.0)])
    x = torch.cat([x, torch.tensor([448.0, -448.0, 2.0**-9, 2.0**-10, 3 * 2.0**-11, 0.0])])
    x = x[x.abs() <= 448]
    ref = x.to(torch.float8_e4m3fn).float()
    assert torch.equal(FP8_E4M3.round(x), ref)
    assert float(FP8_E4M3.round(torch.tensor(1e6))) == 448.0  # saturating, never NaN


def test_e5m2_matches_torch_cast_in_range_and_saturates():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(20000, generator=g) * s for s in (1e-5, 1e-2, 10.0, 1e4)])
    x = x[x.abs() <= 57344]
    assert torch.equal(FP8_E5M2.round(x), x.to(torch.float8_e5m2).float())
    assert float(FP8_E5M2.round(torch.tensor(70000.0))) == 57344.0  # torch gives inf here


def test_all_e4m3_codes_round_trip():
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    codes = codes[torch.isfinite(codes)]
    assert torch.equal(FP8_E4M3.round(codes), codes)
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e5m2).float()
    codes = codes[torch.isfinite(codes)]
    assert torch.equal(FP8_E5M2.round(codes), codes)


def test_nf4_table_matches_bitsandbytes_and_rounds_to_nearest():
    assert torch.allclose(torch.tensor(NF4.table, dtype=torch.float64), torch.tensor(NF4_BNB, dtype=torch.float64),
                          atol=1e-6)
    assert len(NF3.table) == 8 and 0.0 in NF3.table and NF3.table[0] == -1 and NF3.table[-1] == 1
    t = torch.tensor(NF4.table)
    x = torch.rand(1000, generator=torch.Generator().manual_seed(2)) * 2 - 1
    got = NF4.round(x)
    want = t[(x[:, None] - t[None]).abs().argmin(1)]
    assert torch.equal(got, want.float())
    w = torch.tensor([[0.5, -2.0, 1.0, 0.0]])
    out = NF4.fake_quantize(w, -1)
    assert out[0, 1] == -2.0 and out[0, 3] == 0.0  # absmax and zero exact


def test_mx_scales_are_powers_of_two_and_elements_on_grid():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 128, generator=g) * torch.logspace(-3, 2, 8)[:, None]
    for name in ("mxfp4", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8"):
        fmt = get_format(name)
        s = fmt.group_scales(w, 32)
        assert s.shape == (8, 4)
        assert torch.equal(torch.exp2(torch.log2(s).round()), s), name
        amax = w.reshape(8, 4, 32).abs().amax(-1)
        assert torch.equal(s, torch.exp2(torch.floor(torch.log2(amax)) - fmt.emax_elem)), name
        q = fmt.fake_quantize(w, 32)
        scaled = q / s.repeat_interleave(32, 1)
        assert torch.equal(fmt.element.round(scaled), scaled), name  # elements on the grid
    assert torch.equal(get_format("mxfp4").fake_quantize(torch.tensor([[3.0, 1.5] + [0.0] * 30]), 32),
                       torch.tensor([[3.0, 1.5] + [0.0] * 30]))


def test_nvfp4_two_level_scales():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(4, 64, generator=g)
    fmt = get_format("nvfp4")
    s_g = w.abs().max() / (6 * 448)
    s = fmt.group_scales(w, 16)
    blocks = s / s_g
    assert torch.equal(FP8_E4M3.round(blocks), blocks)  # block scales are E4M3 values
    q = fmt.fake_quantize(w, -1)
    assert torch.allclose(FP4_E2M1.round(q / s.repeat_interleave(16, 1)), q / s.repeat_interleave(16, 1))
    err = (q - w).pow(2).mean() / w.pow(2).mean()
    assert err < 0.02
    with pytest.raises(ValueError, match="blocks of 16"):
        fmt.fake_quantize(w, 32)


def test_log2_ternary_binary():
    x = torch.tensor([[1.0, 0.5, 0.3, -0.7, 0.01, 0.0, -1.0, 0.2]])
    q = get_format("log2_3").fake_quantize(x, -1)  # exponents 0, -1, -2, or zero
    assert torch.equal(q, torch.tensor([[1.0, 0.5, 0.25, -0.5, 0.0, 0.0, -1.0, 0.25]]))
    w = torch.tensor([[0.9, -0.1, 0.4, -1.0]])  # absmean = 0.6
    assert torch.allclose(get_format("ternary").fake_quantize(w, -1), torch.tensor([[0.6, 0.0, 0.6, -0.6]]))
    assert torch.allclose(get_format("binary").fake_quantize(w, -1), torch.tensor([[0.6, -0.6, 0.6, -0.6]]))


def test_round_trip_exact_on_representable_values():
    for name in FORMATS.names():
        fmt = get_format(name)
        if fmt.integer:
            continue
        g = fmt.block_size or 16
        w = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
        q = fmt.fake_quantize(w, g)
        if name == "ternary":  # absmean of {-s, 0, s} is not s: not idempotent by definition
            pass
        elif name == "binary":  # mean-based scale: recomputed up to float rounding
            assert torch.allclose(fmt.fake_quantize(q, g), q, rtol=1e-6, atol=0), name
        else:
            assert torch.equal(fmt.fake_quantize(q, g), q), name  # idempotent
        grid = fmt.round(torch.linspace(-2 * fmt.max_value, 2 * fmt.max_value, 999))
        assert torch.equal(round_to_format(grid, name), grid), name


def test_spec_names_a_format_and_effective_bits():
    spec = QuantSpec.from_dict({"weights": {"format": "fp4_e2m1", "bits": 4, "group_size": 32}})
    w = torch.randn(16, 64)
    w_hat, qw = quantize_weight(w, spec.weights)
    assert torch.equal(w_hat, FP4_E2M1.fake_quantize(w, 32))
    assert WeightSpec(format="mxfp4", bits=4, group_size=32).effective_bits(16, 64) == 4.25
    assert WeightSpec(format="nvfp4", bits=4, group_size=16).effective_bits(16, 64) == 4.5
    with pytest.raises(ConfigError, match="has 4 bits"):
        QuantSpec.from_dict({"weights": {"format": "nf4", "bits": 3}})
    with pytest.raises(ConfigError, match="blocks of 32"):
        QuantSpec.from_dict({"weights": {"format": "mxfp4", "bits": 4, "group_size": 128}})
    with pytest.raises(UnknownNameError, match="did you mean 'fp4_e2m1'"):
        QuantSpec.from_dict({"weights": {"format": "fp4_e2m2", "bits": 4}})
