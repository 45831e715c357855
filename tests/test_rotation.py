"""QuaRot-style rotation: exact function preservation, W4A4 gain with outlier channels, composition."""
import copy

import pytest
import torch

from bitsweep.methods.core.qmodules import QuantLinear
from bitsweep.methods.core.registry import ConfigError, UnknownNameError, build_method
from bitsweep.methods.weight_act.rotation import (OnlineRotation, fwht, hadamard_like, randomized_hadamard, rotate_model,
                              sylvester)
from bitsweep.methods.core.spec import QuantSpec

W4A4 = {"weights": {"bits": 4, "granularity": "channel", "sym": True},
        "activations": {"bits": 4, "granularity": "token"}}


def tiny(family="llama", tie=False, seed=0, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    cls_cfg, cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    m = cls(cls_cfg(hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tie)).eval()
    with torch.no_grad():  # non-trivial norm scales, so fusing them matters
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m


IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_matrices_are_orthogonal_and_fast_transform_matches():
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ sylvester(32), atol=1e-12)
    for n in (64, 96, 768):
        q = randomized_hadamard(n, 0)
        assert torch.allclose(q @ q.t(), torch.eye(n, dtype=torch.float64), atol=1e-10)
    rot = OnlineRotation(torch.nn.Linear(96, 4), 96, seed=5)
    assert torch.allclose(rot.rotate(x[..., :3].repeat(1, 1, 32)),
                          x[..., :3].repeat(1, 1, 32) @ torch.kron(sylvester(32), rot.small), atol=1e-12)
    assert torch.allclose(hadamard_like(96, 5), torch.kron(sylvester(32), rot.small))


@pytest.mark.parametrize("family,tie", [("llama", False), ("llama", True), ("qwen2", False)])
def test_rotation_preserves_the_16bit_model(family, tie):
    model = tiny(family, tie)
    with torch.no_grad():
        ref = model(IDS).logits
        m = copy.deepcopy(model)
        rotate_model(m, seed=0)
        out = m(IDS).logits
    assert _rel(out, ref) < 1e-4
    # the weights really changed, the online rotation is in place, norms are all ones
    assert not torch.allclose(m.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert isinstance(m.model.layers[0].mlp.down_proj, OnlineRotation)
    assert torch.all(m.model.layers[1].input_layernorm.weight == 1)
    if tie:  # untied: the embedding and the head now differ
        assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()


def plant_outliers(model, channels=(3, 17, 40), factor=30.0):
    """Outlier feature dimensions at the norm outputs, as in real LLMs: a few channels of
    every RMSNorm scale are large and the linears reading them have small weights there
    (scaled by 1/factor), so the 16-bit function is unchanged but per-token activation
    quantization is dominated by channels that carry little of the signal."""
    c = list(channels)
    with torch.no_grad():
        for layer in model.model.layers:
            pairs = [(layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj,
                                              layer.self_attn.v_proj]),
                     (layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj])]
            for norm, lins in pairs:
                norm.weight[c] *= factor
                for lin in lins:
                    lin.weight[:, c] /= factor
    return model


def test_w4a4_with_rotation_beats_w4a4_without_on_outlier_channels():
    clean = tiny(seed=1)
    model = plant_outliers(copy.deepcopy(clean))
    spec = QuantSpec.from_dict(W4A4)
    with torch.no_grad():
        ref = model(IDS).logits
        assert _rel(ref, clean(IDS).logits) < 1e-5  # planting keeps the 16-bit function
        plain = build_method({"name": "rtn"}, spec)
        m0 = plain.convert(copy.deepcopy(model))
        rot = build_method({"name": "rotation", "base": "rtn"}, spec)
        m1 = copy.deepcopy(model)
        rot.prepare(m1)
        rot.calibrate(m1, None)
        m1 = rot.convert(m1)
        e_plain, e_rot = _rel(m0(IDS).logits, ref), _rel(m1(IDS).logits, ref)
    assert e_rot < 0.7 * e_plain, (e_rot, e_plain)
    inner = m1.model.layers[0].mlp.down_proj.linear
    assert isinstance(inner, QuantLinear) and inner.act_quant is not None  # A4 on the rotated input


def test_rotation_composes_with_gptq():
    model = tiny(seed=2, layers=1)
    spec = QuantSpec.from_dict({"weights": {"bits": 4, "granularity": "channel", "sym": True}})
    method = build_method({"name": "rotation", "base": "gptq", "base_args": {"device": "cpu"}}, spec)
    assert method.needs_calibration
    batches = [torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    m = copy.deepcopy(model)
    method.prepare(m)
    method.calibrate(m, batches)
    m = method.convert(m)
    quant = [n for n, x in m.named_modules() if isinstance(x, QuantLinear)]
    assert len(quant) == 7 and "model.layers.0.mlp.down_proj.linear" in quant
    with torch.no_grad():
        assert _rel(m(IDS).logits, model(IDS).logits) < 0.2


def test_rotation_validation():
    spec = QuantSpec.from_dict(W4A4)
    with pytest.raises(UnknownNameError, match="gtpq"):
        build_method({"name": "rotation", "base": "gtpq"}, spec)
    with pytest.raises(ConfigError, match="base=rotation"):
        build_method({"name": "rotation", "base": "rotation"}, spec)
    from transformers import OPTConfig, OPTForCausalLM
    opt = OPTForCausalLM(OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                                   vocab_size=64, word_embed_proj_dim=32, max_position_embeddings=64))
    with pytest.raises(ConfigError, match="not an RMSNorm"):
        rotate_model(opt)
