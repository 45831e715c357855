"""Layer-wise calibration engine: run a calibration method one decoder block at a time.

Contract
--------
``run_layerwise(model, batches, process, device=..., propagate=...)``

1. Capture block 0's inputs: the non-block modules (embeddings, rotary embedding,
   ...) go to ``device``; each calibration batch runs through the model until a
   pre-hook on block 0 records the hidden states and the keyword arguments HF
   passes to decoder layers (attention mask, position ids, ``position_embeddings``,
   cache flags; ``use_cache=False``) and stops the forward pass. Keyword tensors
   equal to batch 0's are shared, not copied.
2. For each block: move it to ``device``; call ``process(ctx)`` with a
   :class:`BlockContext` (the block, its discovered :class:`~bitsweep.methods.core.structure.BlockLayout`,
   ``ctx.forward(hooks)`` to run the block over every calibration batch with
   per-linear hooks, ``ctx.replace(name, module)`` to swap a linear); then produce
   the next block's inputs -- from the *processed* block (``propagate="quantized"``,
   as GPTQ does) or from the block as it was before processing (``"fp"``);
   move the block back to where it was and free the accelerator.

Peak accelerator memory is one block plus the calibration activations
(``nsamples x seqlen x hidden`` in the model dtype: with ``propagate="quantized"`` the
last pass overwrites each batch's input with its output; ``"fp"`` keeps both) plus
the method's statistics (GPTQ: one K x K Hessian per linear of the current group).
``offload_activations=True`` keeps the activations on the CPU and streams one batch
at a time. ``device``: ``"auto"`` = CUDA when available,
else where the model is; or an explicit torch device string. Works on CPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from bitsweep.methods.core.structure import BlockLayout, find_blocks, layout_from_inputs, run_block

log = logging.getLogger(__name__)

PROPAGATE = ("quantized", "fp")


def check_propagate(method: str, value: str) -> None:
    """ConfigError unless ``value`` is a valid ``propagate`` mode."""
    if value not in PROPAGATE:
        from bitsweep.methods.core.registry import ConfigError
        raise ConfigError(f"method '{method}': propagate={value!r}; valid: {', '.join(PROPAGATE)}")
Hook = Callable[[torch.Tensor, torch.Tensor], None]  # (input x [.., K], output y [.., N])


class _Stop(Exception):
    pass


def resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else next(model.parameters()).device
    return torch.device(device)


def _to(obj: Any, device: torch.device) -> Any:
    """Move tensors (also inside tuples / lists / dicts) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b.to(a.device)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or (not isinstance(a, torch.Tensor) and a == b)


@dataclass
class Captured:
    """Block inputs for every calibration batch: hidden states + shared kwargs."""

    hidden: list[torch.Tensor]  # each [1, seqlen, hidden]
    args: list[tuple]  # extra positional args per batch (usually empty)
    kwargs: list[dict]


