"""Model-structure discovery for decoder-only transformers (Llama, Mistral, Qwen2, OPT,
GPT-NeoX, Falcon and look-alikes), by module types, shapes and forward hooks --
nothing is hard-coded per family.

Stable API
----------
``find_blocks(model) -> (prefix, ModuleList)``
    The repeated decoder blocks: the longest ``nn.ModuleList`` whose children all
    have the same class and contain linears (``prefix`` e.g. ``"model.layers"``).
``block_layout(model, example=None) -> BlockLayout``
    How the linears of a block are wired, found by running block 0 once on a short
    dummy input (or ``example`` input_ids) with hooks; the same layout holds for
    every block (names are relative to the block):

    * ``groups``: ``LinearGroup(kind, linears, norm, prev, norm_foldable)`` in call
      order. Linears that read the *same* input tensor form one group. ``kind`` is
      ``"qkv"`` (attention inputs), ``"o"`` (attention output), ``"up"`` (MLP
      inputs: gate+up, fc1, dense_h_to_4h), ``"down"`` (MLP output) or
      ``"qkv_up"`` (parallel-residual blocks, e.g. Falcon: one norm feeds both).
    * ``norm``: the module whose output *is* the group's input (LayerNorm /
      RMSNorm), else None. ``norm_foldable``: scaling the norm's weight (and bias)
      by a positive per-channel ``s`` was checked to scale the group's input by
      ``s`` exactly (false e.g. for Gemma's ``1 + weight`` norms).
    * ``prev``: for groups without a norm, the linear of the block whose output
      rows can absorb a per-channel scale of the group's input (checked by the
      same probe: Llama ``down <- up``, OPT ``fc2 <- fc1`` through ReLU,
      multi-head ``o <- v``); None when no such linear exists (GQA ``o``,
      GELU MLPs): methods then keep the scale as an input scale.
    * ``attn_linears`` / ``mlp_linears``: linear names by sub-module.
``embeddings(model)``: names of ``nn.Embedding`` modules outside the blocks.
``final_norm(model)``: name of the norm applied after the last block (or None).
``rotary_embedding(model)``: name of the rotary-embedding module (or None).
``model_layout(model)``: all of the above in one ``ModelLayout``.
``is_attention(root, name)``: True / False / None (unknown) for the linear ``name``
    (relative to ``root``) by its parents' class and attribute names (below).
``dummy_input(model, tokens=8)``: seeded random input_ids for probing forwards.

Attention vs MLP is decided by the parent module (a sub-module whose class or
attribute name mentions attention); when no parent says so, the first
norm-fed group is taken as attention.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

GROUP_KINDS = ("qkv", "o", "up", "down", "qkv_up")


@dataclass(frozen=True)
class LinearGroup:
    kind: str  # one of GROUP_KINDS
    linears: tuple[str, ...]  # names relative to the block, in call order
    norm: str | None = None  # module whose output is the group's input
    norm_foldable: bool = False
    prev: str | None = None  # linear whose output rows can absorb an input scale


@dataclass(frozen=True)
class BlockLayout:
    groups: tuple[LinearGroup, ...]
    attn_linears: tuple[str, ...] = ()
    mlp_linears: tuple[str, ...] = ()

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(n for g in self.groups for n in g.linears)

    def group(self, kind: str) -> list[LinearGroup]:
        return [g for g in self.groups if g.kind == kind]

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.norm for g in self.groups if g.norm))


@dataclass(frozen=True)
class ModelLayout:
    prefix: str
    num_blocks: int
    block: BlockLayout
    embeddings: tuple[str, ...] = ()
    final_norm: str | None = None
    rotary: str | None = None
    lm_head: str | None = None


class StructureError(ValueError):
    """The model's structure could not be discovered (names what was missing)."""


class _Stop(Exception):
    """Raised by a hook to stop a forward pass early."""


# ------------------------------------------------------------------ blocks ----

def is_linear(m: nn.Module) -> bool:
    """nn.Linear or a quantized replacement (``in_features`` + 2-D ``weight``)."""
    w = getattr(m, "weight", None)
    return isinstance(m, nn.Linear) or (hasattr(m, "in_features") and isinstance(w, torch.Tensor)
                                        and w.dim() == 2)


