"""Model loading (tiny families, local HF folders) and the perplexity protocol."""
import math

import pytest
import torch

from bitsweep.harness import data as hdata
from bitsweep.harness.eval.ppl import Perplexity, ppl_from_nll, window_nll
from bitsweep.harness.eval.base import EvalContext
from bitsweep.harness.models import load_model, model_config
from bitsweep.methods import ConfigError


@pytest.mark.parametrize("family", ["llama", "opt", "qwen2", "gpt_neox", "mistral"])
def test_tiny_family_builds_and_round_trips_through_a_local_folder(family, tmp_path):
    cfg = model_config({"source": "tiny", "family": family, "hidden_size": 32,
                        "intermediate_size": 64, "num_layers": 1, "num_heads": 2})
    model, tok, info = load_model(cfg)
    ids = tok("def f(x):\n    return x\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    assert info["params"] > info["non_embedding_params"] > 0
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model2, _, info2 = load_model(model_config({"source": "hf", "id": str(tmp_path / "m")}))
    with torch.no_grad():
        torch.testing.assert_close(model2(input_ids=ids).logits, logits)
    assert info2["label"] == str(tmp_path / "m")


def test_missing_local_model_path_is_a_clear_error():
    with pytest.raises(ConfigError, match="local path does not exist"):
        load_model(model_config({"source": "hf", "id": "./no/such/model"}))


def test_unknown_model_source_and_family():
    with pytest.raises(ConfigError, match="model.source='hub'; valid: hf, zoo, tiny"):
        model_config({"source": "hub"})
    with pytest.raises(ConfigError, match="model.family='gpt2'"):
        model_config({"source": "tiny", "family": "gpt2"})


def test_hub_dataset_code_path_with_a_local_dataset(tmp_path, monkeypatch):
    """The wikitext2 path runs datasets.load_dataset for real, pointed at a local folder."""
    folder = tmp_path / "wt"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"text": "first document"}\n{"text": "second one"}\n')
    local = hdata.HFSource(str(folder), None, {"test": ("test", None)})
    monkeypatch.setitem(hdata.SOURCES, "wikitext2", local)
    assert hdata.load_documents("wikitext2", "test") == ["first document", "second one"]
    with pytest.raises(ConfigError, match="no split 'train'"):
        hdata.load_documents("wikitext2", "train")


def test_unknown_dataset_lists_choices():
    with pytest.raises(ConfigError, match="unknown dataset 'wikitext'.*did you mean 'wikitext2'"):
        hdata.resolve_source("wikitext")


class _Tok:
    """Character-level tokenizer for an exact protocol check."""

    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        return {"input_ids": torch.tensor([[ord(c) % 50 for c in text]])}


def test_ppl_protocol_non_overlapping_windows_remainder_dropped(tmp_path, monkeypatch):
    text_file = tmp_path / "t.txt"
    text_file.write_text("abcdefghij" * 10 + "xyz")  # 103 tokens -> 3 windows of 32, 7 dropped
    tok = _Tok()
    hdata._token_stream_cached.cache_clear()
    win = hdata.eval_windows(f"local:{text_file}", "test", tok, 32)
    assert win.shape == (3, 32)
    assert torch.equal(win.flatten(), tok(text_file.read_text())["input_ids"][0][:96])

    torch.manual_seed(0)

    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 50)
            self.config = type("C", (), {"max_position_embeddings": 32})()

        def forward(self, input_ids):
            return type("O", (), {"logits": self.emb(input_ids)})()

    model = Bigram()
    nll = window_nll(model, win, batch_size=2)
    logp = torch.log_softmax(model.emb(win).double(), -1)
    manual = -logp[:, :-1].gather(-1, win[:, 1:, None]).squeeze(-1).mean(1)
    torch.testing.assert_close(nll, manual, rtol=1e-5, atol=1e-5)
    ppl, se = ppl_from_nll(nll)
    assert ppl == pytest.approx(math.exp(manual.mean().item()), rel=1e-5) and se > 0

    rows = Perplexity(Perplexity.Config(datasets=(f"local:{text_file}",), seqlen=2048)).evaluate(
        model, tok, EvalContext())
    assert rows[0].name == "ppl" and rows[0].tags["seqlen"] == 32  # capped at the model maximum
    assert rows[0].value == pytest.approx(ppl, rel=1e-5)
