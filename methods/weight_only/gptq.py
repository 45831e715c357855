"""Method ``gptq``: Hessian-aware rounding with error feedback (GPTQ, arXiv 2210.17323).

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", ICLR 2023.

Per linear layer with calibration inputs X [tokens, K], GPTQ minimises
||X W^T - X W_hat^T||^2 column by column: H = 2/n X^T X (running average), dampened
by ``damp * mean(diag H)``; columns are quantized left to right (or by decreasing
diag(H) with ``act_order``) and each rounding error is pushed onto the not yet
quantized columns through the upper Cholesky factor of H^-1, in lazy batches of
``block_size`` columns (the paper's Algorithm 1).

Scales/zeros: per the spec's granularity. ``group``: computed when a group's first
column is reached, from the error-updated weights (the reference code's behaviour),
or once from the original weights (``static_groups``); ``channel`` / ``tensor``:
from the original weights; ``input_channel`` (AdaDim's per-IC grouping): from the
current column when it is reached. INT formats produce codes + scale + zero (the
packed layout); any other format of ``bitsweep.methods.core.formats`` is quantized column by
column with its group scales (``group_scales`` of the current weights at a group's
first column, then ``apply_scales``), fake-quant only.

Deliberate differences from the reference code: ``act_order`` with groups requires
``static_groups`` (groups then stay contiguous in the original column order, so the
packed layout needs no ``g_idx``); dead inputs (diag H = 0) get weight 0 as there.
Block-wise processing follows ``true_sequential`` (qkv, then o, then up, then down,
each group's Hessian from inputs produced by the already quantized groups).
Quantization happens during ``calibrate`` (the engine must feed quantized outputs
to the next block); ``convert`` RTN-quantizes admitted linears outside the blocks.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from bitsweep.methods.core.engine import BlockContext, check_propagate, InputScale, run_layerwise
from bitsweep.methods.core.formats import get_format
from bitsweep.methods.core.qmodules import ActQuantizer, make_quant_module, quantizable_modules, set_module
from bitsweep.methods.core.quantizers import QuantizedWeight, group_size_for, int_qparams
from bitsweep.methods.core.registry import ConfigError, Method, MethodConfig, build_dataclass, register_method
from bitsweep.methods.core.spec import ActSpec, QuantSpec, WeightSpec

log = logging.getLogger(__name__)


# ----------------------------------------------------------------- Hessian ----

class Hessian:
    """Running H = 2/n sum x x^T over rows of inputs [.., K] (float32)."""

    def __init__(self, k: int, device: torch.device):
        self.H = torch.zeros(k, k, device=device, dtype=torch.float32)
        self.n = 0
        self.amax = torch.zeros((), device=device)  # input absmax (static activation scales)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # [t, K]
        t = x.shape[0]
        self.H *= self.n / (self.n + t)
        self.n += t
        x = math.sqrt(2 / self.n) * x
        self.H += x.t() @ x
        self.amax = torch.maximum(self.amax, x.abs().max() / math.sqrt(2 / self.n))


# ----------------------------------------------------------- column quant ----

@dataclass
class GPTQResult:
    w_hat: torch.Tensor  # [N, K] float32
    qweight: QuantizedWeight | None
    loss: float  # sum of (w - q)^2 / d^2 / 2, the paper's objective proxy


class _Columns:
    """Per-column quantization with the parameters of the column's group."""

    def __init__(self, w: torch.Tensor, spec: WeightSpec, static_groups: bool):
        self.spec, self.n, self.k = spec, *w.shape
        self.fmt = get_format(spec.format)
        self.g = group_size_for(spec, (self.n, self.k))
        self.maxq = 2**spec.bits - 1
        gran = spec.granularity
        ctype = torch.uint8 if spec.bits <= 8 else torch.int16
        self.codes = torch.zeros(w.shape, dtype=ctype, device=w.device) if self.fmt.integer else None
        self.scale = self.zero = None
        self.cur = None  # parameters of the current group: int -> (scale [N], zero [N]); else scales [N]
        if gran in ("tensor", "channel") or (gran == "group" and static_groups):
            self._init_static(w)

    def _init_static(self, w: torch.Tensor) -> None:
        sp = self.spec
        if self.fmt.integer:
            self.scale, self.zero = int_qparams(w, sp.bits, sp.sym, sp.granularity, self.g)
        else:
            g = -1 if sp.granularity == "channel" else self.g
            self.scale = self.fmt.group_scales(w, g)

    def start_group(self, col: int, w_now: torch.Tensor) -> None:
        """Non-static group parameters at the group's first column, from the current weights:
        INT: ``w_now`` is the group's columns [N, g]; other formats: the whole matrix [N, K]."""
        sp = self.spec
        if self.fmt.integer:
            s, z = int_qparams(w_now, sp.bits, sp.sym, "channel", self.g)
            if self.scale is None:
                self.scale = torch.zeros(self.n, self.k // self.g, device=w_now.device)
                self.zero = torch.zeros_like(self.scale)
            self.scale[:, col // self.g], self.zero[:, col // self.g] = s[:, 0], z[:, 0]
        else:
            s = self.fmt.group_scales(w_now, self.g)  # whole matrix: NVFP4's global scale
            if self.scale is None:
                self.scale = torch.zeros_like(s)
            self.scale[:, col // self.g] = s[:, col // self.g]

    def quantize(self, w: torch.Tensor, col: int) -> torch.Tensor:
        """Quantize column w [N] (original index ``col``) -> w_hat [N]."""
        sp = self.spec
        if sp.granularity == "input_channel":
            return self._quantize_ic(w, col)
        if self.fmt.integer:
            j = 0 if sp.granularity == "tensor" else col // self.g
            s = self.scale.reshape(-1, 1)[:, 0] if sp.granularity == "tensor" else self.scale[:, j]
            z = self.zero.reshape(-1, 1)[:, 0] if sp.granularity == "tensor" else self.zero[:, j]
            q = torch.clamp(torch.round(w / s) + z, 0, self.maxq)
            self.codes[:, col] = q.to(self.codes.dtype)
            return s * (q - z)
        j = 0 if sp.granularity == "channel" else col // self.g
        s = self.scale[:, j]
        bs = self.fmt.block_size or 1
        x = w[:, None].expand(-1, bs).contiguous()
        return self.fmt.apply_scales(x, s[:, None], bs if self.fmt.block_size else -1)[:, 0]

    def _quantize_ic(self, w: torch.Tensor, col: int) -> torch.Tensor:
        sp = self.spec
        if not self.fmt.integer:
            raise ConfigError(f"granularity=input_channel supports format 'int' only, not {sp.format!r}")
        s, z = int_qparams(w[:, None], sp.bits, sp.sym, "input_channel", self.g)  # [N/g, 1]
        if self.scale is None:
            self.scale = torch.zeros(self.n // self.g, self.k, device=w.device)
            self.zero = torch.zeros_like(self.scale)
        self.scale[:, col], self.zero[:, col] = s[:, 0], z[:, 0]
        se, ze = s[:, 0].repeat_interleave(self.g), z[:, 0].repeat_interleave(self.g)
        q = torch.clamp(torch.round(w / se) + ze, 0, self.maxq)
        self.codes[:, col] = q.to(self.codes.dtype)
        return se * (q - ze)

    def result(self) -> QuantizedWeight | None:
        if self.codes is None:
            return None
        sp = self.spec
        dtype = torch.uint8 if sp.bits <= 8 else torch.int16
        scale, zero = self.scale, self.zero
        if sp.granularity == "tensor":
            scale, zero = scale.reshape(1, 1), zero.reshape(1, 1)
        return QuantizedWeight(self.codes.to(dtype), scale, zero, sp.bits, self.g, sp.sym,
                               "int", sp.granularity)


def prepare_hessian(w: torch.Tensor, H: torch.Tensor, damp: float,
                    inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero dead columns, dampen, return (w, upper Cholesky factor of H^-1), both [.., K].

    ``inplace``: H may be overwritten (the caller drops it): at most two K x K matrices live.
    """
    if not inplace:
        H = H.clone()
    dead = torch.diag(H) == 0
    if bool(dead.any()):
        H[dead, dead] = 1
        w = w.clone()
        w[:, dead] = 0
    H.diagonal().add_(damp * H.diagonal().mean())
    for _ in range(5):
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            break
        H.diagonal().add_(damp * H.diagonal().mean())  # not positive definite: dampen more
    else:
        raise RuntimeError("GPTQ: Hessian is not positive definite even after extra dampening")
    del H
    torch.cholesky_inverse(L, out=L)  # in place: no third K x K matrix
    torch.linalg.cholesky(L, upper=True, out=L)
    return w, L


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, spec: WeightSpec, damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False, static_groups: bool = False,
                  inplace_hessian: bool = False) -> GPTQResult:
    """GPTQ on one weight w [N, K] with Hessian H [K, K] (paper's Algorithm 1).

    ``inplace_hessian``: H may be overwritten (saves K x K memory when the caller drops it).
    """
    n, k = w.shape
    if act_order and spec.granularity == "group" and not static_groups:
        raise ConfigError("GPTQ: act_order with granularity=group needs static_groups=True")
    w = w.to(torch.float32, copy=True)  # updated in place below
    inplace = inplace_hessian and H.dtype == torch.float32
    H = H.float()
    cols = _Columns(w, spec, static_groups)  # static parameters from the original weights
    perm = torch.arange(k, device=w.device)
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        w, H, inplace = w[:, perm], H[perm][:, perm], True
    w, Hinv = prepare_hessian(w, H, damp, inplace=inplace)
    del H
    Q = torch.zeros_like(w)
    loss = torch.zeros((), device=w.device)
    group_mode = spec.granularity == "group" and not static_groups
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = w[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            if group_mode and col % cols.g == 0:  # current (error-updated) weights
                if cols.fmt.integer:  # only the group's columns [N, g] are needed
                    extra = cols.g - (i2 - i1 - i)
                    cur = W1[:, i:i + cols.g] if extra <= 0 else torch.cat([W1[:, i:], w[:, i2:i2 + extra]], 1)
                else:  # group scales may depend on the whole matrix (NVFP4's global scale)
                    cur = torch.cat([w[:, :i1], W1, w[:, i2:]], 1)
                cols.start_group(col, cur)
            wc, d = W1[:, i], Hinv1[i, i]
            q = cols.quantize(wc, col)
            Q[:, i1 + i] = q
            loss += ((wc - q) ** 2).sum() / d**2 / 2
            err = (wc - q) / d
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        w[:, i2:].addmm_(Err1, Hinv[i1:i2, i2:], alpha=-1)  # no [N, K] temporary
    inv = torch.argsort(perm)
    return GPTQResult(Q[:, inv], cols.result(), float(loss))


# ---------------------------------------------------------------- method ----

@dataclass(frozen=True)
class GPTQConfig(MethodConfig):
    name: str = "gptq"
    version: int = 1
    damp: float = 0.01  # percdamp: fraction of mean(diag H) added to the diagonal
    block_size: int = 128  # lazy-batch width (columns)
    act_order: bool = False  # quantize columns by decreasing diag(H)
    static_groups: bool = False  # group scales from the original weights
    true_sequential: bool = True  # groups within a block in order, each on updated inputs
    propagate: str = "quantized"  # next block's inputs from the quantized block | fp
    device: str = "auto"  # engine device: auto (cuda if available) | cpu | cuda:N
    offload_activations: bool = False  # keep calibration activations on the CPU


def validate_gptq_fields(cfg, spec: QuantSpec, method: str) -> None:
    """Checks shared by GPTQ-based methods (GPTQ itself, SpQR, base=gptq)."""
    w = spec.weights
    if w is None:
        raise ConfigError(f"method '{method}' quantizes weights: quant.weights must be set")
    if not 0 <= cfg.damp < 1:
        raise ConfigError(f"method '{method}': damp={cfg.damp}; must be in [0, 1)")
    if cfg.block_size < 1:
        raise ConfigError(f"method '{method}': block_size={cfg.block_size}; must be >= 1")
    if cfg.act_order and w.granularity == "group" and not cfg.static_groups:
        raise ConfigError(f"method '{method}': act_order=true with quant.weights.granularity=group "
                          "needs static_groups=true (contiguous groups for the packed layout)")
    if w.granularity == "input_channel" and w.format != "int":
        raise ConfigError(f"method '{method}': quant.weights.granularity=input_channel supports "
                          f"format 'int' only, not {w.format!r}")
    check_propagate(method, cfg.propagate)


def require_batches(method: str, batches) -> None:
    if not batches:
        raise ConfigError(f"method '{method}' needs calibration data (data.nsamples > 0); got none")


def static_act_quantizer(spec: ActSpec | None, amax: torch.Tensor | None) -> ActQuantizer | None:
    """Activation quantizer; a static per-tensor spec gets its scale from the calibration absmax."""
    if spec is None:
        return None
    if spec.dynamic or amax is None:
        return ActQuantizer(spec)
    qmax = 2 ** (spec.bits - 1) - 1 if spec.format == "int" else 1.0
    scale = (amax.float().clamp(min=1e-8) * spec.clip_ratio / qmax).reshape(1)
    return ActQuantizer(spec, static_scale=scale)


def gptq_block(ctx: BlockContext, spec: QuantSpec, cfg, transform=None, name: str = "gptq") -> dict:
    """Quantize the admitted linears of one block with GPTQ; returns {name: GPTQ loss}.

    ``transform(lin_name, w [N, K], H [K, K]) -> WeightSpec`` lets a caller choose the
    weight spec per layer (AdaDim picks the granularity there). ``cfg`` carries
    damp / block_size / act_order / static_groups / true_sequential.
    """
    admitted = [n for n in ctx.layout.linears if spec.applies_to(ctx.full_name(n))]
    groups = [[n for n in g.linears if n in admitted] for g in ctx.layout.groups]
    if not cfg.true_sequential:
        groups = [[n for g in groups for n in g]]
    out = {}
    for names in (g for g in groups if g):
        hs = {n: Hessian(ctx.module(n).in_features, ctx.device) for n in names}
        ctx.forward({n: (lambda x, y, n=n: hs[n].add(_scaled_input(ctx.module(n), x))) for n in names})
        for n in names:
            mod = ctx.module(n)
            w, wspec = mod.weight.data, spec.weights  # gptq_quantize makes its own float32 copy
            if transform is not None:
                wspec = transform(n, w.float(), hs[n].H)
            amax = hs[n].amax
            res = gptq_quantize(w, hs.pop(n).H, wspec, cfg.damp, cfg.block_size, cfg.act_order,
                                cfg.static_groups, inplace_hessian=True)
            wspec_spec = spec if wspec is spec.weights else QuantSpec(wspec, spec.activations, spec.kv_cache)
            aq = with_input_scale(mod, static_act_quantizer(spec.activations, amax))
            new = make_quant_module(mod, wspec_spec, w_hat=res.w_hat, qweight=res.qweight, act_quant=aq)
            ctx.replace(n, new)
            out[n] = res.loss
            del res
        log.debug("%s block %d: %s", name, ctx.index, ", ".join(f"{n}={out[n]:.3g}" for n in names))
    return out


def _scaled_input(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input the weight really sees (a ScaledLinear divides by its input scale first)."""
    s = getattr(mod, "input_scale", None)
    return x if s is None else x / s


def with_input_scale(mod: nn.Module, aq: nn.Module | None) -> nn.Module | None:
    """Keep a ScaledLinear's input scale in the quantized module's activation path."""
    s = getattr(mod, "input_scale", None)
    return aq if s is None else InputScale(s, aq)


def base_gptq_config(base_args: dict | None, method: str) -> GPTQConfig:
    """GPTQConfig from a composing method's ``base_args`` (unknown keys rejected)."""
    return build_dataclass(GPTQConfig, {"name": "gptq", **(base_args or {})}, f"method[{method}].base_args")


def round_block(ctx: BlockContext, spec: QuantSpec, base: str, name: str,
                base_args: dict | None = None) -> None:
    """Final rounding of a block's admitted linears: ``base`` = rtn | gptq (with ``base_args``)."""
    if base == "gptq":
        gptq_block(ctx, spec, base_gptq_config(base_args, name), name=name)
        return
    names = [n for n in ctx.layout.linears if spec.applies_to(ctx.full_name(n))]
    amax = {}
    if spec.activations is not None and not spec.activations.dynamic:
        def track(n, x):
            cur = _scaled_input(ctx.module(n), x).abs().max()
            amax[n] = torch.maximum(amax.get(n, cur), cur)
        ctx.forward({n: (lambda x, y, n=n: track(n, x)) for n in names})
    for n in names:
        mod = ctx.module(n)
        aq = with_input_scale(mod, static_act_quantizer(spec.activations, amax.get(n)))
        ctx.replace(n, make_quant_module(mod, spec, act_quant=aq))


BASES = ("rtn", "gptq")


def validate_base(method: str, base: str, spec: QuantSpec, base_args: dict | None = None) -> None:
    if base not in BASES:
        raise ConfigError(f"method '{method}': base={base!r}; valid: {', '.join(BASES)}")
    if base_args and base != "gptq":
        raise ConfigError(f"method '{method}': base_args are for base=gptq (base={base!r} has no fields)")
    if base == "gptq":
        validate_gptq_fields(base_gptq_config(base_args, method), spec, f"{method} (base=gptq)")


def rtn_outside_blocks(model: nn.Module, spec: QuantSpec, prefix: str) -> int:
    """RTN-quantize admitted linears outside the decoder blocks (e.g. an un-skipped lm_head)."""
    done = 0
    for name, mod in quantizable_modules(model, spec):
        if not name.startswith(prefix + ".") and not hasattr(mod, "effective_bits"):
            set_module(model, name, make_quant_module(mod, spec))
            done += 1
    return done


@register_method("gptq")
class GPTQ(Method):
    Config = GPTQConfig
    needs_calibration = True

    def validate(self) -> None:
        super().validate()
        validate_gptq_fields(self.config, self.spec, self.config.name)

    def calibrate(self, model, batches) -> None:
        require_batches(self.config.name, batches)
        cfg = self.config
        run_layerwise(model, batches, lambda ctx: gptq_block(ctx, self.spec, cfg),
                      device=cfg.device, propagate=cfg.propagate,
                      offload_activations=cfg.offload_activations, desc="gptq")
        self._calibrated = True

    def convert(self, model):
        if not getattr(self, "_calibrated", False):
            raise RuntimeError("gptq: convert() called before calibrate(model, batches)")
        from bitsweep.methods.core.structure import find_blocks
        rtn_outside_blocks(model, self.spec, find_blocks(model)[0])
        return model
