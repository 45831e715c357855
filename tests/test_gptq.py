"""GPTQ: layer reconstruction error below RTN's; variants; codes in range; end to end on a tiny model."""
import pytest
import torch
import transformers as T

from bitsweep.methods import QuantSpec, WeightSpec, build_method
from bitsweep.methods.weight_only.gptq import Hessian, gptq_quantize
from bitsweep.methods.core.qmodules import QuantLinear
from bitsweep.methods.core.quantizers import quantize_weight
from bitsweep.methods.core.registry import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one BLAS thread


def _layer(n=48, k=256, t=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(t, k, generator=g) @ a + 0.1 * torch.randn(t, k, generator=g)
    x[:, :3] *= 8  # a few outlier input channels, as in LLMs
    return torch.randn(n, k, generator=g), x


def _err(x, w, w_hat):
    return (x @ w.T - x @ w_hat.T).pow(2).sum().item()


def test_hessian_running_average():
    w, x = _layer()
    h = Hessian(x.shape[1], torch.device("cpu"))
    for chunk in x.split(300):
        h.add(chunk)
    torch.testing.assert_close(h.H, 2 / x.shape[0] * x.T @ x, rtol=1e-4, atol=1e-4)


VARIANTS = [
    (WeightSpec(bits=3, group_size=128), {}),
    (WeightSpec(bits=3, group_size=128), dict(static_groups=True)),
    (WeightSpec(bits=3, group_size=128), dict(act_order=True, static_groups=True)),
    (WeightSpec(bits=4, granularity="channel", sym=True), dict(act_order=True)),
    (WeightSpec(bits=2, group_size=64), dict(block_size=32)),
    (WeightSpec(bits=4, granularity="input_channel", group_size=16), {}),
    (WeightSpec(format="fp4_e2m1", bits=4, group_size=32), {}),
    (WeightSpec(format="mxfp4", bits=4, group_size=32), {}),
]


@pytest.mark.parametrize("spec,kw", VARIANTS, ids=lambda v: str(v))
def test_gptq_beats_rtn(spec, kw):
    w, x = _layer()
    h = Hessian(x.shape[1], torch.device("cpu"))
    h.add(x)
    res = gptq_quantize(w, h.H, spec, **kw)
    rtn, _ = quantize_weight(w, spec)
    assert _err(x, w, res.w_hat) < 0.8 * _err(x, w, rtn)
    if spec.format == "int":
        q = res.qweight
        assert q.codes.min() >= 0 and q.codes.max() <= 2**spec.bits - 1
        torch.testing.assert_close(q.dequantize(), res.w_hat, rtol=0, atol=1e-5)
        assert q.scale.shape == rtn_scale_shape(spec, w.shape)


def rtn_scale_shape(spec, shape):
    _, qw = quantize_weight(torch.randn(shape), spec)
    return qw.scale.shape


def test_static_groups_use_original_minmax():
    """static_groups: scales are the RTN min/max scales of the original weights."""
    w, x = _layer()
    h = Hessian(x.shape[1], torch.device("cpu"))
    h.add(x)
    spec = WeightSpec(bits=4, group_size=64)
    res = gptq_quantize(w, h.H, spec, static_groups=True, act_order=True)
    _, qw = quantize_weight(w, spec)
    torch.testing.assert_close(res.qweight.scale, qw.scale)


def _tiny_llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def test_gptq_method_end_to_end():
    model = _tiny_llama()
    spec = QuantSpec.from_dict({"weights": {"bits": 4, "group_size": 32}})
    method = build_method({"name": "gptq", "device": "cpu"}, spec)
    batches = [torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    method.prepare(model)
    method.calibrate(model, batches)
    model = method.convert(model)
    qlin = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(qlin) == 14 and "lm_head" not in qlin  # 7 linears x 2 blocks, lm_head skipped
    assert all(m.effective_bits == pytest.approx(4 + 32 / 32) for m in model.modules() if isinstance(m, QuantLinear))
    with torch.no_grad():
        assert torch.isfinite(model(batches[0]).logits).all()


def test_gptq_validation_errors():
    spec = QuantSpec.from_dict({"weights": {"bits": 4, "group_size": 128}})
    with pytest.raises(ConfigError, match="gptq.*act_order.*static_groups"):
        build_method({"name": "gptq", "act_order": True}, spec)
    with pytest.raises(ConfigError, match="gptq.*quant.weights"):
        build_method({"name": "gptq"}, QuantSpec())
    with pytest.raises(ConfigError, match="unknown key 'dampp'"):
        build_method({"name": "gptq", "dampp": 0.1}, spec)
    m = build_method({"name": "gptq"}, spec)
    with pytest.raises(ConfigError, match="gptq.*needs calibration data"):
        m.calibrate(_tiny_llama(), [])


def test_gptq_leaves_inputs_unchanged():
    w, x = _layer()
    h = Hessian(x.shape[1], torch.device("cpu"))
    h.add(x)
    w0, H0 = w.clone(), h.H.clone()
    gptq_quantize(w, h.H, WeightSpec(bits=3, group_size=64))
    assert torch.equal(w, w0) and torch.equal(h.H, H0)
