"""Model loading: hub id or local path, the project's zoo, and tiny random models.

``ModelConfig`` (from ``conf/model/*.yaml``; unknown keys rejected) selects a
``source``:

* ``hf``: ``AutoModelForCausalLM.from_pretrained(id, revision=..., dtype=...,
  device_map=..., use_safetensors=..., trust_remote_code=False unless asked)``;
  ``id`` is a hub id or a local folder;
* ``zoo``: a model trained by bitsweep's own code and shipped with it
  (``bitsweep.harness.zoo``), loaded offline;
* ``tiny``: a random model of a family (llama, opt, qwen2, gpt_neox, mistral)
  built from a config for tests, seeded; it uses the zoo tokenizer so it can be
  evaluated on the offline corpus.

Returns ``(model, tokenizer, info)``; ``info`` holds the label, parameter counts
and what was loaded (recorded with results).
"""
from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bitsweep.methods.core.registry import ConfigError, build_dataclass

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
SOURCES = ("hf", "zoo", "tiny")
TINY_FAMILIES = ("llama", "mistral", "qwen2", "opt", "gpt_neox")


@dataclass(frozen=True)
class ModelConfig:
    source: str = "zoo"
    name: str = "stdlib-llama-4m"  # zoo name, or a label for hf/tiny
    id: str | None = None  # hf: hub id or local path
    revision: str | None = None
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device_map: str | None = None
    trust_remote_code: bool = False
    use_safetensors: bool | None = True
    tokenizer: str | None = None  # hf: tokenizer id/path if different from id
    # tiny models
    family: str = "llama"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    max_position: int = 512
    seed: int = 0

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"model.source={self.source!r}; valid: {', '.join(SOURCES)}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r}; valid: auto, {', '.join(DTYPES)}")
        if self.source == "hf" and not self.id:
            raise ConfigError("model.id is required for source=hf (a hub id or a local path)")
        if self.source == "zoo":
            from bitsweep.harness.zoo import ZooModelNotTrainedError, is_trained
            if not is_trained(self.name):  # also rejects unknown names, listing the valid ones
                raise ZooModelNotTrainedError(
                    f"zoo model '{self.name}' has no weights yet; train it with "
                    f"`bitsweep zoo train {self.name} --device cuda` (see `bitsweep zoo`)")
        if self.source == "tiny" and self.family not in TINY_FAMILIES:
            raise ConfigError(f"model.family={self.family!r}; valid: {', '.join(TINY_FAMILIES)}")

    def label(self) -> str:
        if self.source == "hf":
            return self.id + (f"@{self.revision}" if self.revision else "")
        if self.source == "tiny":
            return f"tiny-{self.family}-{self.hidden_size}x{self.num_layers}"
        return self.name

    def identity(self) -> dict:
        """Fields that change numbers (for the config hash)."""
        d = asdict(self)
        d.pop("device_map")
        if self.source != "tiny":
            for k in ("family", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                      "num_kv_heads", "max_position", "seed"):
                d.pop(k)
        if self.source == "zoo":  # re-trained weights must not reuse old results
            d["weights_sha256"] = zoo_weights_digest(self.name)
        return d


@functools.lru_cache(maxsize=16)
def zoo_weights_digest(name: str) -> str | None:
    """SHA-256 (16 hex) of a zoo model's weight files; None if it is not trained."""
    from bitsweep.harness.zoo import zoo_path

    files = sorted(zoo_path(name).glob("*.safetensors")) if zoo_path(name).exists() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def model_config(d: dict) -> ModelConfig:
    cfg = build_dataclass(ModelConfig, d, "model")
    cfg.validate()
    return cfg


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA device is available; use device=cpu or auto")
    return device


def resolve_dtype(cfg: ModelConfig, device: str) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[cfg.dtype]


def load_model(cfg: ModelConfig, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """-> (model in eval mode on ``device``, tokenizer, info dict)."""
    if cfg.source == "zoo":
        from bitsweep.harness.zoo import load_zoo_model
        model, tok = load_zoo_model(cfg.name, dtype=dtype, device=device)
    elif cfg.source == "tiny":
        model, tok = _tiny_model(cfg, dtype)
        model.to(device)
    else:
        model, tok = _hf_model(cfg, device, dtype)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel() if model.get_input_embeddings() else 0
    info = {"label": cfg.label(), "source": cfg.source, "params": n_params,
            "non_embedding_params": n_params - emb, "dtype": str(dtype).replace("torch.", ""),
            "architecture": type(model).__name__}
    return model, tok, info


def _hf_model(cfg: ModelConfig, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ident = cfg.id
    local = Path(ident).expanduser()
    looks_local = ident.startswith((".", "/", "~")) or local.exists()
    if looks_local and not local.exists():
        raise ConfigError(f"model.id={ident!r}: local path does not exist")
    kwargs = dict(revision=cfg.revision, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                  use_safetensors=cfg.use_safetensors)
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(local) if looks_local else ident, **kwargs)
        tok = AutoTokenizer.from_pretrained(cfg.tokenizer or (str(local) if looks_local else ident),
                                            revision=cfg.revision,
                                            trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"could not load model '{ident}': {str(exc).splitlines()[0]}") from exc
    if not cfg.device_map:
        model.to(device)
    return model, tok


def tiny_config(cfg: ModelConfig, vocab_size: int):
    """A transformers config for a tiny random model of ``cfg.family``."""
    import transformers as tf

    h, L, nh = cfg.hidden_size, cfg.num_layers, cfg.num_heads
    kv = cfg.num_kv_heads or nh
    common = dict(vocab_size=vocab_size, hidden_size=h, num_attention_heads=nh,
                  num_hidden_layers=L, max_position_embeddings=cfg.max_position)
    if cfg.family in ("llama", "mistral", "qwen2"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[cfg.family]
        return cls(intermediate_size=cfg.intermediate_size, num_key_value_heads=kv,
                   tie_word_embeddings=False, **common)
    if cfg.family == "gpt_neox":
        return tf.GPTNeoXConfig(intermediate_size=cfg.intermediate_size, **common)
    return tf.OPTConfig(vocab_size=vocab_size, hidden_size=h, num_attention_heads=nh,
                        num_hidden_layers=L, ffn_dim=cfg.intermediate_size,
                        max_position_embeddings=cfg.max_position, word_embed_proj_dim=h)


def zoo_tokenizer(name: str = "stdlib-llama-4m"):
    """The tokenizer shipped with a zoo model (used by tiny models too)."""
    from transformers import AutoTokenizer

    from bitsweep.harness.zoo import zoo_path
    return AutoTokenizer.from_pretrained(str(zoo_path(name)))


def _tiny_model(cfg: ModelConfig, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    tok = zoo_tokenizer()
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(tiny_config(cfg, len(tok)))
    return model.to(dtype), tok
