"""Keep a source checkout's root off ``sys.path``.

bitsweep's folders (``harness/``, ``methods/``, ``kernels/``) are imported only as
``bitsweep.*`` (setuptools' package-dir mapping). A checkout's root on ``sys.path``
(``python -m ...`` or ``python -m pytest`` started in it puts the working directory
first) would expose them under their bare names, and a bare ``kernels`` shadows PyPI's
``kernels`` that transformers imports. :func:`drop_checkout_root` removes that entry.
The root is never needed: the installed package (editable or not) finds everything.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def drop_checkout_root() -> None:
    """Remove this checkout's root from ``sys.path`` and forget bare modules loaded from it."""
    if not (ROOT / "pyproject.toml").exists() or not (ROOT / "kernels" / "_checkout.py").exists():
        return  # an installed copy, not a checkout
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if Path(p or cwd).resolve() != ROOT]
    for name in ("kernels", "methods", "harness"):
        mod = sys.modules.get(name)
        origin = getattr(mod, "__file__", None) or ""
        if mod is not None and origin.startswith(str(ROOT) + os.sep):
            del sys.modules[name]
