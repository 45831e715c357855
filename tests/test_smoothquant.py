"""SmoothQuant: smoothing is exact in 16-bit (equivalence) and helps W8A8 on outlier activations."""
import copy

import pytest
import torch
import transformers as T

from bitsweep.methods import QuantSpec, build_method
from bitsweep.methods.core.engine import ScaledLinear, run_layerwise
from bitsweep.methods.core.registry import ConfigError
from bitsweep.methods.weight_act.smoothquant import smooth_block, smooth_scales

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one BLAS thread


def _tiny(kind="llama"):
    torch.manual_seed(0)
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
    cfg = {"llama": lambda: T.LlamaConfig(intermediate_size=128, num_key_value_heads=2, **common),
           "opt": lambda: T.OPTConfig(ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=128, **common),
           "neox": lambda: T.GPTNeoXConfig(intermediate_size=128, **common)}[kind]()
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # non-trivial norms, as in trained models
        for n, p in model.named_parameters():
            if "norm" in n and p.dim() == 1:
                p.add_(torch.rand_like(p))
    return model


def _batches(n=3, t=24):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 128, (1, t), generator=g) for _ in range(n)]


@pytest.mark.parametrize("kind,layers", [("llama", "norm"), ("llama", "all"), ("opt", "all"), ("neox", "all")])
def test_smoothing_is_exact_in_16bit(kind, layers):
    model = _tiny(kind)
    batches = _batches()
    with torch.no_grad():
        ref = [model(b, use_cache=False).logits for b in batches]
    info = []
    run_layerwise(model, batches, lambda ctx: info.append(smooth_block(ctx, 0.5, layers)), device="cpu")
    assert info[0]  # something was smoothed
    if layers == "all" and kind == "neox":  # GELU MLP, fused qkv: scales kept on the input
        assert info[0]["down"] == "input" and info[0]["o"] == "input"
        assert any(isinstance(m, ScaledLinear) for m in model.modules())
    with torch.no_grad():
        for b, r in zip(batches, ref):
            torch.testing.assert_close(model(b, use_cache=False).logits, r, rtol=1e-4, atol=1e-4)


def test_smooth_scales_formula():
    act = torch.tensor([4.0, 1.0, 9.0])
    w = [torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[-4.0, 1.0, 0.25]])]
    s = smooth_scales(act, w, 0.5)
    torch.testing.assert_close(s, torch.tensor([4 ** .5 / 4 ** .5, 1 / 2 ** .5, 9 ** .5 / 0.5 ** .5]))


def _outlier_model():
    model = _tiny("llama")
    with torch.no_grad():  # activation outliers in a few channels, as in LLMs
        for layer in model.model.layers:
            layer.input_layernorm.weight[:3] *= 30
            layer.post_attention_layernorm.weight[:3] *= 30
    return model


def test_smoothquant_w8a8_beats_rtn():
    base = _outlier_model()
    batches = _batches(4, 32)
    with torch.no_grad():
        ref = [base(b).logits for b in batches]
    spec = QuantSpec.from_dict({"weights": {"bits": 8, "granularity": "channel", "sym": True},
                                "activations": {"bits": 6, "granularity": "tensor", "dynamic": False}})
    errs = {}
    for name in ("rtn", "smoothquant"):
        model = copy.deepcopy(base)
        m = build_method({"name": name, **({"device": "cpu"} if name != "rtn" else {})}, spec)
        m.prepare(model)
        m.calibrate(model, batches)
        model = m.convert(model)
        with torch.no_grad():
            errs[name] = sum((model(b).logits - r).pow(2).mean().item() for b, r in zip(batches, ref))
    assert errs["smoothquant"] < errs["rtn"]


def test_smoothquant_validation():
    with pytest.raises(ConfigError, match="smoothquant.*alpha"):
        build_method({"name": "smoothquant", "alpha": 1.5}, QuantSpec.from_dict({"weights": {"bits": 8}}))
    with pytest.raises(ConfigError, match="smoothquant.*layers.*norm, all"):
        build_method({"name": "smoothquant", "layers": "some"}, QuantSpec.from_dict({"weights": {"bits": 8}}))
    with pytest.raises(ConfigError, match="smoothquant.*base.*rtn, gptq"):
        build_method({"name": "smoothquant", "base": "hqq"}, QuantSpec.from_dict({"weights": {"bits": 8}}))
