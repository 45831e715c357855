"""Layer-wise engine and structure discovery on tiny random HF models (CPU)."""
import pytest
import torch
import transformers as T

from bitsweep.methods.core import structure as S
from bitsweep.methods.core.engine import run_layerwise

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one BLAS thread


H, I = 64, 128


def _tiny(kind: str):
    common = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
    cfg = {
        "llama": lambda: T.LlamaConfig(intermediate_size=I, num_key_value_heads=2, **common),
        "llama_mha": lambda: T.LlamaConfig(intermediate_size=I, **common),
        "mistral": lambda: T.MistralConfig(intermediate_size=I, num_key_value_heads=2, **common),
        "qwen2": lambda: T.Qwen2Config(intermediate_size=I, num_key_value_heads=2, **common),
        "opt": lambda: T.OPTConfig(ffn_dim=I, word_embed_proj_dim=H, max_position_embeddings=128, **common),
        "neox": lambda: T.GPTNeoXConfig(intermediate_size=I, **common),
        "falcon": lambda: T.FalconConfig(**common),
    }[kind]()
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


EXPECTED = {  # kind -> [(group kind, linears, norm, prev)]
    "llama": [("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm", None),
              ("o", ("self_attn.o_proj",), None, None),  # GQA: v cannot absorb o's input scale
              ("up", ("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", None),
              ("down", ("mlp.down_proj",), None, "mlp.up_proj")],
    "llama_mha": [("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm", None),
                  ("o", ("self_attn.o_proj",), None, "self_attn.v_proj"),
                  ("up", ("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", None),
                  ("down", ("mlp.down_proj",), None, "mlp.up_proj")],
    "opt": [("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn_layer_norm", None),
            ("o", ("self_attn.out_proj",), None, "self_attn.v_proj"),
            ("up", ("fc1",), "final_layer_norm", None),
            ("down", ("fc2",), None, "fc1")],  # ReLU is positively homogeneous
    "neox": [("qkv", ("attention.query_key_value",), "input_layernorm", None),
             ("o", ("attention.dense",), None, None),
             ("up", ("mlp.dense_h_to_4h",), "post_attention_layernorm", None),
             ("down", ("mlp.dense_4h_to_h",), None, None)],  # GELU: no fold
    "falcon": [("qkv_up", ("self_attention.query_key_value", "mlp.dense_h_to_4h"), "input_layernorm", None),
               ("o", ("self_attention.dense",), None, None),
               ("down", ("mlp.dense_4h_to_h",), None, None)],
}
EXPECTED["mistral"] = EXPECTED["qwen2"] = EXPECTED["llama"]


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_structure_discovery(kind):
    model = _tiny(kind)
    lay = S.model_layout(model)
    assert lay.num_blocks == 2
    got = [(g.kind, g.linears, g.norm, g.prev) for g in lay.block.groups]
    assert got == EXPECTED[kind]
    assert all(g.norm_foldable for g in lay.block.groups if g.norm)
    assert lay.final_norm is not None and lay.embeddings
    assert lay.lm_head == "lm_head"
    assert (lay.rotary is None) == (kind == "opt")


def test_find_blocks_needs_blocks():
    with pytest.raises(S.StructureError, match="no ModuleList"):
        S.find_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4)))


@pytest.mark.parametrize("kind", ["llama", "opt", "neox"])
def test_blockwise_equals_full_forward(kind):
    """Unquantized: block-by-block outputs, through final norm + head, equal the model's logits."""
    model = _tiny(kind)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 128, (1, 24), generator=g) for _ in range(3)]
    seen = []
    res = run_layerwise(model, batches, lambda ctx: seen.append(ctx.prefix), device="cpu")
    assert len(seen) == 2 and seen[0].endswith(".0")
    norm = model.get_submodule(S.final_norm(model))
    with torch.no_grad():
        for ids, hid in zip(batches, res.hidden):
            ref = model(ids, use_cache=False).logits
            got = model.lm_head(norm(hid))
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_engine_hooks_and_replace_propagate():
    """Hooks see each linear's inputs; a replaced module changes the next block's inputs (quantized
    propagation) but not with propagate='fp'."""
    model = _tiny("llama")
    batches = [torch.randint(0, 128, (1, 16)) for _ in range(2)]
    outs = {}
    for prop in ("quantized", "fp"):
        m = _tiny("llama")
        counts = []

        def proc(ctx):
            got = ctx.inputs(["self_attn.q_proj"])
            counts.append(sum(x.shape[0] for x in got["self_attn.q_proj"]))
            lin = ctx.module("mlp.down_proj")
            lin.weight.data.zero_()
        outs[prop] = run_layerwise(m, batches, proc, device="cpu", propagate=prop).hidden
        assert counts == [32, 32]
    assert not torch.allclose(outs["quantized"][0], outs["fp"][0])
    with pytest.raises(ValueError, match="propagate"):
        run_layerwise(model, batches, lambda c: None, propagate="bogus")
