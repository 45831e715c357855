"""Packaging: everything under the ``bitsweep`` namespace, nothing bare at the top level.

transformers 5 depends on PyPI's ``kernels``, so a top-level ``kernels`` (or ``methods``,
``harness``) of ours would shadow or be shadowed by a package every user has.
"""
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOPS = {"harness": "bitsweep.harness", "methods": "bitsweep.methods", "kernels": "bitsweep.kernels"}


def _setuptools_cfg() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_python_package_is_listed_under_bitsweep():
    cfg = _setuptools_cfg()
    listed = set(cfg["packages"])
    found = {".".join((TOPS[p.parent.relative_to(ROOT).parts[0]],) + p.parent.relative_to(ROOT).parts[1:])
             for top in TOPS for p in (ROOT / top).rglob("__init__.py")}
    missing = found - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert all(name.startswith("bitsweep.") for name in listed), sorted(listed)
    assert cfg["package-dir"] == {"bitsweep.harness": "harness", "bitsweep.methods": "methods",
                                  "bitsweep.kernels": "kernels", "bitsweep.conf": "conf"}


def test_console_script_and_extras():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert proj["scripts"]["bitsweep"] == "bitsweep.harness.cli:entry"
    assert {"dev", "diffusion", "slurm"} <= set(proj["optional-dependencies"])


def test_no_project_code_imports_bare_top_level_names():
    import re
    bad = re.compile(r"^\s*(from|import)\s+(kernels|methods|harness)(\.|\s|$)", re.M)
    hits = [f"{p.relative_to(ROOT)}" for d in ("harness", "methods", "kernels", "tests", "scripts")
            for p in (ROOT / d).rglob("*.py") if p.name != "test_packaging.py" and bad.search(p.read_text())]
    assert not hits, f"bare imports (use bitsweep.*): {hits}"


_FRESH = r"""
import importlib.util, json, sys
import kernels  # the third-party package (transformers' dependency), not ours
import bitsweep.kernels, bitsweep.methods, bitsweep.harness
print(json.dumps({"kernels": getattr(kernels, "__file__", None),
                  "ours": bitsweep.kernels.__file__,
                  "bare_methods": importlib.util.find_spec("methods") is not None,
                  "bare_harness": importlib.util.find_spec("harness") is not None}))
"""


def test_fresh_interpreter_outside_repo_resolves_third_party_kernels(tmp_path):
    pytest.importorskip("kernels", reason="PyPI 'kernels' (a transformers 5 dependency) not installed")
    import json
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", _FRESH], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["kernels"] and not got["kernels"].startswith(str(ROOT)), got
    assert got["ours"].startswith(str(ROOT / "kernels")) or "site-packages" in got["ours"], got
    assert not got["bare_methods"] and not got["bare_harness"], got


def test_real_mode_run_from_temp_dir_against_installed_package(tmp_path):
    """A real-mode run (packed Triton kernels under TRITON_INTERPRET=1) from outside the repo."""
    import json
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TRITON_INTERPRET"] = "1"
    store = tmp_path / "store"
    args = ["run", "method=rtn", "quant=w4g64", "real=true", "model=tiny_llama",
            "model.num_layers=1",
            "eval.ppl.max_chunks=1", "eval.ppl.seqlen=32", "device=cpu", f"store={store}"]
    r = subprocess.run([sys.executable, "-m", "bitsweep.harness.cli", *args], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    recs = [json.loads(p.read_text()) for p in store.glob("*.json")]
    assert len(recs) == 1 and recs[0]["status"] == "ok", recs
    layers = recs[0]["real_layers"]
    assert layers and any(v == "real" for v in layers.values()), layers
    ppl = [m for m in recs[0]["metrics"] if m["name"] == "ppl"][0]["value"]
    assert ppl > 1


def test_wheel_has_no_bare_top_level_packages(tmp_path):
    """The wheel a plain ``pip install .`` builds (build isolation fetches setuptools)."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                        str(ROOT)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("bitsweep-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"bitsweep"}, tops
    for must in ("bitsweep/kernels/__init__.py", "bitsweep/methods/core/registry.py",
                 "bitsweep/harness/cli.py", "bitsweep/conf/config.yaml",
                 "bitsweep/harness/zoo/models/stdlib-llama-4m/model.safetensors"):
        assert must in names, must
