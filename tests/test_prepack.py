"""Prepacked scoring: packing invariants, mask semantics, and equality with lm-eval's padded HFLM."""
from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from bitsweep.harness.eval.prepack import (  # noqa: E402
    PackingUnsupportedError,
    PrepackedHFLM,
    block_causal_mask,
    pack_ffd,
    pack_rows,
    score_sequences,
    token_nll,
)

VOCAB = 320


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import PreTrainedTokenizerFast

    from bitsweep.harness.zoo.tokenizer import SPECIAL_TOKEN, train_tokenizer

    texts = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n", "import os\nprint(os.sep)\n"] * 20
    tok = train_tokenizer(texts, vocab_size=VOCAB)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_TOKEN, eos_token=SPECIAL_TOKEN,
                                   pad_token=SPECIAL_TOKEN, unk_token=SPECIAL_TOKEN)


def tiny_model(family: str, attn: str = "eager"):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, max_position_embeddings=256)
    if family == "llama":
        cfg = transformers.LlamaConfig(intermediate_size=64, num_hidden_layers=2, num_key_value_heads=2, **common)
        cls = transformers.LlamaForCausalLM
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(intermediate_size=64, num_hidden_layers=2, num_key_value_heads=2, **common)
        cls = transformers.Qwen2ForCausalLM
    elif family == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(intermediate_size=64, num_hidden_layers=2, rotary_pct=0.5, **common)
        cls = transformers.GPTNeoXForCausalLM
    elif family == "opt":
        cfg = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, ffn_dim=64,
                                     num_hidden_layers=2, max_position_embeddings=256, word_embed_proj_dim=32)
        cls = transformers.OPTForCausalLM
    elif family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256)
        cls = transformers.GPT2LMHeadModel
    else:
        raise KeyError(family)
    cfg._attn_implementation = attn
    return cls(cfg).eval()


def mixed_requests(n: int = 24, seed: int = 0):
    """((ctx, cont), ctx_tokens, cont_tokens) with lengths from 1 to ~120 tokens, some sharing a context."""
    rng = random.Random(seed)
    reqs = []
    for i in range(n):
        ctx = [rng.randrange(1, VOCAB) for _ in range(rng.choice([1, 3, 9, 30, 70, 110]))]
        for _ in range(rng.choice([1, 2])):  # shared contexts, like multiple-choice answers
            cont = [rng.randrange(1, VOCAB) for _ in range(rng.choice([1, 1, 2, 5, 12]))]
            reqs.append(((f"c{i}", f"k{len(reqs)}"), ctx, cont))
    return reqs


def test_pack_ffd_fits_and_covers():
    rng = random.Random(1)
    lengths = [rng.randrange(1, 100) for _ in range(200)]
    bins = pack_ffd(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # FFD is within 11/9 OPT + 1 of the optimum; the volume bound gives a floor on OPT
    assert len(bins) <= 11 / 9 * (sum(lengths) / 128 + 1) + 1
    with pytest.raises(ValueError, match="exceeds the pack capacity 10"):
        pack_ffd([11], 10)


def test_block_causal_mask_semantics():
    batch = pack_rows([[5, 6, 7], [8, 9]], [[0, 1]], width=7, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    mask = block_causal_mask(batch.segment_ids)[0, 0].int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1, 1],
    ])
    assert torch.equal(mask, expected)
    assert batch.places == [(0, 0, 3), (0, 3, 2)]


def test_score_sequences_matches_unpacked_forward():
    model = tiny_model("llama", "sdpa")
    rng = random.Random(3)
    seqs = [[rng.randrange(VOCAB) for _ in range(n)] for n in (5, 17, 2, 40, 9, 33)]
    targets = [s[1:] + [7] for s in seqs]
    got = score_sequences(model, seqs, targets, capacity=48, rows_per_batch=2)
    for seq, tgt, (logp, _) in zip(seqs, targets, got, strict=True):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
        ref = ref.gather(1, torch.tensor(tgt)[:, None])[:, 0]
        torch.testing.assert_close(logp, ref, atol=1e-4, rtol=1e-4)


def test_token_nll_matches_cross_entropy():
    model = tiny_model("gpt_neox", "sdpa")
    rng = random.Random(4)
    seqs = [[rng.randrange(VOCAB) for _ in range(n)] for n in (2, 30, 11, 64)]
    got = token_nll(model, seqs, rows_per_batch=2)
    for seq, nll in zip(seqs, got, strict=True):
        x = torch.tensor([seq])
        with torch.no_grad():
            ref = torch.nn.functional.cross_entropy(model(x).logits[0, :-1].float(), x[0, 1:], reduction="none")
        torch.testing.assert_close(nll, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family,attn", [("llama", "eager"), ("llama", "sdpa"), ("gpt_neox", "sdpa"),
                                         ("qwen2", "eager"), ("opt", "sdpa")])
def test_prepacked_hflm_equals_padded_hflm(tokenizer, family, attn):
    model = tiny_model(family, attn)
    padded = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    packed = PrepackedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=3)
    reqs = mixed_requests()
    ref = padded._loglikelihood_tokens(reqs, disable_tqdm=True)
    got = packed._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert len(got) == len(ref)
    for (lp_ref, g_ref), (lp, g) in zip(ref, got, strict=True):
        assert lp == pytest.approx(lp_ref, abs=1e-3)
        assert g == g_ref


def test_prepacked_rolling_equals_padded(tokenizer):
    model = tiny_model("llama", "sdpa")
    padded = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=32)
    packed = PrepackedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=32)
    texts = ["def f(x):\n    return x + 1\n" * k for k in (1, 3, 7)] + ["import os"]
    reqs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    ref = padded.loglikelihood_rolling(reqs, disable_tqdm=True)
    got = packed.loglikelihood_rolling(reqs, disable_tqdm=True)
    assert got == pytest.approx(ref, abs=1e-3)


def test_unsupported_family_raises(tokenizer):
    with pytest.raises(PackingUnsupportedError, match="model_type 'gpt2'.*llama"):
        PrepackedHFLM(pretrained=tiny_model("gpt2"), tokenizer=tokenizer, batch_size=2)
