"""Method ``adadim``: per-layer choice of per-IC vs per-OC grouping (AdaDim, arXiv 2309.15531).

Heo et al., "Rethinking Channel Dimensions to Isolate Outliers for Low-bit Weight
Quantization of Large Language Models", ICLR 2024.

Activation outliers make some *input* channels of W [N, K] sensitive; per-IC quantization
(one scale per input column per ``group_size`` consecutive output rows,
``granularity: input_channel``) isolates them in their own groups, while the usual per-OC
grouping (``group``: one scale per row per ``group_size`` input columns; ``channel``: per
row) mixes them with ordinary weights. AdaDim quantizes each layer both ways and keeps the
grouping with the lower reconstruction error on calibration data,
||X W^T - X W_hat^T||^2 = (n/2) tr((W - W_hat) H (W - W_hat)^T) with H = 2/n X^T X, using
``base`` for the rounding (``rtn``, or ``gptq``: GPTQ with per-column scales for per-IC).
The choice per layer is recorded (``QuantLinear.adadim_choice`` and ``method.choices``).

Candidates have the same number of scales per weight when N and K are comparable; the
effective bits of each layer follow its choice. Layers whose N is not divisible by the
group size keep per-OC. Deliberate difference: the paper's results pair AdaDim with RTN
and GPTQ base quantizers; here the grouping search reuses this project's GPTQ.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from bitsweep.methods.core.engine import BlockContext, check_propagate, run_layerwise
from bitsweep.methods.weight_only.gptq import (GPTQConfig, Hessian, base_gptq_config, _scaled_input, gptq_quantize, require_batches,
                   rtn_outside_blocks, static_act_quantizer, validate_base, with_input_scale)
from bitsweep.methods.core.qmodules import make_quant_module
from bitsweep.methods.core.quantizers import quantize_weight
from bitsweep.methods.core.registry import ConfigError, Method, MethodConfig, register_method
from bitsweep.methods.core.spec import QuantSpec, WeightSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaDimConfig(MethodConfig):
    name: str = "adadim"
    version: int = 1
    base: str = "rtn"  # rounding of each candidate: rtn | gptq (GPTQ defaults)
    base_args: dict = field(default_factory=dict)  # GPTQ fields when base=gptq, e.g. {damp: 0.01}
    propagate: str = "quantized"
    device: str = "auto"
    offload_activations: bool = False


def ic_spec(spec: WeightSpec) -> WeightSpec:
    """The per-input-channel counterpart of a per-output-channel weight spec."""
    g = -1 if spec.granularity == "channel" else spec.group_size
    return dataclasses.replace(spec, granularity="input_channel", group_size=g)


def hessian_error(w: torch.Tensor, w_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - W_hat) H (W - W_hat)^T) for w, w_hat [N, K], H [K, K]."""
    d = (w - w_hat).float()
    return float(((d @ H) * d).sum())


def choose_grouping(w: torch.Tensor, H: torch.Tensor, spec: WeightSpec, base: str,
                    gptq_cfg: GPTQConfig | None = None):
    """Quantize w [N, K] per-OC and per-IC; return (choice, w_hat, qweight, spec, errors)."""
    cands = {"oc": spec}
    ic = ic_spec(spec)
    if ic.group_size == -1 or w.shape[0] % ic.group_size == 0:
        cands["ic"] = ic
    best, errs = None, {}
    for tag, sp in cands.items():
        if base == "gptq":
            c = gptq_cfg or GPTQConfig()
            res = gptq_quantize(w, H, sp, c.damp, c.block_size, c.act_order, c.static_groups)
            w_hat, qw = res.w_hat, res.qweight
        else:
            w_hat, qw = quantize_weight(w.float(), sp)
        errs[tag] = hessian_error(w.float(), w_hat, H)
        if best is None or errs[tag] < errs[best[0]]:
            best = (tag, w_hat, qw, sp)
    return (*best, errs)


def adadim_block(ctx: BlockContext, spec: QuantSpec, cfg: AdaDimConfig) -> dict[str, str]:
    admitted = [n for n in ctx.layout.linears if spec.applies_to(ctx.full_name(n))]
    choices = {}
    for grp in ctx.layout.groups:
        names = [n for n in grp.linears if n in admitted]
        if not names:
            continue
        hs = {n: Hessian(ctx.module(n).in_features, ctx.device) for n in names}
        ctx.forward({n: (lambda x, y, n=n: hs[n].add(_scaled_input(ctx.module(n), x))) for n in names})
        for n in names:
            mod = ctx.module(n)
            tag, w_hat, qw, wspec, errs = choose_grouping(mod.weight.data, hs[n].H, spec.weights, cfg.base,
                                                              base_gptq_config(cfg.base_args, cfg.name))
            aq = with_input_scale(mod, static_act_quantizer(spec.activations, hs[n].amax))
            new = make_quant_module(mod, dataclasses.replace(spec, weights=wspec), w_hat=w_hat,
                                    qweight=qw, act_quant=aq)
            new.adadim_choice = tag
            ctx.replace(n, new)
            choices[ctx.full_name(n)] = tag
            log.debug("adadim %s: %s (errors %s)", ctx.full_name(n), tag, errs)
    return choices


@register_method("adadim")
class AdaDim(Method):
    Config = AdaDimConfig
    needs_calibration = True

    def validate(self) -> None:
        super().validate()
        c, name, w = self.config, self.config.name, self.spec.weights
        self.require_int_weights()
        if w.granularity not in ("group", "channel"):
            raise ConfigError(f"method '{name}': quant.weights.granularity={w.granularity!r}; valid: "
                              "group, channel (the per-output-channel form AdaDim compares against per-IC)")
        check_propagate(name, c.propagate)
        validate_base(name, c.base, self.spec, c.base_args)

    def calibrate(self, model, batches) -> None:
        require_batches(self.config.name, batches)
        c = self.config
        self.choices: dict[str, str] = {}
        run_layerwise(model, batches, lambda ctx: self.choices.update(adadim_block(ctx, self.spec, c)),
                      device=c.device, propagate=c.propagate,
                      offload_activations=c.offload_activations, desc="adadim")
        n_ic = sum(v == "ic" for v in self.choices.values())
        log.info("adadim: per-IC chosen for %d of %d layers", n_ic, len(self.choices))

    def convert(self, model):
        if not hasattr(self, "choices"):
            raise RuntimeError("adadim: convert() called before calibrate(model, batches)")
        from bitsweep.methods.core.structure import find_blocks
        rtn_outside_blocks(model, self.spec, find_blocks(model)[0])
        return model
