"""End to end: the quickstart sweep on a tiny model, resume, failed runs, the HTML leaderboard."""
import json
from html.parser import HTMLParser
from pathlib import Path

from test_cli import bitsweep

TINY = ["model=tiny_llama", "model.hidden_size=128", "model.intermediate_size=256",
        "eval.ppl.max_chunks=2", "eval.ppl.seqlen=128"]


def records(store: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted(store.glob("*.json"))}


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag not in ("meta", "br", "input", "img", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()


def test_quickstart_sweep_end_to_end_and_resume(tmp_path):
    store, out = tmp_path / "store", tmp_path / "lb"
    args = ["run", "experiment=quickstart", *TINY, f"store={store}", f"leaderboard.out={out}"]
    r = bitsweep(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(store)
    # (8 rtn configurations + one shared 16-bit baseline) x (ppl, lmeval)
    assert len(recs) == 18 and all(x["status"] == "ok" for x in recs.values())
    assert sorted(x["evaluator"] for x in recs.values()) == ["lmeval"] * 9 + ["ppl"] * 9
    base = [x for x in recs.values() if x["method"] == "none"]
    assert len(base) == 2 and {b["effective_bits"] for b in base} == {16.0}
    for x in recs.values():
        if x["evaluator"] == "ppl":
            m = [m for m in x["metrics"] if m["name"] == "ppl"][0]
            assert m["value"] > 1 and m["stderr"] is not None
        else:
            m = [m for m in x["metrics"] if m["name"] == "acc"][0]
            assert 0 <= m["value"] <= 1 and m["tags"]["task"] == "stdlib_nextline"
        for key in ("config_hash", "git", "versions", "started_at", "wall_s", "corpus_fingerprint", "device"):
            assert x.get(key) is not None, key
    md = (out / "leaderboard.md").read_text()
    assert md.count("| tiny-llama-128x2 |") == 9
    assert "W2g128" in md and "W8" in md and "stdlib_nextline:acc" in md
    csv = (out / "leaderboard.csv").read_text().splitlines()
    assert len(csv) == 10 and csv[0].startswith("model,method,quant,effective_bits")
    html = (out / "leaderboard.html").read_text()
    checker = _Checker()
    checker.feed(html)
    assert not checker.stack and {"table", "script", "th"} <= checker.tags
    assert "Plotly.newPlot" in html and 'id="chart0"' in html and "16-bit baseline" in html
    assert "cdn.plot.ly" not in html.split("<script")[1][:200]  # plotly is inlined (offline)

    # resume: a re-run skips every finished record (same run ids, nothing rewritten)
    r2 = bitsweep(*args, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert {k: v["run_id"] for k, v in records(store).items()} == {k: v["run_id"] for k, v in recs.items()}
    assert (r2.stdout + r2.stderr).count("skip (already recorded)") == 16


def test_failed_run_is_recorded_and_sweep_continues(tmp_path):
    store = tmp_path / "store"
    # hidden size 192: group 128 does not divide it (fails), group 64 does (runs)
    r = bitsweep("run", "-m", "method=rtn", "quant=w4g128,w4g64", "model=tiny_llama",
                 "model.hidden_size=192", "model.intermediate_size=256", "eval.ppl.max_chunks=1",
                 "eval.ppl.seqlen=128", f"store={store}", cwd=tmp_path)
    assert r.returncode == 1
    recs = list(records(store).values())
    status = sorted((x["quant_label"], x["status"]) for x in recs)
    assert status == [("W4g128", "failed"), ("W4g64", "ok")]
    failed = [x for x in recs if x["status"] == "failed"][0]
    assert "group_size=128 does not divide" in failed["error"]
    assert "1 of 2 records failed" in r.stderr
