"""Text corpus built from the Python standard-library source on this machine.

Contract
--------
``build_corpus(root=None)`` walks ``root`` (default: ``sysconfig.get_paths()["stdlib"]``)
for ``*.py`` files, skipping ``site-packages``, test directories (``test``, ``tests``,
``idle_test``), byte-code caches, build-configuration folders (``config-*``),
machine-generated files (``_sysconfigdata*``) and the generated ``pydoc_data`` topic dump.
Every kept file goes to exactly one split, decided by its relative path alone::

    bucket = int(sha1(relpath).hexdigest(), 16) % 100
    bucket 0..89 -> "train", 90..94 -> "validation", 95..99 -> "test"

so the split of a file never depends on which other files exist.

``Corpus.documents(split)`` returns ``(relpath, text)`` pairs sorted by relpath,
``Corpus.text(split)`` joins their texts with ``"\\n\\n"``, and ``Corpus.fingerprint``
(16 hex chars) hashes the python version, and for every file its split, relpath and
content sha256: record it with every result computed on the corpus.

Files are read as bytes and decoded as UTF-8, falling back to Latin-1 for the few
legacy files that are not UTF-8, so decoding never fails. Results are cached per
process by resolved root path (``build_corpus.cache_clear()`` drops the cache).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
EXCLUDED_DIRS: frozenset[str] = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "pydoc_data"}
)
EXCLUDED_DIR_PREFIXES: tuple[str, ...] = ("config-",)
EXCLUDED_FILE_PREFIXES: tuple[str, ...] = ("_sysconfigdata",)


class UnknownSplitError(ValueError):
    """Raised for a split name that is not one of ``SPLITS``."""


def split_of(relpath: str) -> str:
    """Split of one file, from the sha1 of its POSIX relative path."""
    bucket = int(hashlib.sha1(relpath.encode("utf-8")).hexdigest(), 16) % 100
    if bucket < 90:
        return "train"
    if bucket < 95:
        return "validation"
    return "test"


def default_root() -> Path:
    """The standard-library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _keep_dir(name: str) -> bool:
    return name not in EXCLUDED_DIRS and not name.startswith(EXCLUDED_DIR_PREFIXES)


def _list_files(root: Path) -> list[str]:
    """Sorted POSIX relative paths of the corpus files under ``root``."""
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if _keep_dir(d))
        for fname in filenames:
            if fname.endswith(".py") and not fname.startswith(EXCLUDED_FILE_PREFIXES):
                rels.append(Path(dirpath, fname).relative_to(root).as_posix())
    return sorted(rels)


@dataclass(frozen=True)
class Corpus:
    """Documents of the three splits plus a fingerprint of the whole corpus."""

    root: str
    python_version: str
    fingerprint: str
    _docs: dict[str, tuple[tuple[str, str], ...]] = field(repr=False)

    @staticmethod
    def _check(split: str) -> str:
        if split not in SPLITS:
            raise UnknownSplitError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return split

    def documents(self, split: str) -> list[tuple[str, str]]:
        """``(relpath, text)`` pairs of one split, sorted by relpath."""
        return list(self._docs[self._check(split)])

    def text(self, split: str) -> str:
        """All documents of one split joined with a blank line."""
        return "\n\n".join(text for _, text in self._docs[self._check(split)])

    def n_files(self, split: str | None = None) -> int:
        if split is None:
            return sum(len(v) for v in self._docs.values())
        return len(self._docs[self._check(split)])

    def summary(self) -> dict:
        """Small JSON-able description (for model cards and result records)."""
        return {
            "root": self.root,
            "python_version": self.python_version,
            "fingerprint": self.fingerprint,
            "files": {s: len(self._docs[s]) for s in SPLITS},
            "chars": {s: sum(len(t) for _, t in self._docs[s]) for s in SPLITS},
            "split_rule": "sha1(relpath) % 100: 0-89 train, 90-94 validation, 95-99 test",
        }


@functools.lru_cache(maxsize=8)
def _build(root: str) -> Corpus:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"corpus root {root!r} is not a directory")
    docs: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    digest = hashlib.sha256()
    version = platform.python_version()
    digest.update(f"python={version}\n".encode())
    for rel in _list_files(path):
        raw = (path / rel).read_bytes()
        split = split_of(rel)
        docs[split].append((rel, _decode(raw)))
        digest.update(f"{split}\t{rel}\t{hashlib.sha256(raw).hexdigest()}\n".encode())
    corpus = Corpus(
        root=str(path),
        python_version=version,
        fingerprint=digest.hexdigest()[:16],
        _docs={s: tuple(v) for s, v in docs.items()},
    )
    log.info("corpus %s: %s files, fingerprint %s", root, corpus.n_files(), corpus.fingerprint)
    return corpus


def build_corpus(root: str | Path | None = None) -> Corpus:
    """Build (or fetch from the per-process cache) the corpus under ``root``."""
    resolved = Path(root) if root is not None else default_root()
    return _build(str(resolved.resolve()))


build_corpus.cache_clear = _build.cache_clear  # type: ignore[attr-defined]
