"""Sibling-linear fusion: q/k/v (and gate/up) that read one input become one GEMM.

Contract
--------
``fuse_siblings(model, kinds=("qkv", "gate_up"), example=None) -> {name: status}``
    In place, for every group of sibling linears that consume the *same input
    tensor* (found by tracing one forward, below), swaps the members for one
    fused computation and reports each member of each group:
    ``"fused: qkv (3 -> model.layers.0.self_attn.qkv_proj)"`` or
    ``"not fused: <reason>"`` (mismatched bits, bias on some members only, a
    fake ``QuantLinear``, ...). A group is fused whole or not at all.
``unfuse_siblings(model) -> list[str]``
    The inverse: every fused group back to standalone modules (row slices of
    the fused weights, copied), returns the holder names it removed.

What fuses: members that are all plain ``nn.Linear`` (one ``nn.Linear`` over
the row-concatenated weight and bias: the 16-bit baseline) or all
``RealWeightOnlyLinear`` with equal bits, group size, sym, in_features and
dtype (qweight / scale / szero / bias concatenated along N: the packed layout
is per output row, so the rows of the fused module are the members' rows).
Members must also agree on in_features, dtype, device and bias presence.
Fusion never changes what a row computes, but a GEMM of another shape may
pick another kernel config / reduction order, so outputs can differ in the
last bits on CUDA (the run record's config hash includes ``fuse``; see
bitsweep.harness.run).

Discovery (a documented simple rule, not name matching): hooks on every
linear-like leaf (``in_features`` / ``out_features``), one forward on a
1-token dummy input (``bitsweep.methods.core.structure.dummy_input``; ``example`` overrides);
modules called on the very same tensor object are siblings. A group is split by
``bitsweep.methods.core.structure.is_attention`` into its attention part (kind ``qkv``) and
its MLP part (kind ``gate_up``); a part with fewer than two members, or whose
kind is not asked for, stays as is. Call order in the trace is the order the
members run in.

Design (why a stash)
--------------------
The model's own forward code is left unmodified: it still calls
``self.q_proj(h)``, ``self.k_proj(h)``, ``self.v_proj(h)`` in turn. The group's
parent (the members' common ancestor, e.g. ``self_attn``) gets one
``FusedLinear`` holder (``qkv_proj`` / ``gate_up_proj``) owning the fused
module; each member becomes a ``FusedMember`` that returns its column slice
of the holder's output (a view, no copy):

* the first member in call order computes ``y = fused(x)`` and stashes
  ``(x, y)`` on the holder;
* a later member checks ``x is holder.stash_x`` (the same tensor object:
  Python identity, never a look at tensor values) and slices the stashed
  ``y``; on a miss (a different input, or an unexpected call order) it
  recomputes and re-stashes, so results are always correct, at worst slower;
* the last member clears the stash, so no activation outlives the forward.

So the fused GEMM runs once per forward per group. Nothing reads tensor
values on the host: CUDA-graph capture records one fused kernel per group and
replays it. Under ``torch.compile`` dynamo traces the identity test and the
attribute writes as ordinary Python side effects: a Llama forward is still one
graph with no graph breaks, and the fused module is called once per group in
it (tests/test_fuse.py checks both). Caveat of the identity test: a tensor
mutated in place between two sibling calls would be seen as unchanged; no
decoder does that between q, k and v.

The fused model's state_dict has the holder's keys (``...self_attn.qkv_proj.linear.*``)
instead of the members' (members own no tensors); ``unfuse_siblings`` restores the
original layout, e.g. before saving a checkpoint.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from bitsweep.kernels.packing import PackedWeight

from bitsweep.methods.core.real import RealWeightOnlyLinear
from bitsweep.methods.core.structure import dummy_input, is_attention

log = logging.getLogger(__name__)

FUSE_KINDS = ("qkv", "gate_up")
HOLDER_NAMES = {"qkv": "qkv_proj", "gate_up": "gate_up_proj"}


class FusedLinear(nn.Module):
    """Holder of one fused group: ``linear`` over the concatenated rows + the per-forward stash."""

    def __init__(self, linear: nn.Module, kind: str, members: tuple[str, ...], sizes: tuple[int, ...]):
        super().__init__()
        self.linear = linear
        self.kind = kind
        self.members = members  # member paths relative to the holder's parent, in call order
        self.sizes = sizes  # out_features of each member
        self.stash_x: torch.Tensor | None = None  # input of the last fused call (cleared by the last member)
        self.stash_y: torch.Tensor | None = None  # its output [..., sum(sizes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, members={','.join(self.members)}, sizes={self.sizes}"


class FusedMember(nn.Module):
    """Stands in for one sibling: its column slice [start, stop) of the group's fused output."""

    def __init__(self, group: FusedLinear, index: int, start: int, stop: int, first: bool, last: bool):
        super().__init__()
        object.__setattr__(self, "group", group)  # not a submodule: the holder is registered once, on the parent
        self.index, self.start, self.stop = index, start, stop
        self.first, self.last = first, last
        self.in_features, self.out_features = int(group.linear.in_features), stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group
        if self.first or g.stash_x is not x:
            g.stash_x, g.stash_y = x, g(x)
        y = g.stash_y[..., self.start:self.stop]
        if self.last:
            g.stash_x = g.stash_y = None
        return y

    def extra_repr(self) -> str:
        return f"{self.group.kind}[{self.start}:{self.stop}], first={self.first}, last={self.last}"


