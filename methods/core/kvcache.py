"""Activation and KV-cache quantization as QuantSpec parts, usable with ANY weight method.

Entry point (the runner calls it after ``method.convert`` for every method)::

    apply_activation_and_kv(model, spec, calib_batches=None) -> model

* **Activations** (``spec.activations``): every linear the spec admits gets an
  :class:`bitsweep.methods.core.qmodules.ActQuantizer` if the method did not attach one (plain
  ``nn.Linear`` left by the method are swapped for a 16-bit-weight ``QuantLinear``;
  modules that quantize their own inputs, ``handles_activations = True`` such as
  LLM.int8()'s, are left alone). Per-token dynamic needs no data; a static
  per-tensor scale (``dynamic: false``) is calibrated here from ``calib_batches``:
  the largest |x| seen at each quantizer's input on the (weight-quantized) model
  with activation quantization switched off, times ``clip_ratio`` / qmax.
  Use :func:`needs_calibration` to know whether batches are needed.
* **KV cache** (``spec.kv_cache``): keys and values are fake-quantized just before
  the attention product, through a function registered in transformers'
  ``AttentionInterface`` (``bitsweep_kv_sdpa`` / ``bitsweep_kv_eager``, wrapping
  the model's own implementation and reusing its mask). Why there: it is the one
  place every HF decoder passes its post-RoPE, post-cache keys and values
  ([B, H_kv, T, D]) through, for any model family, in prefill and decode alike,
  without patching model code. With ``pre_rope: true`` (KVQuant) the keys are
  instead quantized at the output of ``k_proj`` (a forward hook), i.e. before
  RoPE is applied, and only values are quantized in the attention function.

KV granularities (x is [B, H_kv, T, D], D = head dim):

* ``token``: one scale (and zero) per token per head over D (``group_size`` > 0:
  per group of that many channels); ``group`` is the same with the group size required;
* ``channel``: one per channel per head over the tokens (``group_size`` > 0: per
  group of that many consecutive tokens, KIVI's key grouping).

INT KV quantization is KIVI's: asymmetric uses the real min/max
(``x_hat = round((x - min) / s) * s + min``, s = (max - min) / (2^b - 1));
symmetric uses absmax / (2^(b-1) - 1). Other formats go through
``NumberFormat.fake_quantize`` on the same groups.

Residual window (KIVI, ``residual: R``): the R most recent tokens stay 16-bit.
In a one-pass (perplexity) forward this is simulated per query: query i sees
16-bit keys/values for key positions in (i - R, i] and quantized ones before,
which is what token-by-token decoding with a sliding 16-bit window sees (KIVI
flushes its window in groups, so this is the window's best case). This path
computes attention eagerly (two score matrices); ``residual: 0`` uses the
model's own kernel (SDPA) on the quantized K/V.

Deliberate simplifications: quantization scales over all T tokens of the
forward pass (channel granularity with ``group_size: -1``) see tokens that real
decoding would not have seen yet; KVQuant's non-uniform datatypes and
dense-and-sparse outliers are not implemented (only pre-RoPE keys);
``pre_rope`` with a residual window is rejected (the window needs post-RoPE keys).
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

from bitsweep.methods.core.formats import get_format
from bitsweep.methods.core.qmodules import ActQuantizer, QuantLinear, make_quant_module, set_module
from bitsweep.methods.core.registry import ConfigError
from bitsweep.methods.core.spec import ActSpec, KVSpec, QuantSpec

log = logging.getLogger(__name__)

KV_ATTR = "bitsweep_kv"  # KVSpec attached to each attention module
IMPL_PREFIX = "bitsweep_kv_"


# ------------------------------------------------------------- validation ----

def validate_activation_kv(spec: QuantSpec) -> None:
    """Raise ConfigError for activation / KV parts this module cannot simulate."""
    a = spec.activations
    if a is not None and not a.dynamic:
        if a.format != "int" or not a.sym:
            raise ConfigError(
                f"quant.activations.dynamic=false (static per-tensor scale) supports format=int with "
                f"sym=true, not format={a.format!r} sym={a.sym}")
    kv = spec.kv_cache
    if kv is None:
        return
    fmt = get_format(kv.format)
    if not fmt.integer and kv.bits != fmt.bits:
        raise ConfigError(f"quant.kv_cache.bits={kv.bits}: format '{kv.format}' has {fmt.bits} bits")
    if "group" in (kv.key_granularity, kv.value_granularity) and kv.group_size <= 0:
        raise ConfigError(f"quant.kv_cache.group_size={kv.group_size}: granularity 'group' needs a "
                          f"group size > 0")
    if kv.pre_rope and kv.residual > 0:
        raise ConfigError(f"quant.kv_cache.pre_rope=true with residual={kv.residual}: the 16-bit "
                          f"residual window needs post-RoPE keys; use one or the other")


def needs_calibration(spec: QuantSpec) -> bool:
    """True if :func:`apply_activation_and_kv` needs calibration batches (static activation scales)."""
    return spec.activations is not None and not spec.activations.dynamic


# ------------------------------------------------------------- KV math ----

def _int_fake_quant_rows(x: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """x [M, L]: each row one group -> dequantized [M, L] (KIVI convention, float32)."""
    xf = x.float()
    if sym:
        qmax = 2 ** (bits - 1) - 1
        s = xf.abs().amax(-1, keepdim=True).clamp(min=1e-8) / qmax
        return torch.clamp(torch.round(xf / s), -qmax, qmax) * s
    lo, hi = xf.amin(-1, keepdim=True), xf.amax(-1, keepdim=True)
    s = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
    return torch.clamp(torch.round((xf - lo) / s), 0, 2**bits - 1) * s + lo


def _quant_rows(x: torch.Tensor, kv: KVSpec) -> torch.Tensor:
    if kv.format == "int":
        return _int_fake_quant_rows(x, kv.bits, kv.sym)
    return get_format(kv.format).fake_quantize(x.float(), -1)


def quantize_kv(x: torch.Tensor, kv: KVSpec, granularity: str) -> torch.Tensor:
    """Fake-quantize keys or values x [B, H, T, D] per ``granularity`` -> [B, H, T, D] in x.dtype."""
    b, h, t, d = x.shape
    g = kv.group_size
    if granularity in ("token", "group"):
        gg = d if g <= 0 else g
        if d % gg:
            raise ConfigError(f"quant.kv_cache.group_size={g} does not divide the head dim {d}")
        return _quant_rows(x.reshape(-1, gg), kv).reshape(b, h, t, d).to(x.dtype)
    # channel: groups run along the tokens; pad T by repeating the last token (keeps min/max)
    xt = x.transpose(2, 3)  # [B, H, D, T]
    gg = t if g <= 0 else g
    pad = (-t) % gg
    if pad:
        xt = torch.cat([xt, xt[..., -1:].expand(b, h, d, pad)], dim=-1)
    q = _quant_rows(xt.reshape(-1, gg), kv).reshape(b, h, d, t + pad)[..., :t]
    return q.transpose(2, 3).to(x.dtype)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, T, D] -> [B, H_kv * n_rep, T, D] (GQA)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _additive_mask(mask: torch.Tensor | None, tq: int, tk: int, device, dtype) -> torch.Tensor:
    """Any HF mask (bool 'attend', float additive, or None = causal) -> additive [.., Tq, Tk]."""
    if mask is None:
        i = torch.arange(tq, device=device)[:, None] + (tk - tq)
        allowed = torch.arange(tk, device=device)[None, :] <= i
        return torch.where(allowed, 0.0, float("-inf")).to(dtype)
    if mask.dtype == torch.bool:
        return torch.where(mask[..., :tk], 0.0, float("-inf")).to(dtype)
    return mask[..., :tk].to(dtype)


def residual_window_attention(query, key, value, key_q, value_q, attention_mask, scaling,
                              residual: int) -> torch.Tensor:
    """Eager attention mixing 16-bit (recent ``residual`` tokens) and quantized K/V.

    query [B, H, Tq, D]; key/value(_q) [B, H, Tk, D] (already repeated for GQA);
    query i sits at absolute position Tk - Tq + i. Returns [B, Tq, H, D].
    """
    tq, tk = query.shape[2], key.shape[2]
    qf = query.float()
    pos_q = torch.arange(tq, device=query.device)[:, None] + (tk - tq)
    pos_k = torch.arange(tk, device=query.device)[None, :]
    recent = (pos_k > pos_q - residual) & (pos_k <= pos_q)  # [Tq, Tk]
    s_fp = qf @ key.float().transpose(-1, -2) * scaling
    s_q = qf @ key_q.float().transpose(-1, -2) * scaling
    scores = torch.where(recent, s_fp, s_q) + _additive_mask(attention_mask, tq, tk, query.device,
                                                             torch.float32)
    p = torch.softmax(scores, dim=-1)
    p = torch.nan_to_num(p)  # fully masked rows (padding)
    out = (p * recent) @ value.float() + (p * ~recent) @ value_q.float()
    return out.to(query.dtype).transpose(1, 2).contiguous()


def _eager(query, key, value, attention_mask, scaling) -> torch.Tensor:
    """Plain eager attention, [B, H, T, D] inputs (GQA repeated) -> [B, Tq, H, D]."""
    tq, tk = query.shape[2], key.shape[2]
    scores = query.float() @ key.float().transpose(-1, -2) * scaling
    scores = scores + _additive_mask(attention_mask, tq, tk, query.device, torch.float32)
    p = torch.nan_to_num(torch.softmax(scores, dim=-1))
    return (p @ value.float()).to(query.dtype).transpose(1, 2).contiguous()


def _kv_attention(base: str, module: nn.Module, query, key, value, attention_mask,
                  scaling: float | None = None, dropout: float = 0.0, **kwargs: Any):
    """Attention function registered as ``bitsweep_kv_<base>`` (transformers' signature)."""
    kv: KVSpec | None = getattr(module, KV_ATTR, None)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    if kv is None:
        key_q, value_q = key, value
    else:
        key_q = key if kv.pre_rope else quantize_kv(key, kv, kv.key_granularity)
        value_q = quantize_kv(value, kv, kv.value_granularity)
    n_rep = query.shape[1] // key.shape[1]
    if kv is not None and kv.residual > 0:
        out = residual_window_attention(query, _repeat_kv(key, n_rep), _repeat_kv(value, n_rep),
                                        _repeat_kv(key_q, n_rep), _repeat_kv(value_q, n_rep),
                                        attention_mask, scaling, kv.residual)
        return out, None
    if base == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key_q, value_q, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    out = _eager(query, _repeat_kv(key_q, n_rep), _repeat_kv(value_q, n_rep), attention_mask, scaling)
    return out, None


def _register_attention(base: str) -> str:
    """Register ``bitsweep_kv_<base>`` (attention + its mask function) with transformers."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = IMPL_PREFIX + base

    def attn(module, query, key, value, attention_mask, **kwargs):
        return _kv_attention(base, module, query, key, value, attention_mask, **kwargs)

    if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(name, attn)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules holding k_proj and v_proj (HF decoder attention blocks)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "k_proj", None), nn.Module)
            and isinstance(getattr(m, "v_proj", None), nn.Module)]


def _pre_rope_hook(kv: KVSpec, head_dim: int):
    def hook(mod, args, out):  # out [B, T, H_kv * D]
        b, t, _ = out.shape
        x = out.reshape(b, t, -1, head_dim).transpose(1, 2)  # [B, H_kv, T, D]
        return quantize_kv(x, kv, kv.key_granularity).transpose(1, 2).reshape(b, t, -1)
    return hook


def apply_kv_cache(model: nn.Module, kv: KVSpec) -> int:
    """Attach KV fake quantization to every attention module; returns how many."""
    attns = _attention_modules(model)
    if not attns:
        raise ConfigError(f"quant.kv_cache: no attention module with k_proj/v_proj found in "
                          f"{type(model).__name__}")
    config = model.config
    base = config._attn_implementation or "sdpa"
    if base.startswith(IMPL_PREFIX):
        base = base[len(IMPL_PREFIX):]
    if base not in ("sdpa", "eager"):
        log.warning("kv_cache: attention implementation %r replaced by sdpa for KV quantization", base)
        base = "sdpa"
    impl = _register_attention(base)
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = impl
    for name, attn in attns:
        setattr(attn, KV_ATTR, kv)
        if kv.pre_rope:
            head_dim = getattr(attn, "head_dim", None)
            if head_dim is None:
                raise ConfigError(f"quant.kv_cache.pre_rope=true: attention '{name}' has no head_dim")
            attn.k_proj.register_forward_hook(_pre_rope_hook(kv, head_dim))
    log.info("kv_cache: %d attention modules quantize K/V (%s, %d bits, residual %d, pre_rope %s)",
             len(attns), kv.format, kv.bits, kv.residual, kv.pre_rope)
    return len(attns)


# ------------------------------------------------------------- activations ----

class _AbsMaxObserver(nn.Module):
    """Pass-through that records the largest |x| seen (static-scale calibration)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("amax", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.amax = torch.maximum(self.amax.to(x.device), x.detach().abs().amax().float())
        return x


def attach_activation_quantizers(model: nn.Module, spec: QuantSpec) -> int:
    """Give every admitted linear an ActQuantizer if it has none; returns how many were added."""
    added = 0
    no_weights = QuantSpec(weights=None, activations=spec.activations, skip=spec.skip, only=spec.only)
    for name, module in list(model.named_modules()):
        if not spec.applies_to(name) or getattr(module, "handles_activations", False):
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not isinstance(module, QuantLinear):
            set_module(model, name, make_quant_module(module, no_weights))
            added += 1
        elif hasattr(module, "act_quant") and module.act_quant is None:
            module.act_quant = ActQuantizer(spec.activations)
            added += 1
    return added


@torch.no_grad()
def calibrate_static_activations(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set ``static_scale`` of every static ActQuantizer from calibration inputs; returns count."""
    holders = [m for m in model.modules() if isinstance(getattr(m, "act_quant", None), ActQuantizer)
               and not m.act_quant.spec.dynamic]
    if not holders:
        return 0
    saved = [m.act_quant for m in holders]
    for m in holders:
        m.act_quant = _AbsMaxObserver()
    device = next(model.parameters()).device
    n = 0
    try:
        for ids in batches:
            model(input_ids=ids.to(device))
            n += 1
    finally:
        observers = [m.act_quant for m in holders]
        for m, aq in zip(holders, saved):
            m.act_quant = aq
    if n == 0:
        raise ConfigError("quant.activations.dynamic=false needs calibration batches (got none)")
    for aq, obs in zip(saved, observers):
        s: ActSpec = aq.spec
        qmax = 2 ** (s.bits - 1) - 1
        aq.static_scale = (obs.amax.clamp(min=1e-8) * s.clip_ratio / qmax).to(device)
    return len(saved)


def apply_activation_and_kv(model: nn.Module, spec: QuantSpec,
                            calib_batches: Iterable[torch.Tensor] | None = None) -> nn.Module:
    """Runner hook after ``method.convert``: activation quantizers (+ static calibration) and KV cache."""
    validate_activation_kv(spec)
    if spec.activations is not None:
        added = attach_activation_quantizers(model, spec)
        if added:
            log.info("activations: %d linears got an activation quantizer", added)
        if not spec.activations.dynamic:
            if calib_batches is None:
                raise ConfigError("quant.activations.dynamic=false needs calibration batches: "
                                  "pass calib_batches (see bitsweep.methods.core.kvcache.needs_calibration)")
            calibrate_static_activations(model, calib_batches)
    if spec.kv_cache is not None:
        apply_kv_cache(model, spec.kv_cache)
    return model


__all__ = ["apply_activation_and_kv", "needs_calibration", "validate_activation_kv",
           "quantize_kv", "apply_kv_cache", "attach_activation_quantizers",
           "calibrate_static_activations", "residual_window_attention"]

