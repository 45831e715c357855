"""Config hash semantics and the atomic results store."""
import json

import pytest

from bitsweep.harness.results import Store, atomic_write_json, config_hash


def test_hash_stable_across_key_order():
    a = {"model": {"name": "m", "dtype": "fp32"}, "quant": {"weights": {"bits": 4, "group_size": 128}}, "seed": 0}
    b = {"seed": 0, "quant": {"weights": {"group_size": 128, "bits": 4}}, "model": {"dtype": "fp32", "name": "m"}}
    assert config_hash(a) == config_hash(b)


@pytest.mark.parametrize("path,value", [
    (("quant", "weights", "bits"), 3), (("quant", "weights", "group_size"), 64), (("seed",), 1),
    (("method", "damp"), 0.02),
])
def test_hash_changes_with_any_numeric_field(path, value):
    base = {"quant": {"weights": {"bits": 4, "group_size": 128}}, "seed": 0, "method": {"damp": 0.01}}
    changed = json.loads(json.dumps(base))
    node = changed
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    assert config_hash(base) != config_hash(changed)


def test_hash_ignores_paths_and_launcher(tmp_path):
    """plan_run hashes the same identity whatever the store path, launcher or device."""
    from bitsweep.harness.run import plan_run
    cfg = {"model": {"source": "tiny", "family": "llama"}, "method": {"name": "rtn"},
           "quant": {"weights": {"bits": 4, "granularity": "channel"}}, "eval": {"ppl": {}},
           "data": {}, "seed": 0, "device": "cpu", "store": str(tmp_path / "a")}
    h1 = plan_run(cfg).hashes
    h2 = plan_run({**cfg, "store": str(tmp_path / "b"), "leaderboard": {"out": "x"}}).hashes
    assert h1 == h2
    h3 = plan_run({**cfg, "quant": {"weights": {"bits": 3, "granularity": "channel"}}}).hashes
    assert h3 != h1


def test_baseline_hash_ignores_quant(tmp_path):
    from bitsweep.harness.run import plan_run
    cfg = {"model": {"source": "tiny"}, "method": {"name": "none"}, "eval": {"ppl": {}},
           "seed": 0, "device": "cpu", "store": str(tmp_path)}
    a = plan_run({**cfg, "quant": {"weights": {"bits": 4}}}).hashes
    b = plan_run({**cfg, "quant": {"weights": {"bits": 2, "granularity": "channel"}}}).hashes
    assert a == b


def test_atomic_write_leaves_no_partial_file(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"a": 1})

    class Boom:
        def __repr__(self):
            raise RuntimeError("boom")
    with pytest.raises(Exception):
        atomic_write_json(p, {"a": Boom()})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_store_done_only_when_ok(tmp_path):
    s = Store(tmp_path)
    s.put({"config_hash": "h1", "status": "failed"})
    s.put({"config_hash": "h2", "status": "ok"})
    assert not s.is_done("h1") and s.is_done("h2") and not s.is_done("h3")
    assert sorted(r["config_hash"] for r in s.records()) == ["h1", "h2"]