def _has_linear(m: nn.Module) -> bool:
    return any(is_linear(c) for c in m.modules())


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(prefix, ModuleList) of the repeated decoder blocks."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(c) for c in mod}) != 1 or not _has_linear(mod[0]):
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise StructureError(f"{type(model).__name__}: no ModuleList of repeated blocks with linears")
    return best


def is_norm(m: nn.Module) -> bool:
    """A normalisation layer: LayerNorm/RMSNorm-like leaf with a 1-D weight."""
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        return True
    w = getattr(m, "weight", None)
    return ("norm" in type(m).__name__.lower() and isinstance(w, torch.Tensor)
            and w.dim() == 1 and not list(m.children()))


def _outside(model: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not (n == prefix or n.startswith(prefix + "."))]


def embeddings(model: nn.Module) -> list[str]:
    prefix, _ = find_blocks(model)
    return [n for n, m in _outside(model, prefix) if isinstance(m, nn.Embedding)]


def final_norm(model: nn.Module) -> str | None:
    """The norm outside the blocks that runs last (the one before the LM head)."""
    prefix, _ = find_blocks(model)
    norms = [n for n, m in _outside(model, prefix) if is_norm(m)]
    if len(norms) <= 1:
        return norms[0] if norms else None
    order = _call_order(model, [n for n in norms])
    return max(norms, key=lambda n: order.get(n, -1))


def rotary_embedding(model: nn.Module) -> str | None:
    prefix, _ = find_blocks(model)
    for n, m in _outside(model, prefix):
        if "rotary" in type(m).__name__.lower() or hasattr(m, "inv_freq"):
            return n
    return None


def lm_head(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    return next((n for n, m in model.named_modules() if m is head), None)


def dummy_input(model: nn.Module, tokens: int = 8) -> torch.Tensor:
    """Seeded random input_ids [1, tokens] on the model's device (ids < min(vocab, 1000))."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", 32) or 32
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, min(int(vocab), 1000), (1, tokens), generator=g).to(dev)


def _call_order(model: nn.Module, names: list[str]) -> dict[str, int]:
    order: dict[str, int] = {}

    def hook(name):
        order.setdefault(name, len(order))

    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: hook(n)) for n in names]
    try:
        with torch.no_grad():
            model(dummy_input(model), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return order


# ------------------------------------------------------------ block layout ----

def capture_block0(model: nn.Module, input_ids: torch.Tensor):
    """Run the model until block 0 and return block 0's (args, kwargs)."""
    _, blocks = find_blocks(model)
    seen = {}

    def pre(mod, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        raise _Stop

    h = blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    if "args" not in seen:
        raise StructureError("block 0 was never called during the forward pass")
    return seen["args"], seen["kwargs"]


def run_block(block: nn.Module, args, kwargs) -> torch.Tensor:
    """Call a decoder block; return the hidden states whether it returns a tensor or a tuple."""
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _trace(block: nn.Module, args, kwargs):
    """Leaf-call trace of one block forward: (linears [(name, input)], outputs {name: tensor})."""
    calls, outs, hooks = [], {}, []

    def hook(mod, inp, out, name):
        if is_linear(mod):
            calls.append((name, inp[0]))
        outs.setdefault(name, out)

    for name, m in block.named_modules():
        if name and not list(m.children()):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: hook(mod, i, o, n)))
    try:
        with torch.no_grad():
            run_block(block, args, kwargs)
    finally:
        for h in hooks:
            h.remove()
    return calls, outs


def _input_of(block: nn.Module, lin: str, args, kwargs) -> torch.Tensor:
    got = {}

    def hook(mod, inp, out):  # returns None: a forward hook's return value would replace the output
        got.setdefault("x", inp[0].detach().clone())

    h = block.get_submodule(lin).register_forward_hook(hook)
    try:
        with torch.no_grad():
            run_block(block, args, kwargs)
    finally:
        h.remove()
    return got["x"]


