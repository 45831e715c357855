"""Method ``rotation``: QuaRot-style rotations (Ashkboos et al. 2024, "QuaRot: Outlier-Free
4-Bit Inference in Rotated LLMs", arXiv 2404.00456), composed with a base method for the
rounding (``base: rtn`` or ``base: gptq``, built through the method registry).

What it does (``prepare``, before the base method sees the model), row-vector convention
``y = x W^T``:

1. Fuses every RMSNorm scale into the linears it feeds (``W <- W diag(g)``, ``g <- 1``),
   the final norm into ``lm_head`` (untied from the embeddings if tied).
2. Rotates the residual stream by a randomized Hadamard matrix ``Q`` [h, h]:
   embeddings ``E <- E Q``; linears reading the residual (attention / MLP inputs,
   ``lm_head``) ``W <- W Q``; linears writing it (attention output, MLP down) ``W <- Q^T W``,
   ``b <- Q^T b``. RMSNorm commutes with ``Q`` (it only divides by the row norm), so the
   16-bit model computes the same function.
3. Online Hadamard on the down-projection input: the down linear is wrapped in
   :class:`OnlineRotation` which applies ``T`` to its input at run time, and ``T`` is
   fused into its weight (``W_down <- W_down T``). Activation quantizers of the wrapped
   linear see the rotated input.
4. Optionally (``rotate_ov``) a Hadamard per attention head between ``v_proj``'s output
   and ``o_proj``'s input, fused into both weights (works with GQA).

Matrices: for n = 2^k * m (m odd) the transform is ``H_{2^k} / sqrt(2^k)`` (Sylvester)
Kronecker a seeded random orthogonal m x m matrix (m = 1 for powers of two); ``Q`` also
gets seeded random signs. QuaRot uses known Hadamard matrices for m in {12, 20, 28, ...,
172}; this file does not ship those tables, so for sizes like 768 = 256 x 3 the odd
factor is a random orthogonal block (an orthogonal rotation all the same).

Not done (deliberately): the online Hadamard across heads before ``o_proj``, the
query/key rotation for KV-cache quantization, LayerNorm models (OPT, NeoX, Falcon: they
need mean-subtraction fused first) -- rejected with a clear error.
Model structure (blocks, norm feeding each linear group, embeddings, final norm) comes
from :mod:`methods.structure`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bitsweep.methods.core.registry import ConfigError, Method, MethodConfig, build_method, register_method

log = logging.getLogger(__name__)


# ------------------------------------------------------------- matrices ----

def split_pow2(n: int) -> tuple[int, int]:
    """n -> (p, m) with n = p * m, p the largest power of two dividing n."""
    p = n & -n
    return p, n // p


def sylvester(p: int) -> torch.Tensor:
    """Normalized Sylvester Hadamard matrix [p, p] (float64, orthogonal, symmetric)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(p)


def random_orthogonal(m: int, seed: int) -> torch.Tensor:
    """Seeded Haar-random orthogonal [m, m] (float64); identity for m = 1."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))[None, :]).contiguous()


def hadamard_like(n: int, seed: int) -> torch.Tensor:
    """Orthogonal [n, n] = H_p kron M_m (see module docstring), float64."""
    p, m = split_pow2(n)
    return torch.kron(sylvester(p), random_orthogonal(m, seed))


def randomized_hadamard(n: int, seed: int) -> torch.Tensor:
    """Q = diag(random signs) @ hadamard_like(n): the residual-stream rotation [n, n]."""
    g = torch.Generator().manual_seed(seed + 1)
    signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
    return signs[:, None] * hadamard_like(n, seed)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """x [..., p] -> x @ H_p / sqrt(p) (fast Walsh-Hadamard, p a power of two)."""
    shape, p = x.shape, x.shape[-1]
    y, h = x, 1
    while h < p:
        y = y.reshape(*shape[:-1], p // (2 * h), 2, h)
        y = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2)
        h *= 2
    return y.reshape(shape) / math.sqrt(p)


class OnlineRotation(nn.Module):
    """y = linear(x @ T), T = H_p kron M (applied in O(n log n) + O(n m)); wraps a linear."""

    def __init__(self, linear: nn.Module, n: int, seed: int):
        super().__init__()
        self.p, self.m = split_pow2(n)
        self.linear = linear
        self.register_buffer("small", random_orthogonal(self.m, seed))  # [m, m] float64

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., n] -> x @ T [..., n] (same dtype)."""
        shape = x.shape
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = x.to(dt).reshape(*shape[:-1], self.p, self.m)
        if self.m > 1:
            y = y @ self.small.to(dt)
        y = fwht(y.transpose(-1, -2)).transpose(-1, -2)
        return y.reshape(shape).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.rotate(x))

    def extra_repr(self) -> str:
        return f"online rotation n={self.p * self.m} (H_{self.p} x orth_{self.m})"


