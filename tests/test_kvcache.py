"""Activation quantization (dynamic / static) and KV-cache quantization as QuantSpec parts."""
import copy

import pytest
import torch
from torch import nn

from bitsweep.methods.core.kvcache import (apply_activation_and_kv, needs_calibration, quantize_kv,
                             residual_window_attention)
from bitsweep.methods.core.qmodules import ActQuantizer, QuantLinear
from bitsweep.methods.core.registry import ConfigError, build_method
from bitsweep.methods.core.spec import KVSpec, QuantSpec


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


IDS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))


def test_quantize_kv_token_and_channel_groups():
    x = torch.randn(2, 3, 10, 8, generator=torch.Generator().manual_seed(1))
    kv = KVSpec(bits=2, sym=False)
    q = quantize_kv(x, kv, "token")
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    s = (hi - lo) / 3
    assert torch.allclose(q, torch.round((x - lo) / s) * s + lo, atol=1e-6)  # KIVI asym per token
    assert torch.allclose(q.amin(-1), x.amin(-1)) and torch.allclose(q.amax(-1), x.amax(-1))
    # per channel in groups of 4 tokens (10 = 4 + 4 + 2): each group has its own min/max
    qc = quantize_kv(x, KVSpec(bits=2, sym=False, group_size=4), "channel")
    for a, b in ((0, 4), (4, 8), (8, 10)):
        blk, qb = x[:, :, a:b], qc[:, :, a:b]
        assert torch.allclose(qb.amin(2), blk.amin(2)) and torch.allclose(qb.amax(2), blk.amax(2))
        assert all(len(torch.unique(qb[0, 0, :, d])) <= 4 for d in range(8))
    sym = quantize_kv(x, KVSpec(bits=4, sym=True), "token")
    s = x.abs().amax(-1, keepdim=True) / 7
    assert torch.allclose(sym, torch.clamp(torch.round(x / s), -7, 7) * s, atol=1e-6)
    fp8 = quantize_kv(x, KVSpec(format="fp8_e4m3", bits=8), "token")
    assert (fp8 - x).abs().max() < 0.1 * x.abs().max()


def test_residual_window_matches_hand_loop():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g) for _ in range(3))
    kq, vq = k.round(), v.round()  # any "quantized" stand-in
    out = residual_window_attention(q, k, v, kq, vq, None, 0.5, residual=2)  # [B, Tq, H, D]
    for i in range(5):
        keys = torch.stack([k[:, :, j] if j > i - 2 else kq[:, :, j] for j in range(i + 1)], 2)
        vals = torch.stack([v[:, :, j] if j > i - 2 else vq[:, :, j] for j in range(i + 1)], 2)
        p = torch.softmax(q[:, :, i:i + 1] @ keys.transpose(-1, -2) * 0.5, -1)
        assert torch.allclose(out[:, i], (p @ vals)[:, :, 0], atol=1e-6)


def test_kv_bits_order_and_full_window_is_exact():
    model = tiny_llama()
    ref = model(IDS).logits
    errs = {}
    for bits in (8, 4, 2):
        m = copy.deepcopy(model)
        apply_activation_and_kv(m, QuantSpec.from_dict({"kv_cache": {"bits": bits}}))
        with torch.no_grad():
            errs[bits] = float((m(IDS).logits - ref).abs().mean())
    assert 0 < errs[8] < errs[4] < errs[2]
    m = copy.deepcopy(model)
    apply_activation_and_kv(m, QuantSpec.from_dict({"kv_cache": {"bits": 2, "residual": 24}}))
    with torch.no_grad():
        assert torch.allclose(m(IDS).logits, ref, atol=1e-5)  # every key inside the 16-bit window
    m = copy.deepcopy(model)
    apply_activation_and_kv(m, QuantSpec.from_dict({"kv_cache": {"bits": 2, "residual": 8}}))
    with torch.no_grad():
        err_res = float((m(IDS).logits - ref).abs().mean())
    assert err_res < errs[2]