def _scale_probe(block: nn.Module, producer: str, consumer: str, args, kwargs) -> bool:
    """True if scaling ``producer``'s output channels by s scales ``consumer``'s input by s."""
    mod = block.get_submodule(producer)
    w = mod.weight
    is_lin = isinstance(mod, nn.Linear)
    dim = w.shape[0]
    if block.get_submodule(consumer).in_features != dim:
        return False
    g = torch.Generator().manual_seed(1)
    s = (torch.rand(dim, generator=g) * 1.5 + 0.5).to(w.device, w.dtype)
    ref = _input_of(block, consumer, args, kwargs)
    saved_w = w.data.clone()
    bias = getattr(mod, "bias", None)
    saved_b = None if bias is None else bias.data.clone()
    try:
        w.data.mul_(s.view(-1, 1) if is_lin else s)
        if bias is not None:
            bias.data.mul_(s)
        new = _input_of(block, consumer, args, kwargs)
    finally:
        w.data.copy_(saved_w)
        if bias is not None:
            bias.data.copy_(saved_b)
    tol = 1e-3 if ref.dtype == torch.float32 else 2e-2
    return bool(torch.allclose(new.float(), (ref * s).float(), rtol=tol, atol=tol * ref.abs().max().item()))


def is_attention(block: nn.Module, lin: str) -> bool | None:
    """Is ``lin`` (a name relative to ``block``) inside attention (True), an MLP (False), or unknown (None)?"""
    parts = lin.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        pname = type(block.get_submodule(parent)).__name__.lower() + " " + parts[i - 1].lower()
        if "attn" in pname or "attention" in pname:
            return True
        if "mlp" in pname or "ffn" in pname or "feed" in pname:
            return False
    return None


def layout_from_inputs(block: nn.Module, args, kwargs) -> BlockLayout:
    """BlockLayout of ``block`` given one set of its forward inputs (see module docstring)."""
    calls, outs = _trace(block, args, kwargs)
    if not calls:
        raise StructureError(f"{type(block).__name__}: no nn.Linear called in the block")
    by_input: dict[int, list[str]] = {}
    first: dict[int, torch.Tensor] = {}
    for name, x in calls:
        key = id(x)
        by_input.setdefault(key, []).append(name)
        first.setdefault(key, x)
    producer_of = {id(o): n for n, o in outs.items() if isinstance(o, torch.Tensor)}
    raw = []  # (linears, norm)
    for key, names in by_input.items():
        prod = producer_of.get(key)
        norm = prod if prod is not None and is_norm(block.get_submodule(prod)) else None
        raw.append((tuple(dict.fromkeys(names)), norm))
    attn = {n: is_attention(block, n) for n, _ in calls}
    if all(v is None for v in attn.values()):  # fall back on order: first norm-fed group is attention
        first_norm = next((i for i, (_, nm) in enumerate(raw) if nm), 0)
        attn = {n: i <= first_norm + 1 for i, (names, _) in enumerate(raw) for n in names}
    groups = []
    called = [n for n, _ in calls]
    for names, norm in raw:
        is_attn = {bool(attn[n]) for n in names}
        if norm is not None:
            kind = "qkv_up" if len(is_attn) == 2 else ("qkv" if True in is_attn else "up")
            foldable = _scale_probe(block, norm, names[0], args, kwargs)
            groups.append(LinearGroup(kind, names, norm, foldable, None))
            continue
        kind = "o" if True in is_attn else "down"
        before = called[: called.index(names[0])]
        prev = next((p for p in reversed(before) if p not in names
                     and _scale_probe(block, p, names[0], args, kwargs)), None)
        groups.append(LinearGroup(kind, names, None, False, prev))
    return BlockLayout(tuple(groups),
                       tuple(n for n in dict.fromkeys(called) if attn[n]),
                       tuple(n for n in dict.fromkeys(called) if not attn[n]))


def block_layout(model: nn.Module, example: torch.Tensor | None = None) -> BlockLayout:
    """Layout of the model's decoder blocks, discovered on block 0."""
    ids = dummy_input(model) if example is None else example
    args, kwargs = capture_block0(model, ids)
    _, blocks = find_blocks(model)
    return layout_from_inputs(blocks[0], args, kwargs)


def model_layout(model: nn.Module) -> ModelLayout:
    prefix, blocks = find_blocks(model)
    return ModelLayout(prefix, len(blocks), block_layout(model), tuple(embeddings(model)),
                       final_norm(model), rotary_embedding(model), lm_head(model))
