"""torch.compile support: bitsweep custom ops (fake impls, opaque under dynamo) and the speed
evaluator's compile fallback. CPU: kernels run under TRITON_INTERPRET=1; compiled tests use
backend="aot_eager" (traces through dynamo + AOTAutograd with the fake impls but skips inductor's
C++ codegen, which costs ~40 s per graph on this machine); the inductor check is marked slow."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import logging  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import bitsweep.kernels.ops  # noqa: E402,F401  (registers torch.ops.bitsweep.*)
from bitsweep.harness.eval import speed  # noqa: E402
from bitsweep.harness.eval.base import build_evaluator  # noqa: E402
from bitsweep.methods.core.real import RealW8A8Linear, RealWeightOnlyLinear  # noqa: E402
from bitsweep.methods.core.registry import ConfigError  # noqa: E402


def _w4(n: int = 48, k: int = 64, group: int = 32, bias: bool = True, seed: int = 0) -> RealWeightOnlyLinear:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    scale = torch.rand(n, k // group, generator=g) * 0.01 + 0.001
    zero = torch.randint(0, 16, (n, k // group), generator=g).float()
    b = torch.randn(n, generator=g) if bias else None
    return RealWeightOnlyLinear(bitsweep.kernels.pack(codes, scale, zero, 4, group), b, torch.float32)


def _w8a8(n: int = 48, k: int = 64) -> RealW8A8Linear:
    g = torch.Generator().manual_seed(1)
    wq = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    return RealW8A8Linear(wq, torch.rand(n, generator=g) * 0.01, torch.randn(n, generator=g), torch.float16)


def test_fake_impls_give_shape_and_dtype():
    m, w8 = _w4(), _w8a8()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(torch.randn(2, 5, 64, dtype=torch.float16))
        y = torch.ops.bitsweep.weight_only_linear(x, m.qweight, m.scale, m.szero, None, 4, 32, 64, 48, False)
        y8 = torch.ops.bitsweep.w8a8_linear(x, w8.wq, w8.w_scale, w8.bias)
    assert (y.shape, y.dtype, y.is_contiguous()) == ((2, 5, 48), torch.float16, True)
    assert (y8.shape, y8.dtype) == ((2, 5, 48), torch.float16)


def test_weight_only_op_opcheck():
    """torch.library.opcheck: schema, fake impl vs real output (shape/dtype/strides), AOT dispatch."""
    m = _w4(n=16, k=32)
    x = torch.randn(3, 32)
    torch.library.opcheck(torch.ops.bitsweep.weight_only_linear.default,
                          (x, m.qweight, m.scale, m.szero, m.bias, 4, 32, 32, 16, False),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("make,dtype", [(_w4, torch.float32), (_w8a8, torch.float16)])
def test_compiled_real_linear_matches_eager(make, dtype):
    """fullgraph=True: dynamo must not break the graph at the real module (the op is opaque)."""
    torch.compiler.reset()
    mod = make()
    x = torch.randn(3, 64, dtype=dtype)

    def f(t):
        return torch.relu(mod(t * 2.0)) + 1.0

    with torch.inference_mode():
        ref = f(x)
        got = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=False)(x)
    assert got.dtype == ref.dtype and torch.equal(got, ref)


@pytest.mark.slow
def test_inductor_compiled_real_linear_matches_eager():
    torch.compiler.reset()
    mod = _w4()
    x = torch.randn(1, 64)
    with torch.inference_mode():
        got = torch.compile(lambda t: mod(t) * 0.5, fullgraph=True, dynamic=False)(x)
        ref = mod(x) * 0.5
    torch.testing.assert_close(got, ref)


def _tiny_llama_step():
    """A 1-layer Llama with one real W4 linear, its prompt in a StaticCache; returns the decode step."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.model.layers[0].mlp.down_proj = _w4(n=64, k=128, bias=False)
    cache = speed._static_cache(model, 1, 32)
    model(torch.arange(8)[None] % 128, past_key_values=cache, cache_position=torch.arange(8), use_cache=True)
    ids, pos = torch.zeros(1, 1, dtype=torch.long), torch.full((1,), 8, dtype=torch.long)
    return lambda: model(ids, past_key_values=cache, cache_position=pos, position_ids=pos[None],
                         use_cache=True).logits


