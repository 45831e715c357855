"""LLM.int8(): threshold=inf is plain vector-wise INT8; outlier columns are exact; validation."""
import copy
import math

import pytest
import torch
from torch import nn

from bitsweep.methods.weight_act.llm_int8 import Int8MixedLinear
from bitsweep.methods.core.registry import ConfigError, build_method
from bitsweep.methods.core.spec import QuantSpec

W8A8 = {"weights": {"format": "int", "bits": 8, "granularity": "channel", "sym": True},
        "activations": {"format": "int", "bits": 8, "granularity": "token"}}


def _vectorwise_int8_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Hand reference: integer matmul of absmax/127 codes, rescaled by the outer product of scales."""
    cx = x.abs().amax(-1, keepdim=True) / 127  # [T, 1]
    cw = w.abs().amax(-1, keepdim=True) / 127  # [N, 1]
    xq = torch.round(x / cx).double()
    wq = torch.round(w / cw).double()
    return ((xq @ wq.t()) * (cx.double() @ cw.double().t())).float()


def _layer(seed=0, n=24, k=32):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=True)
    x = torch.randn(2, 5, k)
    return lin, x


def test_threshold_inf_equals_plain_int8_vectorwise():
    lin, x = _layer()
    y = Int8MixedLinear(lin, threshold=math.inf)(x)
    ref = _vectorwise_int8_reference(x.reshape(-1, 32), lin.weight.data).reshape(2, 5, 24) + lin.bias
    assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5)
    # and bit-for-bit the fake-quant form: dequantized per-token activations x dequantized rows
    from bitsweep.methods.core.quantizers import quantize_activation
    xq = quantize_activation(x, 8, True, "token")
    wq = quantize_activation(lin.weight.data, 8, True, "token")
    assert torch.equal(y, torch.nn.functional.linear(xq, wq, lin.bias))


def test_outlier_columns_are_exact():
    lin, x = _layer(1)
    x = x.clone()
    x[0, 2, 3] = 20.0  # column 3 is an outlier in one token only
    x[1, 4, 17] = -9.0  # column 17 too (negative)
    m16 = Int8MixedLinear(lin, threshold=6.0, outlier_weights="fp16")
    y = m16(x)
    cols = torch.zeros(32, dtype=torch.bool)
    cols[[3, 17]] = True
    x_reg = x.masked_fill(cols, 0)
    ref_int8 = _vectorwise_int8_reference(x_reg.reshape(-1, 32), lin.weight.data).reshape(2, 5, 24)
    ref = ref_int8 + x[..., cols] @ lin.weight.data[:, cols].t() + lin.bias
    assert torch.allclose(y, ref, atol=1e-5)
    # the outlier part is 16-bit: with every column an outlier the layer is exactly the 16-bit one
    all_out = Int8MixedLinear(lin, threshold=1e-6, outlier_weights="fp16")
    assert torch.allclose(all_out(x), lin(x), atol=1e-6)
    # decomposition beats plain INT8 when outliers are present
    plain = Int8MixedLinear(lin, threshold=math.inf)(x)
    assert (y - lin(x)).abs().mean() < 0.5 * (plain - lin(x)).abs().mean()
    # bitsandbytes-style int8 outlier weights: the activations of outlier columns stay exact
    m8 = Int8MixedLinear(lin, threshold=6.0, outlier_weights="int8")
    ref8 = ref_int8 + x[..., cols] @ m8.weight[:, cols].t() + lin.bias
    assert torch.allclose(m8(x), ref8, atol=1e-5)


def test_method_on_tiny_llama_and_effective_bits():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         vocab_size=128)).eval()
    ids = torch.randint(0, 128, (1, 16))
    spec = QuantSpec.from_dict(W8A8)
    m = build_method({"name": "llm_int8"}, spec).convert(copy.deepcopy(model))
    n_mixed = sum(isinstance(x, Int8MixedLinear) for x in m.modules())
    assert n_mixed == 14 and isinstance(m.lm_head, nn.Linear)
    from bitsweep.methods.core.qmodules import effective_bits
    assert effective_bits(m) == pytest.approx(8 + 32 / 96, rel=0.1)
    with torch.no_grad():
        rel = (m(ids).logits - model(ids).logits).norm() / model(ids).logits.norm()
    assert rel < 0.02
    # the activation hook leaves its modules alone
    from bitsweep.methods.core.kvcache import apply_activation_and_kv
    apply_activation_and_kv(m, spec)
    assert sum(isinstance(x, Int8MixedLinear) for x in m.modules()) == 14


def test_validation_names_the_field():
    with pytest.raises(ConfigError, match="llm_int8.*8-bit integer weights.*bits=4"):
        build_method({"name": "llm_int8"}, QuantSpec.from_dict({"weights": {"bits": 4}}))
    with pytest.raises(ConfigError, match="granularity=channel"):
        build_method({"name": "llm_int8"}, QuantSpec.from_dict({"weights": {"bits": 8}}))
    with pytest.raises(ConfigError, match="quant.activations"):
        build_method({"name": "llm_int8"}, QuantSpec.from_dict(
            {**W8A8, "activations": {"bits": 4}}))
    with pytest.raises(ConfigError, match="outlier_weights='bf16'"):
        build_method({"name": "llm_int8", "outlier_weights": "bf16"}, QuantSpec.from_dict(W8A8))
    with pytest.raises(ConfigError, match="threshold"):
        build_method({"name": "llm_int8", "threshold": -1.0}, QuantSpec.from_dict(W8A8))