def capture_inputs(model: nn.Module, batches: list[torch.Tensor], device: torch.device,
                   act_device: torch.device) -> Captured:
    """Run every batch up to block 0 (non-block modules temporarily on ``device``)."""
    prefix, blocks = find_blocks(model)
    home = next(model.parameters()).device
    rec = Captured([], [], [])

    def pre(mod, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        rec.hidden.append(hidden.detach().to(act_device))
        kw = {k: v for k, v in kwargs.items()}
        if rec.kwargs:  # share tensors equal to batch 0's (masks, rotary tables)
            kw = {k: (rec.kwargs[0][k] if k in rec.kwargs[0] and _same(v, rec.kwargs[0][k]) else v)
                  for k, v in kw.items()}
        rec.args.append(tuple(args[1:]))
        rec.kwargs.append(kw)
        raise _Stop

    block_ids = {id(p) for p in blocks.parameters()} | {id(b) for b in blocks.buffers()}
    moved = _move_outside(model, block_ids, device)
    h = blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    model(ids.to(device), use_cache=False)
                except _Stop:
                    pass
    finally:
        h.remove()
        _move_back(moved, home)
    if len(rec.hidden) != len(batches):
        raise RuntimeError(f"captured {len(rec.hidden)} of {len(batches)} batches at block 0 of '{prefix}'")
    return rec


def _move_outside(model: nn.Module, block_ids: set[int], device: torch.device) -> list[torch.Tensor]:
    """Move every parameter / buffer that is not in the blocks to ``device``."""
    moved = []
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in block_ids and t.device != device:
            t.data = t.data.to(device)
            moved.append(t)
    return moved


def _move_back(moved: list[torch.Tensor], home: torch.device) -> None:
    for t in moved:
        t.data = t.data.to(home)


@dataclass
class BlockContext:
    """What a method sees of one block (on the engine's device)."""

    index: int
    prefix: str  # full name of the block, e.g. "model.layers.3"
    block: nn.Module
    layout: BlockLayout
    device: torch.device
    captured: Captured
    num_blocks: int = 0
    home: torch.device | None = None  # where the block lives between passes
    state: dict = field(default_factory=dict)  # per-block scratch space for the method

    def full_name(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def module(self, name: str) -> nn.Module:
        return self.block.get_submodule(name)

    def replace(self, name: str, new: nn.Module) -> None:
        """Swap submodule ``name``; a quantized module's codes (``qweight``, not a buffer, unused
        in fake mode) go straight to the block's home device."""
        parent, _, child = name.rpartition(".")
        setattr(self.block.get_submodule(parent) if parent else self.block, child, new.to(self.device))
        q = getattr(new, "qweight", None)
        if q is not None and self.home is not None:
            for f in ("codes", "scale", "zero"):
                t = getattr(q, f, None)
                if isinstance(t, torch.Tensor):
                    setattr(q, f, t.to(self.home))

    def forward(self, hooks: dict[str, Hook] | None = None, keep_outputs: bool = False,
                max_batches: int | None = None, in_place: bool = False) -> list[torch.Tensor] | None:
        """Run the block on the calibration batches; ``hooks[name](x, y)`` sees each linear call.

        ``keep_outputs``: return the block outputs; ``in_place``: also overwrite each
        batch's stored input with its output (the engine's last pass: one activation copy).
        """
        handles = []
        for name, fn in (hooks or {}).items():
            handles.append(self.module(name).register_forward_hook(
                lambda m, i, o, fn=fn: _call_hook(fn, i[0], o)))
        outs = [] if keep_outputs else None
        cap = self.captured
        n = len(cap.hidden) if max_batches is None else min(max_batches, len(cap.hidden))
        try:
            with torch.no_grad():
                for b in range(n):
                    x = cap.hidden[b].to(self.device)
                    y = run_block(self.block, (x,) + _to(cap.args[b], self.device),
                                  _to(cap.kwargs[b], self.device))
                    if outs is not None:
                        outs.append(y.detach().to(cap.hidden[b].device))
                        if in_place:
                            cap.hidden[b] = outs[-1]
        finally:
            for h in handles:
                h.remove()
        return outs

    def inputs(self, names: list[str], max_batches: int | None = None) -> dict[str, list[torch.Tensor]]:
        """Collect the inputs [tokens, K] of the named linears (one tensor per batch)."""
        got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        hooks = {n: (lambda x, y, n=n: got[n].append(x.reshape(-1, x.shape[-1]).detach()))
                 for n in names}
        self.forward(hooks, max_batches=max_batches)
        return got


def _call_hook(fn: Hook, x: torch.Tensor, y: torch.Tensor) -> None:
    fn(x.detach(), y.detach() if isinstance(y, torch.Tensor) else y)


def run_layerwise(model: nn.Module, batches: list[torch.Tensor], process: Callable[[BlockContext], None],
                  device: str | torch.device | None = "auto", propagate: str = "quantized",
                  offload_activations: bool = False, desc: str = "blocks") -> "LayerwiseResult":
    """Apply ``process`` to every decoder block in order (see module docstring).

    Returns the discovered layout and the last block's outputs (one tensor per batch).
    """
    if propagate not in PROPAGATE:
        raise ValueError(f"propagate={propagate!r}; valid: {', '.join(PROPAGATE)}")
    if not batches:
        raise ValueError("run_layerwise needs at least one calibration batch")
    from tqdm.auto import tqdm

    dev = resolve_device(model, device)
    act_dev = torch.device("cpu") if offload_activations else dev
    prefix, blocks = find_blocks(model)
    was_training = model.training
    model.eval()
    cap = capture_inputs(model, batches, dev, act_dev)
    layout = _discover(blocks[0], cap, dev)
    for i in tqdm(range(len(blocks)), desc=desc, unit="block", leave=False):
        block = blocks[i]
        home = next(block.parameters()).device
        block.to(dev)
        ctx = BlockContext(i, f"{prefix}.{i}", block, layout, dev, cap, len(blocks), home)
        fp_out = ctx.forward(keep_outputs=True) if propagate == "fp" else None
        process(ctx)
        out = fp_out if fp_out is not None else ctx.forward(keep_outputs=True, in_place=True)
        cap.hidden = out
        block.to(home)
        del ctx
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    model.train(was_training)
    return LayerwiseResult(layout, cap.hidden)


@dataclass
class LayerwiseResult:
    layout: BlockLayout
    hidden: list[torch.Tensor]  # outputs of the last block, [1, seqlen, hidden] per batch


def _discover(block0: nn.Module, cap: Captured, dev: torch.device) -> BlockLayout:
    """Block layout (bitsweep.methods.core.structure) from the first captured batch."""
    home = next(block0.parameters()).device
    block0.to(dev)
    try:
        x = cap.hidden[0].to(dev)
        return layout_from_inputs(block0, (x,) + _to(cap.args[0], dev), _to(cap.kwargs[0], dev))
    finally:
        block0.to(home)


# ------------------------------------------------------ scale surgery ----

class ScaledLinear(nn.Linear):
    """y = linear(x / s, W diag(s)): an equivalence-preserving per-input-channel scale
    that could not be folded into a preceding op, kept on the input (AWQ, SmoothQuant)."""

    def __init__(self, linear: nn.Linear, s: torch.Tensor):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight.data = (linear.weight.data.float() * s.float()).to(linear.weight.dtype)
        if linear.bias is not None:
            self.bias.data = linear.bias.data.clone()
        self.register_buffer("input_scale", s.to(linear.weight.dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x / self.input_scale, self.weight, self.bias)


class InputScale(nn.Module):
    """Activation pre-processing of a quantized linear: x / s, then the optional quantizer."""

    def __init__(self, s: torch.Tensor, inner: nn.Module | None = None):
        super().__init__()
        self.register_buffer("input_scale", s.clone())
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / self.input_scale
        return x if self.inner is None else self.inner(x)


def scale_inputs(ctx: "BlockContext", group, s: torch.Tensor, names: list[str] | None = None) -> str:
    """Apply input scale s [K] to a LinearGroup: W <- W diag(s), the producer absorbs 1/s.

    The producer is the group's norm (weight, bias / s) when foldable, else its ``prev``
    linear (rows / s), else each linear becomes a :class:`ScaledLinear`. Returns which.
    """
    names = list(group.linears) if names is None else names
    s = s.float()
    if group.norm is not None and group.norm_foldable:
        norm = ctx.module(group.norm)
        _div_(norm.weight, s)
        if getattr(norm, "bias", None) is not None:
            _div_(norm.bias, s)
        how = "norm"
    elif group.prev is not None:
        prev = ctx.module(group.prev)
        _div_(prev.weight, s.view(-1, 1))
        if prev.bias is not None:
            _div_(prev.bias, s)
        how = "prev"
    else:
        for n in names:
            ctx.replace(n, ScaledLinear(ctx.module(n), s))
        return "input"
    for n in names:
        w = ctx.module(n).weight
        w.data = (w.data.float() * s).to(w.dtype)
    return how


def _div_(p: torch.Tensor, s: torch.Tensor) -> None:
    p.data = (p.data.float() / s).to(p.dtype)