@dataclass(frozen=True)
class SiblingGroup:
    kind: str  # "qkv" | "gate_up"
    members: tuple[str, ...]  # full module names, in call order

    @property
    def parent(self) -> str:
        """Common ancestor of the members (where the holder goes)."""
        parts = [m.split(".")[:-1] for m in self.members]
        common = []
        for level in zip(*parts):
            if len(set(level)) != 1:
                break
            common.append(level[0])
        return ".".join(common)


# ----------------------------------------------------------------- discovery ----

def _linear_like(m: nn.Module) -> bool:
    if isinstance(m, (FusedMember, FusedLinear)):
        return False
    return isinstance(m, nn.Linear) or (isinstance(getattr(m, "in_features", None), int)
                                        and isinstance(getattr(m, "out_features", None), int))


def trace_inputs(model: nn.Module, example: torch.Tensor | None = None) -> list[tuple[str, torch.Tensor]]:
    """(module name, input tensor) of every linear-like call in one forward, in call order."""
    calls: list[tuple[str, torch.Tensor]] = []

    def record(name: str, inputs: tuple) -> None:
        if inputs:  # a module called with keyword arguments only has no positional input to compare
            calls.append((name, inputs[0]))

    hooks = [m.register_forward_hook(lambda mod, inp, out, n=name: record(n, inp))
             for name, m in model.named_modules() if name and _linear_like(m)]
    ids = dummy_input(model, tokens=1) if example is None else example
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return calls


def sibling_groups(model: nn.Module, example: torch.Tensor | None = None) -> list[SiblingGroup]:
    """Groups of >= 2 linears reading one tensor, split into attention (qkv) and MLP (gate_up) parts.

    A module called on more than one input tensor is left out (it is not a pure sibling)."""
    calls = trace_inputs(model, example)  # holds every input: ids stay unique while we group
    by_input: dict[int, list[str]] = {}
    inputs_of: dict[str, set[int]] = {}
    for name, x in calls:
        by_input.setdefault(id(x), [])
        if name not in by_input[id(x)]:
            by_input[id(x)].append(name)
        inputs_of.setdefault(name, set()).add(id(x))
    groups = []
    for names in by_input.values():
        names = [n for n in names if len(inputs_of[n]) == 1]
        for kind, want in (("qkv", True), ("gate_up", False)):
            part = tuple(n for n in names if is_attention(model, n) is want)
            if len(part) >= 2:
                groups.append(SiblingGroup(kind, part))
        unknown = [n for n in names if is_attention(model, n) is None]
        if len(unknown) >= 2:
            log.info("siblings %s read one input but sit in neither attention nor an MLP: not fused", unknown)
    return groups


# ------------------------------------------------------------------- fusing ----

def _mismatch(label: str, values: list) -> str | None:
    return None if len(set(values)) == 1 else f"mismatched {label} ({', '.join(map(str, values))})"


def fusion_reason(modules: list[nn.Module]) -> str | None:
    """Why these sibling modules cannot be fused into one (None: they can)."""
    types = [type(m) for m in modules]
    if len(set(types)) != 1:
        return f"members mix types ({', '.join(t.__name__ for t in types)})"
    if types[0] not in (nn.Linear, RealWeightOnlyLinear):
        return (f"{types[0].__name__} has no fused form (only nn.Linear and RealWeightOnlyLinear; "
                "fake quantized layers need real=true)")
    real = types[0] is RealWeightOnlyLinear
    checks = [("in_features", [m.in_features for m in modules]),
              ("bias presence", [m.bias is not None for m in modules]),
              ("dtype", [m.dtype if real else m.weight.dtype for m in modules]),
              ("device", [(m.qweight if real else m.weight).device for m in modules])]
    if real:
        checks += [("bits", [m.bits for m in modules]), ("group_size", [m.group_size for m in modules]),
                   ("sym", [m.sym for m in modules])]
    return next((r for r in (_mismatch(label, vals) for label, vals in checks) if r), None)


def _cat_bias(modules: list[nn.Module]) -> torch.Tensor | None:
    return None if modules[0].bias is None else torch.cat([m.bias.detach() for m in modules])


