"""HQQ: half-quadratic zero/scale optimisation beats RTN's reconstruction error, data-free."""
import copy

import pytest
import torch

from bitsweep.methods.weight_only.hqq import hqq_minmax_init, hqq_optimize, hqq_quantize, shrink_lp
from bitsweep.methods.core.quantizers import quantize_weight
from bitsweep.methods.core.registry import ConfigError, build_method
from bitsweep.methods.core.spec import QuantSpec, WeightSpec


def _weight(seed=0, n=64, k=256):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    w += (torch.rand(n, k, generator=g) < 0.01) * torch.randn(n, k, generator=g) * 0.1  # heavy tail
    return w


@pytest.mark.parametrize("bits,group", [(4, 64), (3, 64), (2, 32), (4, -1)])
def test_hqq_error_not_worse_than_rtn(bits, group):
    w = _weight(bits)
    spec = WeightSpec(bits=bits, granularity="channel" if group == -1 else "group",
                      group_size=group if group > 0 else 128, sym=False)
    w_rtn, _ = quantize_weight(w, spec)
    w_hqq, qw = hqq_quantize(w, spec)
    for p in (0.7, 1.0, 2.0):
        e_rtn = (w - w_rtn).abs().pow(p).mean()
        e_hqq = (w - w_hqq).abs().pow(p).mean()
        assert e_hqq <= e_rtn, (p, float(e_hqq), float(e_rtn))
    assert torch.equal(qw.dequantize(), w_hqq)  # codes/scale/zero reproduce the weight
    assert int(qw.codes.max()) <= 2**bits - 1


def test_optimization_lowers_error_vs_its_start_and_scale_option():
    w = _weight(7)
    x = w.reshape(64, 4, 64)
    s0, z0 = hqq_minmax_init(x, 3)
    q0 = torch.clamp(torch.round(x / s0 + z0), 0, 7)
    e0 = (x - s0 * (q0 - z0)).abs().mean()
    for opt_scale in (False, True):
        s, z = hqq_optimize(x, 3, optimize_scale=opt_scale)
        q = torch.clamp(torch.round(x / s + z), 0, 7)
        e = (x - s * (q - z)).abs().mean()
        assert e < e0 * 0.98, (opt_scale, float(e), float(e0))
    assert not torch.equal(z, torch.round(z))  # float zero points


def test_shrink_lp():
    x = torch.tensor([-2.0, -0.05, 0.0, 0.05, 2.0])
    assert torch.allclose(shrink_lp(x, 10.0, 1.0), torch.tensor([-1.9, 0.0, 0.0, 0.0, 1.9]))
    y = shrink_lp(x, 10.0, 0.7)
    assert y[1] == 0 and y[3] == 0 and float(y[4]) == pytest.approx(2 - 0.1 * 2 ** -0.3, rel=1e-5)


def test_method_on_tiny_llama_and_validation():
    from transformers import LlamaConfig, LlamaForCausalLM
    from bitsweep.methods.core.qmodules import QuantLinear
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         vocab_size=128)).eval()
    spec = QuantSpec.from_dict({"weights": {"bits": 3, "group_size": 32}})
    m = build_method({"name": "hqq"}, spec).convert(copy.deepcopy(model))
    r = build_method({"name": "rtn"}, spec).convert(copy.deepcopy(model))
    layers = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, QuantLinear)]
    assert len(layers) == 7
    w_ref = dict(model.named_modules())
    rtn = dict(r.named_modules())
    for n, mod in layers:
        ref = w_ref[n].weight
        assert (mod.weight - ref).abs().mean() <= (rtn[n].weight - ref).abs().mean()
    with pytest.raises(ConfigError, match="hqq.*sym=true"):
        build_method({"name": "hqq"}, QuantSpec.from_dict({"weights": {"bits": 4, "sym": True}}))
    with pytest.raises(ConfigError, match="format=nf4"):
        build_method({"name": "hqq"}, QuantSpec.from_dict({"weights": {"format": "nf4", "bits": 4,
                                                                       "group_size": 64}}))
    with pytest.raises(ConfigError, match="lp_norm"):
        build_method({"name": "hqq", "lp_norm": 2.0}, spec)