# ------------------------------------------------------------- weight surgery ----

def _set_weight(mod: nn.Module, w: torch.Tensor) -> None:
    mod.weight.data = w.to(mod.weight.dtype)


def rotate_input(mod: nn.Module, q: torch.Tensor) -> None:
    """Linear reading x Q: W [N, K] <- W Q."""
    w = mod.weight.data
    _set_weight(mod, w.double() @ q.to(w.device))


def rotate_output(mod: nn.Module, q: torch.Tensor) -> None:
    """Linear whose output is rotated (y Q): W <- Q^T W, b <- Q^T b."""
    w = mod.weight.data
    qd = q.to(w.device)
    _set_weight(mod, qd.t() @ w.double())
    if getattr(mod, "bias", None) is not None:
        mod.bias.data = (mod.bias.data.double() @ qd).to(mod.bias.dtype)


def fuse_norm(norm: nn.Module, linears: list[nn.Module]) -> None:
    """RMSNorm weight g into the linears it feeds: W <- W diag(g), g <- 1."""
    g = norm.weight.data.double()
    for lin in linears:
        _set_weight(lin, lin.weight.data.double() * g.to(lin.weight.device)[None, :])
    norm.weight.data.fill_(1.0)


def _check_norm(name: str, norm: nn.Module) -> None:
    if isinstance(norm, (nn.LayerNorm, nn.GroupNorm)) or getattr(norm, "bias", None) is not None:
        raise ConfigError(f"method 'rotation': norm '{name}' ({type(norm).__name__}) is not an RMSNorm; "
                          f"rotation supports RMSNorm models (Llama / Mistral / Qwen2 style)")


# ------------------------------------------------------------- the model pass ----

