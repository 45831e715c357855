"""Tests of bitsweep.harness.zoo: stdlib corpus, tokenizer, spec registry, trainer, shipped default model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bitsweep.harness.zoo import (
    DEFAULT_MODEL, SPECS, UnknownZooModelError, ZooModelNotTrainedError, is_trained, list_models,
    load_zoo_model, zoo_path,
)
from bitsweep.harness.zoo.card import rtn_fake_quant
from bitsweep.harness.zoo.corpus import SPLITS, build_corpus, split_of
from bitsweep.harness.zoo.specs import TrainRecipe, ZooSpec, get_spec
from bitsweep.harness.zoo.tokenizer import train_tokenizer
from bitsweep.harness.zoo.train import evaluate_ppl, lr_at, parse_overrides, prepare_data, train

WORDS = ["alpha", "beta", "gamma", "delta", "value", "index", "result", "items", "count", "name"]


def _fake_source(i: int) -> str:
    """A small, varied Python module."""
    lines = [f'"""Module {i}."""', "import os", ""]
    for j in range(6):
        a, b = WORDS[(i + j) % 10], WORDS[(i * 3 + j) % 10]
        lines += [f"def {a}_{b}_{j}({a}, {b}=None):", f"    {a} = {a} + {j}", f"    if {b} is None:",
                  f"        return {a}", f"    return [{a}, {b}, {i}]", ""]
    return "\n".join(lines) + "\n"


@pytest.fixture()
def fake_stdlib(tmp_path):
    root = tmp_path / "lib"
    for i in range(40):
        sub = root / ("pkg" if i % 3 else "") / (f"m{i}.py")
        sub.parent.mkdir(parents=True, exist_ok=True)
        sub.write_text(_fake_source(i))
    for excluded in ("test/t.py", "tests/t.py", "idlelib/idle_test/t.py", "site-packages/x/y.py", "pkg/notes.txt",
                     "config-3.11-x86_64-linux-gnu/python-config.py", "_sysconfigdata__linux.py"):
        (root / excluded).parent.mkdir(parents=True, exist_ok=True)
        (root / excluded).write_text("x = 1\n")
    build_corpus.cache_clear()
    yield root
    build_corpus.cache_clear()


def test_corpus_split_deterministic_disjoint_covering(fake_stdlib):
    corpus = build_corpus(fake_stdlib)
    expected = sorted(p.relative_to(fake_stdlib).as_posix() for p in fake_stdlib.rglob("m*.py"))
    seen = []
    for split in SPLITS:
        docs = corpus.documents(split)
        rels = [rel for rel, _ in docs]
        assert rels == sorted(rels)
        assert all(split_of(rel) == split for rel in rels)
        seen += rels
    assert sorted(seen) == expected  # every kept file exactly once, excluded ones absent
    assert len(set(seen)) == len(seen)
    assert {s for s in SPLITS if corpus.documents(s)} == set(SPLITS)  # 40 files reach every split
    build_corpus.cache_clear()
    again = build_corpus(fake_stdlib)
    assert all(again.documents(s) == corpus.documents(s) for s in SPLITS)
    docs = corpus.documents("train")
    assert corpus.text("train") == "\n\n".join(t for _, t in docs)


def test_corpus_fingerprint_stable_and_sensitive(fake_stdlib):
    first = build_corpus(fake_stdlib).fingerprint
    build_corpus.cache_clear()
    assert build_corpus(fake_stdlib).fingerprint == first
    assert len(first) == 16
    target = sorted(fake_stdlib.rglob("m*.py"))[0]
    target.write_text(target.read_text() + "# changed\n")
    build_corpus.cache_clear()
    assert build_corpus(fake_stdlib).fingerprint != first


def test_bad_split_names_valid_choices(fake_stdlib):
    corpus = build_corpus(fake_stdlib)
    with pytest.raises(ValueError, match="train, validation, test"):
        corpus.text("valid")


def test_real_stdlib_corpus_is_fast_and_sizeable():
    build_corpus.cache_clear()
    corpus = build_corpus()
    chars = corpus.summary()["chars"]
    assert sum(chars.values()) > 5_000_000
    assert all(chars[s] > 0 for s in SPLITS)
    assert all("site-packages" not in rel and "/test/" not in f"/{rel}" for rel, _ in corpus.documents("train"))


def test_tokenizer_deterministic_and_round_trips(fake_stdlib):
    texts = [t for _, t in build_corpus(fake_stdlib).documents("train")]
    a, b = train_tokenizer(texts, 300), train_tokenizer(texts, 300)
    assert a.to_str() == b.to_str()
    sample = "def f(x):\n    return x + 1  # ünïcode\n"
    assert a.decode(a.encode(sample).ids) == sample


def test_param_counts_match_instantiated_model():
    from transformers import LlamaForCausalLM

    for name in ("stdlib-llama-1m", DEFAULT_MODEL):
        spec = get_spec(name)
        with torch.device("meta"):  # shapes only, no initialisation cost
            model = LlamaForCausalLM(spec.llama_config())
        total = sum(p.numel() for p in model.parameters())
        assert spec.param_counts()["params"] == total
        assert spec.param_counts()["non_embedding_params"] == total - model.model.embed_tokens.weight.numel()


def test_spec_rejects_non_multiple_of_128():
    with pytest.raises(ValueError, match="intermediate_size"):
        ZooSpec("bad", 128, 1, 200, 2, 2)


def test_unknown_and_untrained_names():
    with pytest.raises(UnknownZooModelError, match="stdlib-llama-4m"):
        load_zoo_model("stdlib-llama-4n")
    untrained = [row["name"] for row in list_models() if not row["trained"]]
    assert untrained, "the size suite has specs that are not trained"
    with pytest.raises(ZooModelNotTrainedError, match="zoo train"):
        load_zoo_model(untrained[0])


def test_list_models_marks_shipped_model_trained():
    rows = {row["name"]: row for row in list_models()}
    assert set(rows) == set(SPECS)
    shipped = rows[DEFAULT_MODEL]
    assert shipped["trained"] and is_trained(DEFAULT_MODEL)
    assert shipped["test_ppl"] is not None and 1.0 < shipped["test_ppl"] < 100.0
    assert shipped["params"] == get_spec(DEFAULT_MODEL).param_counts()["params"]
    assert (zoo_path(DEFAULT_MODEL) / "MODEL_CARD.md").is_file()
    assert (zoo_path(DEFAULT_MODEL) / "model.safetensors").stat().st_size <= 10 * 2**20


def test_shipped_model_loads_offline_and_runs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = load_zoo_model(DEFAULT_MODEL)
    text = "def add(a, b):\n    return a + b\n"
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T)
    assert tok.decode(ids[0]) == text
    assert tok.eos_token == "<|endoftext|>"
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (1, T, V)
    assert logits.shape == (1, ids.shape[1], 4096)
    assert torch.isfinite(logits).all()
    assert model.config.tie_word_embeddings and model.config.max_position_embeddings == 512
    log = json.loads((zoo_path(DEFAULT_MODEL) / "train_log.json").read_text())
    evals = json.loads((zoo_path(DEFAULT_MODEL) / "eval.json").read_text())
    assert log["data"]["corpus"]["fingerprint"] == evals["corpus"]["fingerprint"]


def test_evaluate_ppl_protocol_drops_remainder():
    torch.manual_seed(0)
    model = torch.nn.Module()
    emb = torch.nn.Embedding(50, 50)

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = emb

        def forward(self, input_ids, use_cache=False):
            return type("Out", (), {"logits": self.emb(input_ids)})()

    model = Toy()
    tokens = torch.randint(0, 50, (100,))
    res = evaluate_ppl(model, tokens, seqlen=16, batch_size=3)
    assert res["chunks"] == 6 and res["predicted_tokens"] == 6 * 15
    chunks = tokens[:96].view(6, 16)
    with torch.no_grad():
        logp = torch.log_softmax(emb(chunks[:, :-1]).float(), -1)
    manual = -logp.gather(-1, chunks[:, 1:, None]).mean()
    assert math.isclose(res["nll"], float(manual), rel_tol=1e-5)
    assert math.isclose(res["ppl"], math.exp(float(manual)), rel_tol=1e-5)
    longer = torch.cat([tokens, torch.randint(0, 50, (10,))])  # 110 tokens: still 6 full chunks
    assert math.isclose(evaluate_ppl(model, longer, seqlen=16)["nll"], res["nll"], rel_tol=1e-6)


def test_lr_schedule_and_overrides():
    recipe = TrainRecipe(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, recipe, 100) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3) and min(lrs[10:]) >= 0.1 - 1e-9
    assert parse_overrides(["lr=2e-3", "train_tokens=1e6"]) == {"lr": 2e-3, "train_tokens": 1_000_000}
    with pytest.raises(ValueError, match="weight_decay"):
        parse_overrides(["wd=0.1"])


def test_rtn_fake_quant_levels_and_error():
    torch.manual_seed(0)
    w = torch.randn(8, 256)
    for bits, group in ((8, None), (3, None), (2, 128)):
        q = rtn_fake_quant(w, bits, group)
        groups = q.view(8, -1, group or 256)
        assert max(len(torch.unique(g)) for g in groups.reshape(-1, group or 256)) <= 2**bits
    err8 = (rtn_fake_quant(w, 8) - w).abs().max()
    err2 = (rtn_fake_quant(w, 2) - w).abs().max()
    assert err8 < 0.03 < err2


def test_tiny_training_run_lowers_loss(fake_stdlib, tmp_path, monkeypatch):
    from transformers import AutoTokenizer, LlamaForCausalLM

    spec = ZooSpec("tiny-test", 128, 1, 128, 2, 2, vocab_size=320, max_position_embeddings=64,
                   recipe=TrainRecipe(train_tokens=40 * 8 * 32, batch_size=8, seq_len=32, lr=1e-2,
                                      warmup_steps=5, eval_every=20))
    monkeypatch.setitem(SPECS, spec.name, spec)
    data = tmp_path / "data"
    meta = prepare_data(data, spec.vocab_size, fake_stdlib)
    assert meta["vocab_size"] == 320 and meta["tokens"]["validation"] >= 64
    out = tmp_path / "model"
    torch.set_num_threads(1)
    log = train(spec.name, "cpu", out, data, log_every=5)
    losses = log["history"]["loss"]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0
    assert log["data"]["corpus"]["fingerprint"] == build_corpus(fake_stdlib).fingerprint
    model = LlamaForCausalLM.from_pretrained(str(out), use_safetensors=True)
    assert model.dtype == torch.float16
    assert AutoTokenizer.from_pretrained(str(out)).eos_token == "<|endoftext|>"
    assert json.loads((out / "train_log.json").read_text())["steps"] == 40


@pytest.mark.slow
def test_shipped_model_test_ppl_matches_card():
    from bitsweep.harness.zoo.card import measure

    evals = json.loads((zoo_path(DEFAULT_MODEL) / "eval.json").read_text())
    fresh = measure(DEFAULT_MODEL, rtn=False)
    assert fresh["test"]["ppl"] == pytest.approx(evals["test"]["ppl"], rel=1e-4)


def test_train_cli_bad_input_exit_code_2(capsys):
    from bitsweep.harness.zoo.train import main

    assert main(["stdlib-llama-4n"]) == 2
    assert "valid choices" in capsys.readouterr().err
    assert main([DEFAULT_MODEL, "--set", "wd=0.1"]) == 2
    assert "weight_decay" in capsys.readouterr().err