def test_compiled_decode_step_matches_eager():
    """HF Llama decode step with a StaticCache + real W4 linear: compiled == eager, call for call.

    Each call advances the cache, so both runs make the same number of calls (2 eager warm-ups,
    2 compile warm-ups, 1 compared)."""
    with torch.inference_mode():
        eager = _tiny_llama_step()
        ref = [eager() for _ in range(5)][-1]
        step = _tiny_llama_step()
        step(), step()
        run, failed = speed.compile_step(step, backend="aot_eager", warmups=2)
        got = run()
    assert failed is None and run is not step
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_compile_step_falls_back_with_reason(monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("boom: no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", boom)
    step = lambda: 1  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="bitsweep.harness.eval.speed"):
        run, reason = speed.compile_step(step)
    assert run is step and reason == "RuntimeError: boom: no compiler here"
    assert "torch.compile failed" in caplog.text and "boom" in caplog.text


def test_compile_step_falls_back_when_first_call_fails(monkeypatch):
    """Compilation is lazy: an error on the first compiled call must also fall back."""
    def lazy_fail(fn, **kwargs):
        def compiled():
            raise AssertionError("inductor lowering failed")
        return compiled

    monkeypatch.setattr(torch, "compile", lazy_fail)
    calls = []
    run, reason = speed.compile_step(lambda: calls.append(1))
    assert reason == "AssertionError: inductor lowering failed" and calls == []
    run()
    assert calls == [1]


def test_bad_compile_mode_is_rejected():
    with pytest.raises(ValueError, match="reduce-overhead"):
        speed.compile_step(lambda: None, mode="reduce-overhead")
    with pytest.raises(ConfigError, match="compile_mode"):
        build_evaluator("speed", {"compile": True, "compile_mode": "fast"})
    ev = build_evaluator("speed", {"compile": True, "compile_mode": "max-autotune-no-cudagraphs"})
    assert ev.config.compile and ev.config.compile_mode == "max-autotune-no-cudagraphs"


def test_pdl_key_composes_and_is_hashed_only_when_on(tmp_path):
    """eval.speed.pdl from the real Hydra config: off (the default) leaves the speed hash as it was
    before the key existed; on gives another hash; a mistyped key is rejected."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bitsweep.harness.app import conf_dir, to_plain
    from bitsweep.harness.run import _eval_identity, plan_run

    def cfg(*extra):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return to_plain(compose(config_name="config", overrides=[f"store={tmp_path}", "eval=[speed]", *extra]))

    off, on = plan_run(cfg()), plan_run(cfg("eval.speed.pdl=true"))
    assert off.evaluators["speed"].config.pdl is False and on.evaluators["speed"].config.pdl is True
    assert "pdl" not in _eval_identity(off.evaluators["speed"])
    assert _eval_identity(on.evaluators["speed"])["pdl"] is True
    assert off.hashes["speed"] != on.hashes["speed"]
    old = {k: v for k, v in vars(off.evaluators["speed"].config).items() if k != "pdl"}  # the pre-pdl identity
    assert _eval_identity(off.evaluators["speed"]) == {**old, "_version": getattr(off.evaluators["speed"], "version", 1)}
    with pytest.raises(Exception, match="pdll"):
        plan_run(cfg("+eval.speed.pdll=true"))


def test_pdl_mode_sets_and_restores_both_flags():
    import torch._inductor.config as inductor_config

    from bitsweep.kernels import weight_only
    before = inductor_config.triton.enable_pdl, weight_only.USE_PDL
    with speed.pdl_mode(True):
        assert inductor_config.triton.enable_pdl is True and weight_only.USE_PDL is True
        with speed.pdl_mode(False):
            assert inductor_config.triton.enable_pdl is False and weight_only.USE_PDL is False
        assert weight_only.USE_PDL is True
    assert (inductor_config.triton.enable_pdl, weight_only.USE_PDL) == before
    x = torch.randn(1, 64)
    assert not weight_only.pdl_ok(x)  # CPU tensors never launch with PDL
