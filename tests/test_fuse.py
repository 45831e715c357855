"""Sibling fusion (bitsweep.methods.core.fuse): exactness, one fused call per forward, fallbacks, reasons,
torch.compile, the config key and the e2e script's fused path. CPU; real kernels run under
TRITON_INTERPRET=1 (~0.3 s per call), so real-mode models have one layer and quantize only the
fused siblings. ``gpu`` (TRITON_INTERPRET=0): CUDA-graph capture/replay and inductor on a fused W4 model."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import copy  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from bitsweep.methods import QuantSpec, build_method  # noqa: E402
from bitsweep.methods.core.fuse import (FusedLinear, FusedMember, fuse_siblings, fusion_reason,  # noqa: E402
                          unfuse_siblings)
from bitsweep.methods.core.real import RealWeightOnlyLinear, to_real  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
QKV, GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")
IDS = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(0))


def _llama(layers: int = 2, bias: bool = False) -> LlamaForCausalLM:
    """GQA (2 kv heads): q is 64 wide, k and v 32, so the slices are uneven."""
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, attention_bias=bias)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _expected_report(layers: int) -> dict:
    rep = {}
    for i in range(layers):
        for parent, names, kind, holder in (("self_attn", QKV, "qkv", "qkv_proj"),
                                            ("mlp", GATE_UP, "gate_up", "gate_up_proj")):
            for n in names:
                rep[f"model.layers.{i}.{parent}.{n}"] = \
                    f"fused: {kind} ({len(names)} -> model.layers.{i}.{parent}.{holder})"
    return rep


def test_linear_fusion_is_exact_and_reversible():
    model = _llama(bias=True)
    ref, n_params = _logits(model), sum(p.numel() for p in model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert fuse_siblings(model) == _expected_report(2)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, FusedMember) and isinstance(attn.qkv_proj, FusedLinear)
    assert attn.qkv_proj.linear.weight.shape == (128, 64) and attn.qkv_proj.linear.bias.shape == (128,)
    assert sum(p.numel() for p in model.parameters()) == n_params  # members hold no weight copies
    # Same rows, same K reduction: on CPU the concatenated GEMM gives the members' numbers bit for bit.
    assert torch.equal(_logits(model), ref)
    assert len(unfuse_siblings(model)) == 4
    assert type(model.model.layers[1].mlp.up_proj) is nn.Linear
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())


@pytest.mark.parametrize("family,fused", [("llama", 10), ("mistral", 10), ("qwen2", 10), ("opt", 6),
                                          ("gpt_neox", 0)])
def test_tiny_families_fuse_exactly(family, fused):
    """Discovery across families: Qwen2 has q/k/v biases, OPT an fc1-only MLP, GPT-NeoX an already
    fused query_key_value (nothing to fuse)."""
    from transformers import AutoModelForCausalLM

    from bitsweep.harness.models import ModelConfig, tiny_config
    cfg = ModelConfig(source="tiny", name="t", family=family, hidden_size=64, intermediate_size=128,
                      num_layers=2, num_heads=4)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(cfg, 128)).eval()
    ref = _logits(model)
    report = fuse_siblings(model)
    assert len(report) == fused and all(v.startswith("fused: ") for v in report.values())
    assert torch.equal(_logits(model), ref)


def test_fused_group_runs_once_per_forward_and_releases_its_stash():
    model = _llama()
    fuse_siblings(model)
    holders = [m for m in model.modules() if isinstance(m, FusedLinear)]
    calls = {id(h): 0 for h in holders}
    for h in holders:
        h.linear.register_forward_hook(lambda mod, i, o, h=h: calls.__setitem__(id(h), calls[id(h)] + 1))
    _logits(model)
    assert len(holders) == 4 and set(calls.values()) == {1}
    _logits(model, IDS[:, :1])
    assert set(calls.values()) == {2}
    assert all(h.stash_x is None and h.stash_y is None for h in holders)


def test_member_recomputes_on_another_input_or_order():
    model = _llama(layers=1)
    attn = model.model.layers[0].self_attn
    orig = {n: copy.deepcopy(getattr(attn, n)) for n in QKV}
    fuse_siblings(model)
    x1, x2 = torch.randn(1, 3, 64), torch.randn(1, 3, 64)
    with torch.no_grad():
        assert torch.equal(attn.q_proj(x1), orig["q_proj"](x1))
        assert torch.equal(attn.k_proj(x2), orig["k_proj"](x2))  # not the stashed input: recomputed
        assert torch.equal(attn.v_proj(x1), orig["v_proj"](x1))
        assert attn.qkv_proj.stash_x is None  # the last member cleared it
        assert torch.equal(attn.v_proj(x2), orig["v_proj"](x2))  # out of order: still right
        assert torch.equal(attn.k_proj(x2), orig["k_proj"](x2))


def _w4(n: int, k: int = 64, bits: int = 4, group: int = 32, sym: bool = False, bias: bool = False):
    from bitsweep.kernels.packing import random_packed
    packed = random_packed(n, k, bits, group, sym=sym)[0]
    return RealWeightOnlyLinear(packed, torch.randn(n) if bias else None, torch.float32)


def test_fusion_reasons():
    assert fusion_reason([_w4(64), _w4(32)]) is None
    assert fusion_reason([_w4(64), _w4(32, bits=8)]) == "mismatched bits (4, 8)"
    assert fusion_reason([_w4(64), _w4(32, group=64)]) == "mismatched group_size (32, 64)"
    assert fusion_reason([_w4(64), _w4(32, sym=True)]) == "mismatched sym (False, True)"
    assert fusion_reason([_w4(64), _w4(32, bias=True)]) == "mismatched bias presence (False, True)"
    assert fusion_reason([_w4(64), _w4(32, k=128)]) == "mismatched in_features (64, 128)"
    assert fusion_reason([_w4(64), nn.Linear(64, 32)]) == "members mix types (RealWeightOnlyLinear, Linear)"
    assert fusion_reason([nn.Linear(64, 8), nn.Linear(64, 8).double()]).startswith("mismatched dtype")
    spec = QuantSpec.from_dict({"weights": {"bits": 4, "group_size": 32}})
    fake = build_method({"name": "rtn"}, spec).convert(nn.Sequential(nn.Linear(64, 8), nn.Linear(64, 8)))
    assert "QuantLinear has no fused form" in fusion_reason(list(fake))


def test_unfusable_groups_stay_with_a_reason():
    model = _llama()
    attn0 = model.model.layers[0].self_attn
    k = nn.Linear(64, 32, bias=True)
    k.weight.data.copy_(attn0.k_proj.weight)
    attn0.k_proj = k
    model.model.layers[1].self_attn.qkv_proj = nn.Identity()  # a name the holder would take
    ref = _logits(model)
    report = fuse_siblings(model, kinds=("qkv",))
    assert report["model.layers.0.self_attn.k_proj"] == "not fused: mismatched bias presence (False, True, False)"
    assert report["model.layers.1.self_attn.q_proj"] == \
        "not fused: model.layers.1.self_attn already has an attribute 'qkv_proj'"
    assert report["model.layers.0.mlp.up_proj"] == "not fused: kind 'gate_up' not requested (kinds=qkv)"
    assert not any(isinstance(m, FusedLinear) for m in model.modules())
    assert torch.equal(_logits(model), ref)
    with pytest.raises(ValueError, match="unknown fusion kind 'qvk'; valid: qkv, gate_up"):
        fuse_siblings(model, kinds=("qvk",))


def _counting(counts: dict, backend: str = "eager"):
    """A dynamo backend that counts graphs and fused-op nodes, then runs ``backend``."""
    from torch._dynamo.backends.registry import lookup_backend

    def compile_fn(gm, example_inputs):
        counts["graphs"] = counts.get("graphs", 0) + 1
        for node in gm.graph.nodes:
            if node.op == "call_function":
                key = str(node.target)
                counts[key] = counts.get(key, 0) + 1
        return lookup_backend(backend)(gm, example_inputs)
    return compile_fn


def test_compiled_fused_linear_model_is_one_graph_and_exact():
    """fullgraph=True: any graph break (e.g. at the stash's identity test) would raise."""
    torch.compiler.reset()
    model = _llama()
    fuse_siblings(model)
    ref, counts = _logits(model), {}
    with torch.no_grad():
        got = torch.compile(lambda ids: model(ids, use_cache=False).logits, backend=_counting(counts),
                            fullgraph=True, dynamic=False)(IDS)
    linears = sum(v for k, v in counts.items() if "linear" in k)
    assert counts["graphs"] == 1 and linears == 2 * 4 + 1  # per layer: qkv, o, gate_up, down; + lm_head
    assert torch.equal(got, ref)
    torch.compiler.reset()


@pytest.fixture(scope="module")
def real_llama():
    """One-layer Llama, RTN W4 g32 asym on q/k/v/gate/up, real kernels: (model, logits prefill, logits M=1)."""
    model = _llama(layers=1)
    spec = QuantSpec.from_dict({"weights": {"bits": 4, "group_size": 32, "sym": False},
                                "only": ["*q_proj", "*k_proj", "*v_proj", "*gate_proj", "*up_proj"]})
    build_method({"name": "rtn"}, spec).convert(model)
    assert set(to_real(model).values()) == {"real"}
    return model, _logits(model), _logits(model, IDS[:, :1])


def test_real_fused_matches_unfused(real_llama):
    model, ref, ref1 = real_llama
    model = copy.deepcopy(model)
    assert fuse_siblings(model) == _expected_report(1)
    fused = model.model.layers[0].mlp.gate_up_proj.linear
    assert type(fused) is RealWeightOnlyLinear and (fused.out_features, fused.bits, fused.sym) == (256, 4, False)
    # Rows of the packed layout are independent: each output row runs the member's code path over
    # the same words. Only a different split of K (a config chosen by shape) could reorder the fp32
    # sums, hence a tolerance at fp32 rounding level rather than equality.
    torch.testing.assert_close(_logits(model), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(model, IDS[:, :1]), ref1, rtol=1e-5, atol=1e-5)


def test_compiled_real_fused_matches_eager(real_llama):
    """aot_eager through the custom op's fake impl; one graph; one op per fused group."""
    torch.compiler.reset()
    model, ref, _ = real_llama
    model = copy.deepcopy(model)
    fuse_siblings(model)
    counts = {}
    with torch.inference_mode():
        got = torch.compile(lambda ids: model(ids, use_cache=False).logits, backend=_counting(counts, "aot_eager"),
                            fullgraph=True, dynamic=False)(IDS)
    assert counts["graphs"] == 1 and counts["bitsweep.weight_only_linear.default"] == 2
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.compiler.reset()


# ---------------------------------------------------------------- config / harness ----

def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bitsweep.harness.app import conf_dir, to_plain
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return to_plain(compose(config_name="config", overrides=overrides))


def test_fuse_key_composes_and_is_hashed_only_when_on(tmp_path):
    from bitsweep.harness.run import plan_run
    from bitsweep.methods.core.registry import ConfigError
    base = [f"store={tmp_path}", "model=tiny_llama", "method=rtn", "quant=w4g32", "real=true"]
    off, on = plan_run(_compose(base)), plan_run(_compose(base + ["fuse=true"]))
    assert (off.fuse, on.fuse) == (False, True)
    assert "fuse" not in off.identity and on.identity["fuse"] is True
    assert off.hashes["ppl"] != on.hashes["ppl"]
    assert plan_run(_compose([f"store={tmp_path}", "fuse=true"])).fuse  # the baseline fuses nn.Linear
    with pytest.raises(ConfigError, match="set real=true"):
        plan_run(_compose([f"store={tmp_path}", "method=rtn", "fuse=true"]))
    with pytest.raises(ConfigError, match="did you mean 'fuse'"):
        plan_run({**_compose([f"store={tmp_path}"]), "fused": True})


def test_run_records_fused_layers(tmp_path):
    """rtn + real + fuse on a one-layer tiny Llama through bitsweep.harness.run: the record says what fused."""
    from bitsweep.harness.run import run
    cfg = _compose([f"store={tmp_path}", "model=tiny_llama", "model.num_layers=1", "method=rtn", "quant=w4g32",
                    "real=true", "fuse=true", "eval.ppl.max_chunks=1", "eval.ppl.seqlen=16"])
    (rec,) = run(cfg)
    assert rec["status"] == "ok", rec["error"]
    assert rec["fuse"] is True and rec["fused_layers"] == _expected_report(1)
    assert set(rec["real_layers"].values()) == {"real"}


def test_speed_rows_count_real_and_fused_layers(tmp_path):
    """The speed evaluator tags its rows with how many layers ran real and fused (here on CPU the rows
    are unavailable, and still say so)."""
    from bitsweep.harness.run import run
    cfg = _compose([f"store={tmp_path}", "model=tiny_llama", "model.num_layers=1", "method=rtn", "quant=w4g32",
                    "real=true", "fuse=true", "eval=[speed]"])
    (rec,) = run(cfg)
    assert rec["status"] == "ok", rec["error"]
    n_real = sum(v == "real" for v in rec["real_layers"].values())
    n_fused = sum(v.startswith("fused") for v in rec["fused_layers"].values())
    assert n_real == 7 and n_fused == 5  # q/k/v/o + gate/up/down real; q/k/v and gate/up fused
    assert len(rec["metrics"]) == 3  # prefill, decode b1, b16
    for row in rec["metrics"]:
        assert row["tags"]["real_layers"] == n_real and row["tags"]["fused_layers"] == n_fused
        assert row["value"] is None and row["unavailable"] == "no CUDA device"


def _e2e_module():
    spec = importlib.util.spec_from_file_location("kernels_e2e", ROOT / "scripts" / "kernels_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_e2e_script_fused_path_on_cpu(tmp_path):
    """The script's --fuse path end to end minus timings (CPU records them as unavailable)."""
    out = tmp_path / "e2e.json"
    res = _e2e_module().main(["--tiny", "--device", "cpu", "--fuse", "--group", "32", "--layers", "1",
                              "--no-prefill", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    for tag in ("bf16", "w4"):
        summary = res[f"{tag}_fuse"]
        assert (summary["fused"], summary["groups"], summary["not_fused"]) == (5, 2, {})
        assert summary["logits_max_abs_diff"] <= 1e-5 * summary["logits_max_abs"]
        assert res[f"{tag}_fused_decode_tok_s_b1_error"].startswith("no CUDA device")
    assert "w4_fused_vs_bf16_fused_decode" not in res  # no made-up ratios without timings


def test_e2e_ratios_name_both_baselines():
    rec = _e2e_module().Recorder(None)
    rec.res.update(bf16_decode_tok_s_b1=100.0, bf16_fused_decode_tok_s_b1=125.0, w4_decode_tok_s_b1=200.0,
                   w4_fused_decode_tok_s_b1=250.0)
    _e2e_module().fused_ratios(rec)
    assert rec.res["w4_fused_vs_bf16_decode"] == 2.5 and rec.res["w4_fused_vs_bf16_fused_decode"] == 2.0
    assert rec.res["w4_fused_vs_best_bf16_decode"] == 2.0
    assert rec.res["bf16_fuse_gain_decode"] == 1.25 and rec.res["w4_fuse_gain_decode"] == 1.25
    assert "w4_fused_vs_bf16_compile_decode" not in rec.res


# ------------------------------------------------------------------------- GPU ----

@pytest.mark.gpu
def test_fused_w4_model_in_cuda_graph_and_compiled():
    """Fused W4 Llama on CUDA: graph replay == eager bit for bit (one capture, new input ids copied
    in), inductor-compiled close to eager, and the speed harness's compiled+graphed decode runs.
    Run with ``TRITON_INTERPRET=0 python3 -m pytest -m gpu tests/test_fuse.py``."""
    from bitsweep.harness.eval import speed
    from bitsweep.kernels._tuning import interpreting
    if interpreting():
        pytest.skip("TRITON_INTERPRET is set: run GPU tests with TRITON_INTERPRET=0")
    e2e = _e2e_module()
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
    model = e2e.build_model(cfg, "cuda")
    e2e.to_w4(model, 4, 128)
    report = fuse_siblings(model)
    assert all(v.startswith("fused") for v in report.values()) and len(report) == 10
    ids = IDS.cuda()

    def fwd():
        return model(ids, use_cache=False).logits

    with torch.inference_mode():
        fwd()  # kernel tuning outside capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fwd()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fwd()
        ids.copy_((IDS + 7) % 128)
        graph.replay()
        torch.cuda.synchronize()
        assert all(h.stash_x is None for h in model.modules() if isinstance(h, FusedLinear))
        ref = fwd()
        assert torch.equal(out, ref)
        compiled, failed = speed.compile_step(fwd, warmups=2)
        assert failed is None
        torch.testing.assert_close(compiled(), ref, rtol=5e-2, atol=5e-2)
    tps, mode = speed.measure_decode(model, 1, 8, repeats=1, compile=True)
    torch.compiler.reset()
    assert tps > 0 and mode == "static+compile+graph"


def test_e2e_target_summary_uses_the_faster_bf16():
    mod = _e2e_module()
    res = {"bf16_decode_tok_s_b1": 120.0, "bf16_compile_decode_tok_s_b1": 158.0,
           "bf16_fused_compile_decode_tok_s_b1": 169.0, "w4_compile_decode_tok_s_b1": 356.0,
           "w4_fused_compile_decode_tok_s_b1": 403.0, "w4_decode_tok_s_b1_seconds": 4.0}
    t = mod.target_summary(res)
    assert t["bf16"] == "bf16_fused_compile_decode_tok_s_b1" and t["w4"] == "w4_fused_compile_decode_tok_s_b1"
    assert t["measured"] == pytest.approx(403 / 169) and t["met"] is False
    assert mod.target_summary({})["met"] is None
