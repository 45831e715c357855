"""The command line: one-line errors with exit code 2 for user mistakes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitsweep.harness.cli import check_overrides, main


ROOT = Path(__file__).resolve().parent.parent


def bitsweep(*args, cwd=None, timeout=600):
    """Run the CLI in a fresh process against the installed package (no repo root on sys.path)."""
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "bitsweep.harness.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.mark.parametrize("arg,msg", [
    ("method=gtpq", "unknown method 'gtpq'"),
    ("model=lama", "unknown model 'lama'"),
    ("eval=[ppl,pplx]", "unknown evaluator 'pplx'"),
    ("experiment=quikstart", "unknown experiment 'quikstart'"),
    ("launcher=slurm", "unknown launcher 'slurm'"),
    ("method=none,rtm", "unknown method 'rtm'"),
    ("sede=1", "unknown config key 'sede'"),
])
def test_unknown_group_options_are_one_line(arg, msg):
    err = check_overrides([arg])
    assert err is not None and msg in err and "valid:" in err and "\n" not in err


def test_valid_overrides_pass():
    assert check_overrides(["method=none,rtn", "quant=w4g128", "eval=[ppl]", "seed=3",
                            "quant.weights.bits=3", "-m"]) is None


def test_unknown_command_exit_2(capsys):
    assert main(["rnu"]) == 2
    assert "unknown command 'rnu'" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("run", "leaderboard", "methods", "zoo", "bench kernels"):
        assert cmd in out


def test_methods_lists_fields(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "rtn:" in out and "none:" in out and "version" in out


def test_cli_unknown_method_subprocess(tmp_path):
    r = bitsweep("run", "method=gtpq", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown method 'gtpq'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,msg", [
    (["model=hf", "model.id=/nonexistent/model"], "local path does not exist"),
    (["method=rtn", "quant.weights.bits=17"], "quant.weights.bits=17"),
    (["method=rtn", "+quant.weights.bitz=3"], "unknown key 'bitz'"),
])
def test_cli_config_errors_exit_2(tmp_path, args, msg):
    r = bitsweep("run", *args, f"store={tmp_path}/store", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert msg in r.stderr and "Traceback" not in r.stderr
