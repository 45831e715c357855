"""RTN quantization equals a hand-written reference exactly, per granularity."""
import itertools

import pytest
import torch

from bitsweep.methods.core.quantizers import quantize_weight
from bitsweep.methods.core.spec import QuantSpec, WeightSpec


def hand_rtn(groups: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """Reference on [rows, g] groups, written out element by element with python floats."""
    maxq = 2**bits - 1
    out = torch.empty_like(groups)
    for r in range(groups.shape[0]):
        vals = [float(v) for v in groups[r]]
        lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
        if sym:
            hi = max(abs(lo), hi)
            lo = -hi if lo < 0 else lo
        if lo == 0 and hi == 0:
            lo, hi = -1.0, 1.0
        f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731  (float32 arithmetic, as stored)
        scale = (f32(hi) - f32(lo)) / maxq
        zero = torch.tensor((maxq + 1) / 2) if sym else torch.round(torch.tensor(-lo, dtype=torch.float32) / scale)
        for c, v in enumerate(vals):
            q = torch.clamp(torch.round(torch.tensor(v, dtype=torch.float32) / scale) + zero, 0, maxq)
            out[r, c] = scale * (q - zero)
    return out


def reference(w, spec: WeightSpec):
    n, k = w.shape
    if spec.granularity == "tensor":
        return hand_rtn(w.reshape(1, -1), spec.bits, spec.sym).reshape(n, k)
    if spec.granularity == "channel":
        return hand_rtn(w, spec.bits, spec.sym)
    if spec.granularity == "group":
        g = spec.group_size
        return hand_rtn(w.reshape(n * k // g, g), spec.bits, spec.sym).reshape(n, k)
    g = n if spec.group_size == -1 else spec.group_size  # input_channel: groups along N
    wt = w.t().reshape(k * n // g, g)
    return hand_rtn(wt, spec.bits, spec.sym).reshape(k, n).t()


@pytest.mark.parametrize("gran,group,bits,sym", [
    *[(g, 8, b, s) for g, b, s in itertools.product(("tensor", "channel", "group", "input_channel"), (2, 3, 4, 8), (False, True))],
    ("input_channel", -1, 4, False),
])
def test_rtn_matches_hand_reference_exactly(gran, group, bits, sym):
    torch.manual_seed(bits * 7 + sym)
    w = torch.randn(16, 32) * torch.rand(16, 1)
    w[3, :8] = 0.0  # an all-zero group
    spec = WeightSpec(bits=bits, granularity=gran, group_size=group, sym=sym)
    w_hat, qw = quantize_weight(w, spec)
    torch.testing.assert_close(w_hat, reference(w, spec), rtol=0, atol=0)
    assert qw.codes.min() >= 0 and qw.codes.max() <= 2**bits - 1
    torch.testing.assert_close(qw.dequantize(), w_hat, rtol=0, atol=0)


def test_rtn_error_shrinks_with_bits():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    errs = [(quantize_weight(w, WeightSpec(bits=b, group_size=64))[0] - w).pow(2).mean().item()
            for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    # SQNR floors (dB) for group-64 asymmetric RTN of Gaussian weights
    for b, floor in zip((2, 3, 4, 8), (6.0, 12.0, 18.0, 40.0)):
        e = errs[(2, 3, 4, 8).index(b)]
        assert 10 * torch.log10(w.pow(2).mean() / e) > floor


@pytest.mark.parametrize("spec,n,k,expected", [
    (WeightSpec(bits=4, granularity="group", group_size=128), 64, 256, 4 + 32 / 128),
    (WeightSpec(bits=4, granularity="group", group_size=128, sym=True), 64, 256, 4 + 16 / 128),
    (WeightSpec(bits=3, granularity="channel"), 64, 256, 3 + 32 / 256),
    (WeightSpec(bits=8, granularity="tensor", sym=True), 64, 256, 8 + 16 / (64 * 256)),
    (WeightSpec(bits=2, granularity="input_channel", group_size=32), 64, 256, 2 + 32 / 32),
])
def test_effective_bits(spec, n, k, expected):
    assert spec.effective_bits(n, k) == pytest.approx(expected)


def test_model_effective_bits_weights_by_size():
    from bitsweep.methods import build_method
    from bitsweep.methods.core.qmodules import effective_bits
    net = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 256))
    spec = QuantSpec.from_dict({"weights": {"bits": 4, "granularity": "channel"}})
    build_method({"name": "rtn"}, spec).convert(net)
    expected = ((4 + 32 / 128) * 128 * 64 + (4 + 32 / 64) * 64 * 256) / (128 * 64 + 64 * 256)
    assert effective_bits(net) == pytest.approx(expected)


def test_activation_fake_quant_per_token():
    from bitsweep.methods.core.quantizers import quantize_activation
    x = torch.tensor([[1.0, -2.0, 0.5], [100.0, 1.0, -1.0]])
    out = quantize_activation(x, bits=8, sym=True, granularity="token")
    # token 0: scale 2/127; token 1: scale 100/127 (outlier token does not hurt token 0)
    s0, s1 = 2 / 127, 100 / 127
    ref = torch.stack([torch.round(x[0] / s0) * s0, torch.round(x[1] / s1) * s1])
    torch.testing.assert_close(out, ref)