def concat_linears(modules: list[nn.Module]) -> nn.Module:
    """One module computing all members' outputs, concatenated along the last dim (call fusion_reason first)."""
    bias = _cat_bias(modules)
    if isinstance(modules[0], RealWeightOnlyLinear):
        p = [m.packed for m in modules]
        n = sum(x.out_features for x in p)
        packed = PackedWeight(torch.cat([x.qweight for x in p]), torch.cat([x.scale for x in p]),
                              torch.cat([x.szero for x in p]), p[0].bits, p[0].group_size,
                              p[0].in_features, n, p[0].sym)
        return RealWeightOnlyLinear(packed, bias, modules[0].dtype)
    w = torch.cat([m.weight.detach() for m in modules])
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta", dtype=w.dtype)
    grad = modules[0].weight.requires_grad
    lin.weight = nn.Parameter(w, requires_grad=grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias, requires_grad=grad)
    return lin


def _holder_reason(model: nn.Module, group: SiblingGroup) -> str | None:
    parent = model.get_submodule(group.parent)
    name = HOLDER_NAMES[group.kind]
    if hasattr(parent, name):
        return f"{group.parent or 'the model'} already has an attribute {name!r}"
    return None


def _relative(group: SiblingGroup) -> tuple[str, ...]:
    cut = len(group.parent) + 1 if group.parent else 0
    return tuple(m[cut:] for m in group.members)


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def fuse_group(model: nn.Module, group: SiblingGroup) -> str:
    """Fuse one group in place; the status string for its members."""
    modules = [model.get_submodule(n) for n in group.members]
    reason = fusion_reason(modules) or _holder_reason(model, group)
    if reason:
        return f"not fused: {reason}"
    sizes = tuple(int(m.out_features) for m in modules)
    holder = FusedLinear(concat_linears(modules), group.kind, _relative(group), sizes)
    name = HOLDER_NAMES[group.kind]
    parent = model.get_submodule(group.parent)
    parent.add_module(name, holder)
    start = 0
    for i, (path, size) in enumerate(zip(holder.members, sizes)):
        member = FusedMember(holder, i, start, start + size, i == 0, i == len(sizes) - 1)
        _set(parent, path, member)
        start += size
    full = f"{group.parent}.{name}" if group.parent else name
    return f"fused: {group.kind} ({len(sizes)} -> {full})"


def fuse_siblings(model: nn.Module, kinds: tuple[str, ...] = FUSE_KINDS,
                  example: torch.Tensor | None = None) -> dict[str, str]:
    """Fuse sibling linears in place (see module docstring); {member name: "fused: ..." | "not fused: ..."}."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in FUSE_KINDS]
    if bad:
        raise ValueError(f"unknown fusion kind {bad[0]!r}; valid: {', '.join(FUSE_KINDS)}")
    report: dict[str, str] = {}
    for group in sibling_groups(model, example):
        if group.kind not in kinds:
            status = f"not fused: kind {group.kind!r} not requested (kinds={','.join(kinds)})"
        else:
            status = fuse_group(model, group)
        for name in group.members:
            report[name] = status
        if status.startswith("not fused") and group.kind in kinds:
            log.info("siblings %s not fused: %s", ", ".join(group.members), status[len("not fused: "):])
    n_groups = len({v for v in report.values() if v.startswith("fused")})
    log.info("fusion: %d of %d sibling linears fused (%d groups)",
             sum(v.startswith("fused") for v in report.values()), len(report), n_groups)
    return report


# ---------------------------------------------------------------- unfusing ----

def split_linear(linear: nn.Module, start: int, stop: int) -> nn.Module:
    """A standalone copy of output rows [start, stop) of an nn.Linear or RealWeightOnlyLinear."""
    bias = None if linear.bias is None else linear.bias.detach()[start:stop].clone()
    if isinstance(linear, RealWeightOnlyLinear):
        p = linear.packed
        rows = PackedWeight(p.qweight[start:stop].clone(), p.scale[start:stop].clone(),
                            p.szero[start:stop].clone(), p.bits, p.group_size, p.in_features,
                            stop - start, p.sym)
        return RealWeightOnlyLinear(rows, bias, linear.dtype)
    w = linear.weight.detach()[start:stop].clone()
    out = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta", dtype=w.dtype)
    out.weight = nn.Parameter(w, requires_grad=linear.weight.requires_grad)
    if bias is not None:
        out.bias = nn.Parameter(bias, requires_grad=linear.weight.requires_grad)
    return out


def unfuse_siblings(model: nn.Module) -> list[str]:
    """Undo fuse_siblings in place: members back to standalone modules; returns the removed holders."""
    holders = [(n, m) for n, m in model.named_modules() if isinstance(m, FusedLinear)]
    for name, holder in holders:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        start = 0
        for path, size in zip(holder.members, holder.sizes):
            _set(parent, path, split_linear(holder.linear, start, start + size))
            start += size
        delattr(parent, attr)
    return [n for n, _ in holders]
