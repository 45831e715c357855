"""AWQ: scaled-then-quantized layer error below RTN's; clip search helps; method end to end; validation."""
import copy

import pytest
import torch
import transformers as T

from bitsweep.methods import QuantSpec, WeightSpec, build_method
from bitsweep.methods.weight_only.awq import apply_clip, search_clip, search_scale
from bitsweep.methods.core.quantizers import quantize_weight
from bitsweep.methods.core.registry import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one BLAS thread


def _layer(seed=0, n=64, k=256, t=1024):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g)
    x[:, :6] *= 20  # salient input channels
    return x, torch.randn(n, k, generator=g)


def _err(x, w, xq, wq):
    return (x @ w.T - xq @ wq.T).pow(2).mean().item()


@pytest.mark.parametrize("spec", [WeightSpec(bits=3, group_size=128), WeightSpec(bits=4, granularity="channel"),
                                  WeightSpec(format="nf4", bits=4, group_size=64)], ids=str)
def test_awq_scaled_error_below_rtn(spec):
    x, w = _layer()
    rtn, _ = quantize_weight(w, spec)
    s, alpha, losses = search_scale(x, [w], spec, n_grid=20)
    assert alpha > 0 and min(losses) < losses[0]  # losses[0]: alpha = 0 = RTN
    wq, _ = quantize_weight(w * s, spec)
    e_awq, e_rtn = _err(x, w, x / s, wq), _err(x, w, x, rtn)
    assert e_awq < 0.8 * e_rtn
    mx = search_clip(x / s, w * s, spec, n_grid=20, max_shrink=0.5)
    wc, _ = quantize_weight(apply_clip(w * s, mx), spec)
    assert _err(x, w, x / s, wc) <= e_awq * 1.0001


def test_clip_keeps_range_without_gain():
    x, w = _layer(1)
    spec = WeightSpec(bits=8, group_size=128)
    mx = search_clip(x, w, spec, 20, 0.5)
    assert mx.shape == (64, 2) and (mx <= w.abs().reshape(64, 2, 128).amax(-1) + 1e-6).all()


def _tiny():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[:4] *= 10
            layer.post_attention_layernorm.weight[:4] *= 10
    return model


@pytest.mark.parametrize("base", ["rtn", "gptq"])
def test_awq_method_beats_rtn_on_tiny_model(base):
    ref_model = _tiny()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 128, (1, 32), generator=g) for _ in range(4)]
    with torch.no_grad():
        ref = [ref_model(b).logits for b in batches]
    spec = QuantSpec.from_dict({"weights": {"bits": 3, "group_size": 32}})
    errs = {}
    for name, cfg in (("rtn", {}), ("awq", {"device": "cpu", "base": base})):
        model = copy.deepcopy(ref_model)
        m = build_method({"name": name, **cfg}, spec)
        m.calibrate(model, batches)
        model = m.convert(model)
        with torch.no_grad():
            errs[name] = sum((model(b).logits - r).pow(2).mean().item() for b, r in zip(batches, ref))
    assert errs["awq"] < errs["rtn"]


def test_awq_validation():
    spec_a = QuantSpec.from_dict({"weights": {"bits": 4}, "activations": {"bits": 8}})
    with pytest.raises(ConfigError, match="'awq' is weight-only: quant.activations must be null"):
        build_method({"name": "awq"}, spec_a)
    spec = QuantSpec.from_dict({"weights": {"bits": 4}})
    with pytest.raises(ConfigError, match="awq.*base.*rtn, gptq"):
        build_method({"name": "awq", "base": "nearest"}, spec)
    m = build_method({"name": "awq"}, spec)
    assert m.needs_calibration
    with pytest.raises(ConfigError, match="'awq' needs calibration data"):
        m.calibrate(_tiny(), None)