def untie_lm_head(model: nn.Module, head: nn.Module) -> None:
    """Give lm_head its own weight if it shares the embedding's."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(head.weight.data.clone(), requires_grad=False)
        if hasattr(model, "config"):
            model.config.tie_word_embeddings = False


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int = 0, online_down: bool = True,
                 rotate_ov: bool = True) -> dict[str, Any]:
    """Fuse norms and rotate the residual stream (in place); returns a summary."""
    from bitsweep.methods.core.structure import StructureError, model_layout

    try:
        lay = model_layout(model)
    except StructureError as exc:
        raise ConfigError(f"method 'rotation': {exc}") from None
    blocks = model.get_submodule(lay.prefix)
    head = model.get_submodule(lay.lm_head) if lay.lm_head else None
    readers = [g for g in lay.block.groups if g.norm]
    writers = [g for g in lay.block.groups if g.kind in ("o", "down")]
    if not readers or not writers:
        raise ConfigError("method 'rotation': could not find norm-fed and residual-writing linears")
    for g in readers:
        _check_norm(g.norm, blocks[0].get_submodule(g.norm))
        if not g.norm_foldable:
            raise ConfigError(f"method 'rotation': norm '{g.norm}' cannot absorb a scale")
    if head is not None:
        untie_lm_head(model, head)
    hidden = model.get_submodule(lay.embeddings[0]).weight.shape[1]
    q = randomized_hadamard(hidden, seed)
    for name in lay.embeddings:
        emb = model.get_submodule(name)
        emb.weight.data = (emb.weight.data.double() @ q.to(emb.weight.device)).to(emb.weight.dtype)
    for block in blocks:
        for g in readers:
            lins = [block.get_submodule(n) for n in g.linears]
            fuse_norm(block.get_submodule(g.norm), lins)
            for lin in lins:
                rotate_input(lin, q)
        for g in writers:
            for n in g.linears:
                rotate_output(block.get_submodule(n), q)
        if online_down:
            _wrap_down(block, lay.block.group("down"), seed)
        if rotate_ov:
            _rotate_ov(block, seed)
    if lay.final_norm is not None and head is not None:
        fuse_norm(model.get_submodule(lay.final_norm), [head])
    if head is not None:
        rotate_input(head, q)
    return {"hidden": hidden, "blocks": len(blocks), "online_down": online_down, "rotate_ov": rotate_ov}


def _wrap_down(block: nn.Module, groups, seed: int) -> None:
    from bitsweep.methods.core.qmodules import set_module

    for g in groups:
        for n in g.linears:
            lin = block.get_submodule(n)
            k = lin.weight.shape[1]
            wrapped = OnlineRotation(lin, k, seed + 2)
            t = torch.kron(sylvester(wrapped.p), wrapped.small.double())
            rotate_input(lin, t)  # W <- W T, the wrapper applies x T
            set_module(block, n, wrapped)


def _rotate_ov(block: nn.Module, seed: int) -> None:
    """Per-head Hadamard between v_proj output and o_proj input (fused into both)."""
    attn = next((m for m in block.modules() if isinstance(getattr(m, "v_proj", None), nn.Module)
                 and isinstance(getattr(m, "o_proj", None), nn.Module)), None)
    head_dim = getattr(attn, "head_dim", None)
    if attn is None or head_dim is None:
        raise ConfigError("method 'rotation': rotate_ov=true needs attention modules with v_proj, "
                          "o_proj and head_dim (set rotate_ov: false)")
    h = hadamard_like(head_dim, seed + 3)
    v, o = attn.v_proj, attn.o_proj
    n_kv = v.weight.shape[0] // head_dim
    n_q = o.weight.shape[1] // head_dim
    hv = torch.block_diag(*([h] * n_kv))  # output rotation of every kv head
    ho = torch.block_diag(*([h] * n_q))  # input rotation of every attention head
    rotate_output(v, hv)
    rotate_input(o, ho)


# ------------------------------------------------------------- method ----

@dataclass(frozen=True)
class RotationConfig(MethodConfig):
    name: str = "rotation"
    version: int = 1
    base: str = "rtn"  # method doing the rounding after rotation (rtn | gptq | any registered)
    base_args: dict = field(default_factory=dict)  # that method's own fields
    seed: int = 0
    online_down: bool = True  # online Hadamard on the down-projection input
    rotate_ov: bool = True  # per-head Hadamard between v_proj and o_proj


@register_method("rotation")
class Rotation(Method):
    Config = RotationConfig

    def __init__(self, config: RotationConfig, spec):
        super().__init__(config, spec)
        if config.base == "rotation":
            raise ConfigError("method 'rotation': base=rotation would rotate twice; use rtn or gptq")
        self.base = build_method({"name": config.base, **dict(config.base_args)}, spec)
        self.needs_calibration = self.base.needs_calibration
        self.supports_activations = self.base.supports_activations

    def validate(self) -> None:
        super().validate()
        if self.spec.weights is None and self.spec.activations is None:
            raise ConfigError("method 'rotation': quant.weights and quant.activations are both null "
                              "(nothing to quantize after rotating)")

    def prepare(self, model) -> None:
        c = self.config
        info = rotate_model(model, c.seed, c.online_down, c.rotate_ov)
        log.info("rotation: %s (base %s)", info, c.base)
        self.base.prepare(model)

    def calibrate(self, model, batches) -> None:
        self.base.calibrate(model, batches)

    def convert(self, model):
        return self.base.convert(model) or model
