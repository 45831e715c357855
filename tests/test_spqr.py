"""SpQR: error below RTN at the same base bits; statistics quantized; outliers and effective bits accounted."""
import pytest
import torch
import transformers as T

from bitsweep.methods import QuantSpec, build_method
from bitsweep.methods.weight_only.gptq import Hessian
from bitsweep.methods.core.qmodules import QuantLinear, effective_bits
from bitsweep.methods.core.quantizers import quantize_weight
from bitsweep.methods.core.registry import ConfigError
from bitsweep.methods.core.spec import WeightSpec
from bitsweep.methods.weight_only.spqr import SpQRConfig, loo_reduction, quantize_stat, spqr_quantize

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one BLAS thread


def _layer(n=64, k=256, t=1024):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(t, k, generator=g) @ a + 0.1 * torch.randn(t, k, generator=g)
    w = torch.randn(n, k, generator=g)
    w[torch.rand(n, k, generator=g) < 0.005] *= 8  # rare large weights
    h = Hessian(k, torch.device("cpu"))
    h.add(x)
    return x, w, h.H


def _err(x, w, w_hat):
    return (x @ w.T - x @ w_hat.T).pow(2).sum().item()


@pytest.mark.parametrize("bits", [3, 4])
def test_spqr_beats_rtn_and_counts_bits(bits):
    x, w, H = _layer()
    cfg = SpQRConfig()
    res = spqr_quantize(w, H, bits, cfg, 16)
    rtn16, _ = quantize_weight(w, WeightSpec(bits=bits, group_size=16))
    assert _err(x, w, res.w_hat) < 0.5 * _err(x, w, rtn16)
    frac = res.outliers / w.numel()
    assert 0 < frac < 0.1
    assert res.effective_bits == pytest.approx(bits + 2 * 3 / 16 + 64 / 256 + 32 * frac)
    # non-outlier weights lie on a 2^bits-level grid per (row, group): few distinct values
    assert int(res.mask.sum()) == res.outliers
    res = spqr_quantize(w, H, bits, SpQRConfig(act_order=False), 16)  # groups = original columns
    for r in range(4):
        vals = res.w_hat[r, :16][~res.mask[r, :16]]
        assert vals.unique().numel() <= 2**bits


def test_quantize_stat_levels():
    v = torch.linspace(0.1, 1.0, 32)
    q = quantize_stat(v, 3, 16)
    assert q[:16].unique().numel() <= 8 and (q - v).abs().max() <= (0.45 / 7) / 2 + 1e-6


def test_loo_reduction_finds_planted_outlier():
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(2)) * 0.1
    w[1, 5] = 5.0
    red = loo_reduction(w, torch.ones(16), 3)
    assert red[1].argmax() == 5 and red[1, 5] > 10 * red[0].max()


def test_spqr_method_sets_effective_bits():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    batches = [torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    m = build_method({"name": "spqr", "device": "cpu"}, QuantSpec.from_dict({"weights": {"bits": 3, "group_size": 64}}))
    m.calibrate(model, batches)
    model = m.convert(model)
    bits = [q.effective_bits for q in model.modules() if isinstance(q, QuantLinear)]
    assert len(bits) == 14 and min(bits) >= 3 + 6 / 16 + 0.25 and effective_bits(model) > 3.6


def test_spqr_validation():
    with pytest.raises(ConfigError, match="'spqr' supports quant.weights.format 'int' only"):
        build_method({"name": "spqr"}, QuantSpec.from_dict({"weights": {"format": "nf4", "bits": 4, "group_size": 64}}))
    with pytest.raises(ConfigError, match="spqr.*group_size"):
        build_method({"name": "spqr", "group_size": 1}, QuantSpec.from_dict({"weights": {"bits": 3}}))
