"""Evaluator ``lmeval``: local tasks offline, equality with direct lm-eval, bad input."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from bitsweep.harness.eval.base import EvalContext, build_evaluator  # noqa: E402
from bitsweep.harness.eval.lmeval import (  # noqa: E402
    HubUnavailableError,
    LmevalConfig,
    UnknownTaskError,
    metric_rows,
    run_lmeval,
)
from bitsweep.harness.tasks import TASKS_DIR, LocalTaskError, load_jsonl, local_tasks  # noqa: E402
from bitsweep.harness.tasks.build import build_examples, is_target  # noqa: E402

LIMIT = 8
VOCAB = 512


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import PreTrainedTokenizerFast

    from bitsweep.harness.zoo.tokenizer import SPECIAL_TOKEN, train_tokenizer

    rows = load_jsonl(TASKS_DIR / "stdlib_nextline" / "stdlib_nextline.jsonl")[:40]
    tok = train_tokenizer([r["context"] for r in rows], vocab_size=VOCAB)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_TOKEN, eos_token=SPECIAL_TOKEN,
                                   pad_token=SPECIAL_TOKEN, unk_token=SPECIAL_TOKEN)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def bitsweep_result(model, tokenizer):
    ev = build_evaluator("lmeval", {"tasks": ["stdlib_nextline"], "limit": LIMIT, "batch_size": 8})
    ctx = EvalContext()
    return ev.evaluate(model, tokenizer, ctx), ctx


# ----------------------------------------------------------------------------- local task files


def test_packaged_task_is_indexed_with_fingerprint():
    tasks = local_tasks()
    assert "stdlib_nextline" in tasks
    from bitsweep.harness.tasks import read_task_yaml

    cfg = read_task_yaml(tasks["stdlib_nextline"])
    assert cfg["output_type"] == "multiple_choice"
    assert len(cfg["metadata"]["corpus_fingerprint"]) == 16
    rows = load_jsonl(TASKS_DIR / "stdlib_nextline" / "stdlib_nextline.jsonl")
    assert len(rows) == cfg["metadata"]["n_examples"] >= 200
    for row in rows:
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        assert is_target(row["choices"][row["label"]])


def test_generator_is_deterministic_and_uses_other_files(tmp_path):
    docs = [(f"m{i}.py", "\n".join(f"value_{i}_{j} = compute_{j}(argument_{i})" for j in range(40)))
            for i in range(5)]
    a = build_examples(docs, n=30, seed=7)
    assert a == build_examples(docs, n=30, seed=7)
    assert a != build_examples(docs, n=30, seed=8)
    for row in a:
        rel, lineno = row["id"].split(":")
        true = row["choices"][row["label"]]
        assert true == dict(docs)[rel].splitlines()[int(lineno) - 1]
        for k, choice in enumerate(row["choices"]):
            if k != row["label"]:
                assert f"value_{rel[1]}_" not in choice  # distractors come from other files


# ----------------------------------------------------------------------------- equivalence


def test_lmeval_equals_direct_simple_evaluate(model, tokenizer, bitsweep_result):
    rows, ctx = bitsweep_result
    direct = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), tasks=["stdlib_nextline"],
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        limit=LIMIT, log_samples=False)
    res = direct["results"]["stdlib_nextline"]
    got = {(r.name, r.tags["filter"]): r for r in rows}
    assert set(got) == {("acc", "none"), ("acc_norm", "none")}
    for (name, filt), row in got.items():
        assert row.value == res[f"{name},{filt}"]
        assert row.stderr == res[f"{name}_stderr,{filt}"]
        assert row.tags == {"task": "stdlib_nextline", "n_shot": 0, "filter": "none", "limit": LIMIT}
    extra = ctx.record_extra["lmeval"]
    assert extra["versions"] == {"stdlib_nextline": 1.0}
    assert extra["n_samples"]["stdlib_nextline"]["effective"] == LIMIT
    assert extra["task_metadata"]["stdlib_nextline"]["corpus_fingerprint"]


def test_packing_gives_same_metrics(model, tokenizer, bitsweep_result):
    rows, _ = bitsweep_result
    cfg = LmevalConfig(tasks=("stdlib_nextline",), limit=LIMIT, batch_size=4, packing=True)
    packed = metric_rows(run_lmeval(model, tokenizer, cfg), cfg.limit)
    assert [r.name for r in packed] == [r.name for r in rows]
    assert [r.value for r in packed] == pytest.approx([r.value for r in rows])


def test_metric_rows_parses_na_stderr_and_filters():
    res = {"results": {"t": {"alias": "t", "exact_match,strict": 0.5, "exact_match_stderr,strict": "N/A",
                             "acc,none": 0.25, "acc_stderr,none": 0.1}}, "n-shot": {"t": 5}}
    rows = metric_rows(res, None)
    assert [(r.name, r.value, r.stderr, r.tags["filter"]) for r in rows] == [
        ("exact_match", 0.5, None, "strict"), ("acc", 0.25, 0.1, "none")]


# ----------------------------------------------------------------------------- bad input


def test_unknown_task_error_is_one_line_with_close_names():
    from bitsweep.harness.eval.lmeval import unknown_task_error

    err = unknown_task_error("hellaswg", ["hellaswag", "hellaswag_de", "piqa", "arc_easy"])
    assert str(err) == "unknown lm-eval task 'hellaswg'; did you mean: hellaswag, hellaswag_de?"
    assert "\n" not in str(unknown_task_error("zzz", ["piqa"]))


@pytest.mark.slow
def test_unknown_task_suggests_close_names(model, tokenizer):
    """Indexes lm-eval's ~15k built-in tasks (~20-30 s on a small CPU), hence slow."""
    cfg = LmevalConfig(tasks=("stdlib_nextlin",), limit=2)
    with pytest.raises(UnknownTaskError, match=r"unknown lm-eval task 'stdlib_nextlin'; did you mean: stdlib_nextline"):
        run_lmeval(model, tokenizer, cfg)


