"""bitsweep's model zoo: small Llama models trained by the project on the stdlib corpus.

Contract
--------
- ``list_models() -> list[dict]``: one row per registered spec: ``name``, ``params``,
  ``non_embedding_params``, ``trained`` (weights present), ``path``, ``test_ppl`` and
  ``val_ppl`` (from the folder's ``eval.json`` when measured, else None), ``description``.
- ``zoo_path(name) -> Path``: the folder holding (or to hold) the model's files,
  ``harness/zoo/models/<name>``. Unknown names raise ``UnknownZooModelError``.
- ``load_zoo_model(name, dtype=torch.float32, device="cpu") -> (model, tokenizer)``:
  ``LlamaForCausalLM.from_pretrained(path, use_safetensors=True)`` and the folder's own
  tokenizer, offline. A spec without weights raises ``ZooModelNotTrainedError`` that says
  how to train it.

The default model is ``DEFAULT_MODEL`` (``stdlib-llama-4m``); see its MODEL_CARD.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from bitsweep.methods.core.registry import ConfigError
from bitsweep.harness.zoo.specs import DEFAULT_MODEL, SPECS, UnknownZooModelError, ZooSpec, get_spec

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"

__all__ = [
    "DEFAULT_MODEL", "SPECS", "UnknownZooModelError", "ZooModelNotTrainedError", "ZooSpec",
    "get_spec", "is_trained", "list_models", "load_zoo_model", "zoo_path",
]


class ZooModelNotTrainedError(ConfigError, FileNotFoundError):
    """Raised when a registered zoo model has no weights yet."""


def zoo_path(name: str) -> Path:
    """Folder of zoo model ``name`` (it may not exist yet)."""
    get_spec(name)
    return MODELS_DIR / name


def is_trained(name: str) -> bool:
    path = zoo_path(name)
    return (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def _eval_info(path: Path) -> dict:
    eval_file = path / "eval.json"
    if not eval_file.is_file():
        return {}
    return json.loads(eval_file.read_text())


def list_models() -> list[dict]:
    """All registered zoo models with sizes, training status and measured perplexities."""
    rows = []
    for name in sorted(SPECS, key=lambda n: SPECS[n].param_counts()["params"]):
        spec, path = SPECS[name], zoo_path(name)
        info = _eval_info(path) if is_trained(name) else {}
        rows.append({
            "name": name,
            **spec.param_counts(),
            "trained": is_trained(name),
            "path": str(path),
            "test_ppl": info.get("test", {}).get("ppl"),
            "val_ppl": info.get("validation", {}).get("ppl"),
            "description": spec.description,
        })
    return rows


def load_zoo_model(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load zoo model ``name`` and its tokenizer from the local folder (no network)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = zoo_path(name)
    if not is_trained(name):
        raise ZooModelNotTrainedError(
            f"zoo model {name!r} is defined but not trained (no weights in {path}); train it with "
            f"`bitsweep zoo train {name}` or `python -m bitsweep.harness.zoo.train {name} --device cuda`"
        )
    model = LlamaForCausalLM.from_pretrained(
        str(path), use_safetensors=True, dtype=dtype, local_files_only=True
    )
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer
