"""pyproject lists every package, and the config tree / zoo weights ship as package data."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_python_package_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("harness", "methods", "kernels") for p in (ROOT / top).rglob("__init__.py")}
    missing = found - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert cfg["package-dir"]["harness.conf"] == "conf"


def test_console_script_and_extras():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert proj["scripts"]["bitsweep"] == "harness.cli:entry"
    assert {"dev", "diffusion", "slurm"} <= set(proj["optional-dependencies"])