def test_one_pass_residual_equals_incremental_decoding():
    """Per-token K/V quantization + window: the one-pass simulation is what decoding sees."""
    from transformers import DynamicCache
    m = tiny_llama()
    apply_activation_and_kv(m, QuantSpec.from_dict({"kv_cache": {
        "bits": 3, "key_granularity": "token", "value_granularity": "token", "residual": 4}}))
    ids = IDS[:1, :12]
    with torch.no_grad():
        full = m(ids).logits
        cache = DynamicCache(config=m.config)
        out = m(ids[:, :6], past_key_values=cache, use_cache=True)
        steps = [out.logits]
        for t in range(6, 12):
            out = m(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-4)


def test_pre_rope_keys_are_quantized_at_k_proj():
    m = tiny_llama()
    apply_activation_and_kv(m, QuantSpec.from_dict({"kv_cache": {"bits": 2, "pre_rope": True}}))
    seen = []
    m.model.layers[0].self_attn.k_proj.register_forward_hook(lambda mod, a, out: seen.append(out))
    with torch.no_grad():
        m(IDS[:1])
    k = seen[0][0]  # [T, H_kv * D], per channel over tokens: at most 4 values each
    assert max(len(torch.unique(k[:, c])) for c in range(k.shape[1])) <= 4
    assert m.generate(IDS[:1, :5], max_new_tokens=3, do_sample=False).shape == (1, 8)


def test_dynamic_activations_with_any_method():
    m = tiny_llama()
    spec = QuantSpec.from_dict({"weights": None, "activations": {"bits": 8}})
    build_method({"name": "none"}, spec).convert(m)  # method leaves plain nn.Linear
    apply_activation_and_kv(m, spec)
    quants = [mod for n, mod in m.named_modules() if isinstance(mod, QuantLinear)]
    assert len(quants) == 14 and all(isinstance(q.act_quant, ActQuantizer) for q in quants)
    assert isinstance(m.lm_head, nn.Linear)  # skipped by the default filter
    assert not needs_calibration(spec)


def test_static_activation_scales_from_calibration():
    model = tiny_llama()
    spec = QuantSpec.from_dict({"weights": {"bits": 8, "granularity": "channel", "sym": True},
                                "activations": {"bits": 8, "granularity": "tensor", "dynamic": False}})
    assert needs_calibration(spec)
    m = build_method({"name": "rtn"}, spec).convert(copy.deepcopy(model))
    batches = [IDS[:1], IDS[1:]]
    # reference: max |input| of q_proj in layer 0 over the batches, quantization off
    amax = []
    probe = copy.deepcopy(m)
    for mod in probe.modules():
        if isinstance(mod, QuantLinear):
            mod.act_quant = None
    probe.model.layers[0].self_attn.q_proj.register_forward_pre_hook(
        lambda mod, a: amax.append(a[0].abs().max()))
    with torch.no_grad():
        for b in batches:
            probe(b)
    with pytest.raises(ConfigError, match="needs calibration batches"):
        apply_activation_and_kv(copy.deepcopy(m), spec)
    apply_activation_and_kv(m, spec, calib_batches=batches)
    aq = m.model.layers[0].self_attn.q_proj.act_quant
    assert torch.allclose(aq.static_scale, max(amax) / 127)
    with torch.no_grad():
        err = (m(IDS).logits - model(IDS).logits).abs().mean()
    assert err < 0.05


def test_bad_kv_and_activation_specs_are_rejected():
    model = tiny_llama()
    with pytest.raises(ConfigError, match="pre_rope=true with residual"):
        apply_activation_and_kv(model, QuantSpec.from_dict({"kv_cache": {"pre_rope": True, "residual": 8}}))
    with pytest.raises(ConfigError, match="static per-tensor scale"):
        apply_activation_and_kv(model, QuantSpec.from_dict({"activations": {
            "format": "fp8_e4m3", "bits": 8, "granularity": "tensor", "dynamic": False}}))
    with pytest.raises(ConfigError, match="has 8 bits"):
        apply_activation_and_kv(model, QuantSpec.from_dict({"kv_cache": {"format": "fp8_e4m3", "bits": 4}}))
