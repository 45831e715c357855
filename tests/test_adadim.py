"""AdaDim: picks the grouping (per-IC vs per-OC) with the lower calibration error, records it."""
import pytest
import torch
import transformers as T

from bitsweep.methods import QuantSpec, WeightSpec, build_method
from bitsweep.methods.weight_only.adadim import choose_grouping, hessian_error, ic_spec
from bitsweep.methods.weight_only.gptq import Hessian
from bitsweep.methods.core.qmodules import QuantLinear
from bitsweep.methods.core.quantizers import quantize_weight
from bitsweep.methods.core.registry import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one BLAS thread


def _data(outlier: str, n=64, k=128, t=512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(t, k, generator=g)
    w = torch.randn(n, k, generator=g)
    if outlier == "columns":  # alternating input-channel magnitudes: per-IC scales each
        w *= torch.tensor([1.0, 0.2]).repeat(k // 2)
    else:  # alternating output-row magnitudes: per-OC scales each
        w *= torch.tensor([1.0, 0.2]).repeat(n // 2)[:, None]
    h = Hessian(k, torch.device("cpu"))
    h.add(x)
    return x, w, h.H


def _err(x, w, w_hat):
    return (x @ w.T - x @ w_hat.T).pow(2).sum().item()


@pytest.mark.parametrize("outlier,expect", [("columns", "ic"), ("rows", "oc")])
@pytest.mark.parametrize("base", ["rtn", "gptq"])
def test_adadim_picks_better_grouping(outlier, expect, base):
    x, w, H = _data(outlier)
    spec = WeightSpec(bits=3, group_size=32)
    tag, w_hat, qw, chosen, errs = choose_grouping(w, H, spec, base)
    assert tag == expect and set(errs) == {"oc", "ic"}
    assert chosen.granularity == ("input_channel" if tag == "ic" else "group")
    other = ic_spec(spec) if tag == "oc" else spec
    w_other, _ = quantize_weight(w, other)
    if base == "rtn":  # the direct error agrees with the Hessian form
        assert _err(x, w, w_hat) < _err(x, w, w_other)
    torch.testing.assert_close(hessian_error(w, w_hat, H) * x.shape[0] / 2, _err(x, w, w_hat), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(qw.dequantize(), w_hat.float(), rtol=0, atol=1e-5)


def test_adadim_method_records_choices():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight *= torch.tensor([1.0, 0.1]).repeat(64)
    batches = [torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    m = build_method({"name": "adadim", "device": "cpu"}, QuantSpec.from_dict({"weights": {"bits": 3, "group_size": 32}}))
    m.calibrate(model, batches)
    model = m.convert(model)
    assert len(m.choices) == 14 and set(m.choices.values()) <= {"ic", "oc"}
    assert m.choices["model.layers.0.mlp.down_proj"] == "ic"
    q = model.model.layers[0].mlp.down_proj
    assert isinstance(q, QuantLinear) and q.adadim_choice == "ic" and q.qweight.granularity == "input_channel"


def test_adadim_validation():
    with pytest.raises(ConfigError, match="'adadim'.*granularity='tensor'.*group, channel"):
        build_method({"name": "adadim"}, QuantSpec.from_dict({"weights": {"bits": 3, "granularity": "tensor"}}))
    with pytest.raises(ConfigError, match="'adadim' supports quant.weights.format 'int' only"):
        build_method({"name": "adadim"}, QuantSpec.from_dict({"weights": {"format": "nf4", "bits": 4, "group_size": 64}}))