def test_unknown_config_key_is_an_error():
    from bitsweep.methods.core.registry import ConfigError

    with pytest.raises(ConfigError, match="num_fewshots"):
        build_evaluator("lmeval", {"tasks": ["stdlib_nextline"], "num_fewshots": 0})


def _copy_task(tmp_path, jsonl_lines=None, yaml_text=None):
    src = TASKS_DIR / "stdlib_nextline"
    dst = tmp_path / "mytask"
    dst.mkdir()
    text = (src / "stdlib_nextline.yaml").read_text().replace("task: stdlib_nextline", "task: my_nextline")
    (dst / "my.yaml").write_text(yaml_text if yaml_text is not None else text)
    lines = (src / "stdlib_nextline.jsonl").read_text().splitlines()[:5]
    (dst / "stdlib_nextline.jsonl").write_text("\n".join(jsonl_lines or lines) + "\n")
    (dst / "utils.py").write_text((src / "utils.py").read_text())
    return dst


def test_malformed_jsonl_names_file_and_line(model, tokenizer, tmp_path):
    good = (TASKS_DIR / "stdlib_nextline" / "stdlib_nextline.jsonl").read_text().splitlines()
    dst = _copy_task(tmp_path, jsonl_lines=[good[0], good[1], '{"context": "x", "choices": ['])
    cfg = LmevalConfig(tasks=("my_nextline",), include_path=(str(tmp_path),), limit=2)
    with pytest.raises(LocalTaskError, match=rf"{dst}/stdlib_nextline.jsonl:3: invalid JSON"):
        run_lmeval(model, tokenizer, cfg)


def test_malformed_yaml_names_file_and_line(model, tokenizer, tmp_path):
    dst = _copy_task(tmp_path, yaml_text="task: my_nextline\noutput_type: multiple_choice\nmetric_list: [acc\n")
    cfg = LmevalConfig(tasks=("my_nextline",), include_path=(str(tmp_path),), limit=2)
    with pytest.raises(LocalTaskError, match=rf"{dst}/my.yaml:\d+: malformed task YAML"):
        run_lmeval(model, tokenizer, cfg)


def test_user_include_path_task_runs(model, tokenizer, tmp_path):
    _copy_task(tmp_path)
    cfg = LmevalConfig(tasks=("my_nextline",), include_path=(str(tmp_path),), limit=3)
    rows = metric_rows(run_lmeval(model, tokenizer, cfg), cfg.limit)
    assert {r.name for r in rows} == {"acc", "acc_norm"}


@pytest.mark.slow
def test_hub_task_offline_fails_fast(model, tokenizer):
    """Indexes lm-eval's ~15k built-in tasks (~20 s), hence slow."""
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    cfg = LmevalConfig(tasks=("piqa",), limit=2)
    with pytest.raises(HubUnavailableError, match="piqa need the Hugging Face hub"):
        run_lmeval(model, tokenizer, cfg)


def test_hub_unreachable_probe_fails_fast(monkeypatch):
    from bitsweep.harness.eval import lmeval as mod

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    with pytest.raises(HubUnavailableError, match="piqa, boolq need the Hugging Face hub"):
        mod.check_hub(["piqa", "boolq"])
    mod.check_hub([])  # nothing to check


def test_empty_tasks_rejected():
    with pytest.raises(ValueError, match="tasks is empty"):
        LmevalConfig(tasks=())
    assert json.dumps(LmevalConfig(tasks="stdlib_nextline").tasks) == '["stdlib_nextline"]'


def test_committed_task_files_are_what_the_generator_writes(tmp_path):
    """The shipped jsonl/YAML are regenerated byte for byte (when this Python's corpus is the recorded one)."""
    from bitsweep.harness.tasks import read_task_yaml
    from bitsweep.harness.tasks.build import build
    from bitsweep.harness.zoo.corpus import build_corpus

    shipped = TASKS_DIR / "stdlib_nextline"
    meta = read_task_yaml(shipped / "stdlib_nextline.yaml")["metadata"]
    if build_corpus().fingerprint != meta["corpus_fingerprint"]:
        pytest.skip(f"this Python's stdlib corpus differs from the recorded one ({meta['corpus_python']})")
    build(out=tmp_path, n=meta["n_examples"], seed=meta["seed"])
    for name in ("stdlib_nextline.yaml", "stdlib_nextline.jsonl", "utils.py"):
        assert (tmp_path / "stdlib_nextline" / name).read_bytes() == (shipped / name).read_bytes(), name
