"""Method ``smoothquant``: migrate activation outliers into weights (SmoothQuant, arXiv 2211.10438).

Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models", ICML 2023.

Activation outliers are migrated into the weights with a per-input-channel scale

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(max|X_j| over calibration tokens, max|W_j| over the rows of every linear that reads
the same input), X <- X diag(1/s), W <- W diag(s). The transformation is exact in
16-bit: 1/s is folded into the preceding norm (LayerNorm / RMSNorm weight and bias),
as in the paper for the QKV and FC1 inputs (``layers: norm``). ``layers: all`` also
smooths the attention-output and MLP-down inputs (folded into the preceding linear
where the structure allows -- Llama up_proj, MHA v_proj -- else kept as an input scale),
which helps 4-bit activations. Then the block is quantized per the spec: weights with
``base`` (``rtn`` or ``gptq``), activations per the spec (per-token dynamic, or per-tensor
static with the scale = calibration absmax of the smoothed input / qmax).

Statistics are collected block by block by the layer-wise engine on inputs from the
already quantized blocks (``propagate: quantized``; ``fp`` reproduces the paper's
calibration on the 16-bit model). Deliberate difference: the paper's static
activation scales are computed on the 16-bit model for every layer at once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from bitsweep.methods.core.engine import BlockContext, check_propagate, run_layerwise, scale_inputs
from bitsweep.methods.weight_only.gptq import require_batches, round_block, rtn_outside_blocks, validate_base
from bitsweep.methods.core.registry import ConfigError, Method, MethodConfig, register_method

log = logging.getLogger(__name__)

LAYERS = ("norm", "all")


@dataclass(frozen=True)
class SmoothQuantConfig(MethodConfig):
    name: str = "smoothquant"
    version: int = 1
    alpha: float = 0.5  # migration strength
    layers: str = "norm"  # norm: qkv + up inputs (paper) | all: also o and down inputs
    base: str = "rtn"  # weight rounding: rtn | gptq
    base_args: dict = field(default_factory=dict)  # GPTQ fields when base=gptq, e.g. {damp: 0.01}
    propagate: str = "quantized"
    device: str = "auto"
    offload_activations: bool = False


def smooth_scales(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s [K] from act_max [K] and the weights [N_i, K] reading that input."""
    w_max = torch.cat([w.float().abs() for w in weights]).amax(0).clamp(min=1e-5)  # [K]
    s = act_max.float().clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)
    return s.clamp(min=1e-5)


def act_channel_max(ctx: BlockContext, names: list[str]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| [K] of the named linears over the calibration batches."""
    out: dict[str, torch.Tensor] = {}

    def track(n, x):
        m = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
        out[n] = torch.maximum(out[n], m) if n in out else m

    ctx.forward({n: (lambda x, y, n=n: track(n, x)) for n in names})
    return out


def smooth_block(ctx: BlockContext, alpha: float, layers: str, spec=None) -> dict[str, str]:
    """Smooth the block's groups in place (exact in 16-bit); returns {kind: where s went}."""
    groups = [g for g in ctx.layout.groups if g.norm is not None or layers == "all"]
    admitted = [n for g in groups for n in g.linears
                if spec is None or spec.applies_to(ctx.full_name(n))]
    stats = act_channel_max(ctx, [g.linears[0] for g in groups if g.linears[0] in admitted])
    done = {}
    for g in groups:
        if g.linears[0] not in stats or any(n not in admitted for n in g.linears):
            continue  # smoothing must scale every reader of the input
        s = smooth_scales(stats[g.linears[0]], [ctx.module(n).weight.data for n in g.linears], alpha)
        done[g.kind] = scale_inputs(ctx, g, s.to(ctx.device))
    return done


@register_method("smoothquant")
class SmoothQuant(Method):
    Config = SmoothQuantConfig
    needs_calibration = True

    def validate(self) -> None:
        c, name = self.config, self.config.name
        if self.spec.weights is None and self.spec.activations is None:
            raise ConfigError(f"method '{name}' needs quant.weights and/or quant.activations")
        if not 0 <= c.alpha <= 1:
            raise ConfigError(f"method '{name}': alpha={c.alpha}; must be in [0, 1]")
        if c.layers not in LAYERS:
            raise ConfigError(f"method '{name}': layers={c.layers!r}; valid: {', '.join(LAYERS)}")
        check_propagate(name, c.propagate)
        if c.base == "gptq" and self.spec.weights is None:
            raise ConfigError(f"method '{name}': base=gptq needs quant.weights")
        if self.spec.weights is not None:
            validate_base(name, c.base, self.spec, c.base_args)

    def calibrate(self, model, batches) -> None:
        require_batches(self.config.name, batches)
        c = self.config
        self.block_info = []

        def process(ctx):
            self.block_info.append(smooth_block(ctx, c.alpha, c.layers, self.spec))
            round_block(ctx, self.spec, c.base if self.spec.weights is not None else "rtn", "smoothquant",
                        c.base_args)

        run_layerwise(model, batches, process, device=c.device, propagate=c.propagate,
                      offload_activations=c.offload_activations, desc="smoothquant")

    def convert(self, model):
        if not hasattr(self, "block_info"):
            raise RuntimeError("smoothquant: convert() called before calibrate(model, batches)")
        from bitsweep.methods.core.structure import find_blocks
        rtn_outside_blocks(model, self.spec, find_blocks(model)[0])
        return model
