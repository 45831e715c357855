"""Zoo model specs: architecture (LlamaConfig fields) plus training recipe, by name.

Contract
--------
``SPECS`` maps a name to a frozen ``ZooSpec``. ``get_spec(name)`` raises
``UnknownZooModelError`` (a ValueError) naming the valid choices. ``ZooSpec.llama_config()``
builds the ``transformers.LlamaConfig``; ``ZooSpec.param_counts()`` gives total and
non-embedding parameter counts analytically (tied embeddings counted once, as embedding).

Every linear layer's in-features (hidden size and intermediate size) is a multiple of 128,
so group-128 quantization applies to every layer of every spec.

The ``stdlib-llama-*`` family is a size suite for scaling-law studies; the default model,
``stdlib-llama-4m``, is the one shipped with trained weights (its recipe was chosen by a
small sweep on validation loss, see its MODEL_CARD.md). The others are defined, with the
same token budget and a learning rate scaled by width (untuned), and trained on request.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field

from bitsweep.methods.core.registry import ConfigError

DEFAULT_MODEL = "stdlib-llama-4m"


class UnknownZooModelError(ConfigError):
    """Raised for a zoo model name that is not registered."""


@dataclass(frozen=True)
class TrainRecipe:
    """How a zoo model is trained (all numbers that change the weights)."""

    train_tokens: int = 47_841_280  # predicted tokens seen in training (730 steps of 128 x 512)
    batch_size: int = 128  # windows per optimizer step
    seq_len: int = 512  # tokens predicted per window (window holds seq_len + 1)
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.5  # decoupled (AdamW), on matrices only (not norms)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100  # steps between validation evaluations (does not change weights)

    def steps(self) -> int:
        return max(1, self.train_tokens // (self.batch_size * self.seq_len))


@dataclass(frozen=True)
class ZooSpec:
    """A named Llama-architecture model and its training recipe."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = 4096
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    description: str = ""

    def __post_init__(self) -> None:
        for fname in ("hidden_size", "intermediate_size"):
            if getattr(self, fname) % 128:
                raise ValueError(f"{self.name}: {fname}={getattr(self, fname)} is not a multiple of 128")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{self.name}: hidden_size not divisible by num_attention_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def config_dict(self) -> dict:
        """LlamaConfig keyword arguments."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "pad_token_id": 0,
        }

    def llama_config(self):
        from transformers import LlamaConfig

        kwargs = self.config_dict()
        rope_theta = kwargs.pop("rope_theta")
        config = LlamaConfig(**kwargs)
        # transformers >= 5 keeps rope settings in rope_parameters; older versions in rope_theta.
        if isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters["rope_theta"] = rope_theta
        else:
            config.rope_theta = rope_theta
        return config

    def param_counts(self) -> dict[str, int]:
        """Total and non-embedding parameter counts (tied lm_head counted once)."""
        d, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attn = d * d * 2 + d * kv * 2  # q, o and k, v projections
        mlp = 3 * d * self.intermediate_size
        per_layer = attn + mlp + 2 * d  # two RMSNorm weights
        embedding = self.vocab_size * d
        lm_head = 0 if self.tie_word_embeddings else self.vocab_size * d
        non_embedding = self.num_hidden_layers * per_layer + d + lm_head  # + final norm
        return {"params": embedding + non_embedding, "non_embedding_params": non_embedding}

    def to_dict(self) -> dict:
        return asdict(self)


def _suite() -> dict[str, ZooSpec]:
    """The stdlib-llama size suite (roughly 1M to 16M total parameters)."""
    specs = [
        ZooSpec("stdlib-llama-1m", 128, 2, 384, 2, 2,
                recipe=TrainRecipe(lr=4e-3),
                description="suite member, ~1M params"),
        ZooSpec("stdlib-llama-2m", 128, 6, 384, 2, 2,
                recipe=TrainRecipe(lr=4e-3),
                description="suite member, ~2M params"),
        ZooSpec("stdlib-llama-4m", 256, 4, 768, 4, 4,
                recipe=TrainRecipe(),
                description="embedded default model, shipped with trained weights"),
        ZooSpec("stdlib-llama-8m", 384, 4, 1024, 6, 6,
                recipe=TrainRecipe(lr=2e-3),
                description="suite member, ~8.7M params"),
        ZooSpec("stdlib-llama-16m", 512, 4, 1536, 8, 8,
                recipe=TrainRecipe(lr=1.5e-3),
                description="suite member, ~16M params"),
    ]
    return {s.name: s for s in specs}


SPECS: dict[str, ZooSpec] = _suite()


def register_spec(spec: ZooSpec) -> ZooSpec:
    """Add a spec to the registry (tests and studies may define their own)."""
    SPECS[spec.name] = spec
    return spec


def get_spec(name: str) -> ZooSpec:
    """The spec called ``name``; an unknown name lists the valid ones."""
    if name not in SPECS:
        close = difflib.get_close_matches(name, list(SPECS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownZooModelError(
            f"unknown zoo model {name!r}{hint}; valid choices: {', '.join(sorted(SPECS))}"
        )
    return SPECS[name]
