"""Pack/unpack round trips and bad-input errors for kernels/packing.py (CPU, no triton launch)."""
import pytest
import torch

from bitsweep.kernels import packing
from bitsweep.kernels.packing import PackingError


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group,k", [(32, 64), (64, 192), (128, 256), (None, 70), (None, 33)])
@pytest.mark.parametrize("sym", [False, True])
def test_round_trip(bits, group, k, sym):
    g = group or k
    pw, codes, scale, zero = packing.random_packed(5, k, bits, g, sym=sym, seed=bits + k)
    assert pw.qweight.dtype == torch.int32
    assert pw.qweight.shape == (5, (k // g) * packing.words_per_group(bits, g))
    assert torch.equal(packing.unpack_codes(pw), codes)
    w = packing.dequantize(pw)
    exact = scale.repeat_interleave(g, 1) * (codes.float() - zero.repeat_interleave(g, 1))
    # scale and scale*zero are stored in fp16: error is bounded by fp16 rounding of each
    tol = (scale.abs().max() * (2 ** bits) * 2 ** -10).item()
    assert (w - exact).abs().max().item() <= tol
    if sym:
        assert torch.count_nonzero(pw.szero) == 0


def test_layout_is_half_word_paired():
    codes = torch.arange(8, dtype=torch.uint8).view(1, 8)  # one 4-bit word: slots 0..7
    pw = packing.pack(codes, torch.ones(1, 1), torch.zeros(1, 1), 4, 8)
    word = int(pw.qweight[0, 0]) & 0xFFFFFFFF
    # even slots 0,2,4,6 in the low half at nibbles 0..3, odd slots in the high half
    assert word == (0 | 2 << 4 | 4 << 8 | 6 << 12 | 1 << 16 | 3 << 20 | 5 << 24 | 7 << 28)


def test_three_bit_pads_each_group():
    pw, codes, *_ = packing.random_packed(3, 256, 3, 128)
    assert packing.words_per_group(3, 128) == 13 and pw.qweight.shape == (3, 26)
    assert pw.effective_bits == pytest.approx(3 + 32 / 128)


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=5, group_size=32), "bits=5"),
    (dict(bits=4, group_size=48), "group_size=48"),
    (dict(bits=4, group_size=128, k=96), "multiple of group_size"),
])
def test_bad_input_raises(kwargs, match):
    k = kwargs.pop("k", 128)
    g = kwargs["group_size"]
    gc = max(1, k // g)
    with pytest.raises(ValueError, match=match):
        packing.pack(torch.zeros(2, k, dtype=torch.uint8), torch.ones(2, gc), torch.zeros(2, gc), **kwargs)


def test_codes_out_of_range_raise():
    with pytest.raises(PackingError, match=r"\[0, 3\]"):
        packing.pack(torch.full((1, 32), 4, dtype=torch.uint8), torch.ones(1, 1), torch.zeros(1, 1), 2, 32)


def test_scale_shape_checked():
    with pytest.raises(PackingError, match="scale must have shape"):
        packing.pack(torch.zeros(2, 64, dtype=torch.uint8), torch.ones(2, 1), torch.zeros(2, 2), 4, 32)
