"""Method ``awq``: activation-aware scale + clip search, weight-only (AWQ, arXiv 2306.00978).

Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration", MLSys 2024; follows llm-awq's algorithm (auto_scale, then auto_clip).

Per block, on calibration inputs, for each group of linears sharing an input
(``bitsweep.methods.core.structure``: qkv, o, gate+up / fc1, down / fc2):

1. Scale search: s = mean_tokens|x|^alpha (normalised by sqrt(max s * min s)),
   alpha on the grid {0, 1/n_grid, ..., (n_grid-1)/n_grid}; pick the alpha with the
   smallest ||X W^T - (X/s) Q(W diag(s))^T||^2 summed over the group's linears
   (alpha = 0 is "no scaling", so the search never loses to RTN on its data).
2. Apply s: folded into the preceding norm (weight, bias / s) or the preceding
   linear's output rows where the structure allows (Llama down <- up, MHA o <- v,
   OPT fc2 <- fc1), else kept as an input scale (``ScaledLinear``; llm-awq's
   ScaledActivation plays this role for GELU MLPs).
3. Clip search: per output row and weight group, the max |w| is shrunk by
   (1 - i/n_grid), i < max_shrink * n_grid, and the shrink with the smallest output
   error on ``clip_tokens`` sampled tokens is kept (w clamped to +-max).
   Linears matching ``clip_skip`` (q / k projections: attention-score sensitive) are
   not clipped, as in llm-awq.
4. Round with ``base`` (``rtn``: the spec's quantizer; ``gptq``: GPTQ with its
   default settings on the scaled, clipped weights).

Deliberate differences from llm-awq: the scale-search loss is the group's linear
outputs (the paper's Eq. 4), not the output of the enclosing attention / MLP module;
unfoldable scales (GQA o_proj, GELU MLPs) are searched and kept as input scales
rather than skipped. Next block's inputs: from the processed block (``propagate``).
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import torch

from bitsweep.methods.core.engine import BlockContext, check_propagate, run_layerwise, scale_inputs
from bitsweep.methods.weight_only.gptq import require_batches, round_block, rtn_outside_blocks, validate_base
from bitsweep.methods.core.quantizers import quantize_weight
from bitsweep.methods.core.registry import ConfigError, Method, MethodConfig, register_method
from bitsweep.methods.core.spec import WeightSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AWQConfig(MethodConfig):
    name: str = "awq"
    version: int = 1
    n_grid: int = 20  # alpha grid {0, 1/n, ..., (n-1)/n}; clip grid step 1/n
    max_shrink: float = 0.5  # clip search: shrink max |w| down to (1 - max_shrink)
    clip: bool = True
    clip_tokens: int = 512  # tokens sampled for the clip search (llm-awq: 512)
    clip_skip: tuple[str, ...] = ("*q_proj", "*k_proj", "*query_key_value", "*.q", "*.k")
    max_tokens: int = 65536  # tokens (evenly subsampled) used for the scale search
    base: str = "rtn"  # final rounding: rtn | gptq
    base_args: dict = field(default_factory=dict)  # GPTQ fields when base=gptq, e.g. {damp: 0.01}
    propagate: str = "quantized"  # next block's inputs from the quantized block | fp
    device: str = "auto"
    offload_activations: bool = False


def _subsample(x: torch.Tensor, n: int) -> torch.Tensor:
    """Evenly spaced rows of x [T, K] (at most n)."""
    if x.shape[0] <= n:
        return x
    idx = torch.linspace(0, x.shape[0] - 1, n, device=x.device).round().long()
    return x[idx]


def search_scale(x: torch.Tensor, weights: list[torch.Tensor], spec: WeightSpec, n_grid: int
                 ) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ scale search. x [T, K], weights [N_i, K] -> (s [K], best alpha, loss per alpha)."""
    x = x.float()
    x_mean = x.abs().mean(0)  # [K]
    ref = [x @ w.float().T for w in weights]
    losses, best, best_s = [], float("inf"), torch.ones_like(x_mean)
    for i in range(n_grid):
        alpha = i / n_grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = 0.0
        for w, r in zip(weights, ref):
            w_hat, _ = quantize_weight(w.float() * s, spec)
            loss += (r - (x / s) @ w_hat.T).pow(2).mean().item()
        losses.append(loss)
        if loss < best:
            best, best_s, best_alpha = loss, s, alpha
    return best_s, best_alpha, losses


def search_clip(x: torch.Tensor, w: torch.Tensor, spec: WeightSpec, n_grid: int, max_shrink: float,
                rows_per_batch: int = 256) -> torch.Tensor:
    """AWQ clip search. x [T, K], w [N, K] -> max |w| per (row, group) [N, K/g]."""
    n, k = w.shape
    if spec.granularity in ("tensor", "input_channel"):
        raise ValueError(f"AWQ clip search needs row-wise groups, not granularity={spec.granularity}")
    g = k if spec.granularity == "channel" else spec.group_size
    xg = x.float().reshape(-1, k // g, g)  # [T, G, g]
    out = []
    for r0 in range(0, n, rows_per_batch):
        wb = w[r0:r0 + rows_per_batch].float()  # [n_b, K]
        wg = wb.reshape(-1, k // g, g)  # [n_b, G, g]
        ref = torch.einsum("tgj,ngj->ntg", xg, wg)  # per-group partial outputs
        org_max = wg.abs().amax(-1)  # [n_b, G]
        best_err = torch.full_like(org_max, float("inf"))
        best_max = org_max.clone()
        for i in range(int(max_shrink * n_grid)):
            mx = org_max * (1 - i / n_grid)
            cur = torch.maximum(torch.minimum(wg, mx[..., None]), -mx[..., None])
            q, _ = quantize_weight(cur.reshape(-1, k), spec)
            err = (torch.einsum("tgj,ngj->ntg", xg, q.reshape(-1, k // g, g)) - ref).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, mx, best_max)
        out.append(best_max)
    return torch.cat(out)


def apply_clip(w: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """Clamp w [N, K] to +-mx [N, G] per group."""
    n, k = w.shape
    wg = w.float().reshape(n, mx.shape[1], -1)
    return torch.maximum(torch.minimum(wg, mx[..., None]), -mx[..., None]).reshape(n, k).to(w.dtype)


def awq_block(ctx: BlockContext, spec, cfg: AWQConfig) -> dict:
    """Scale search + fold, clip search, base rounding for one block; returns a log dict."""
    names = [n for n in ctx.layout.linears if spec.applies_to(ctx.full_name(n))]
    xs = {n: _subsample(torch.cat(v), cfg.max_tokens) for n, v in ctx.inputs(names).items()}
    info = {}
    for group in ctx.layout.groups:
        lin = [n for n in group.linears if n in names]
        if not lin:
            continue
        x = xs[lin[0]]
        s, alpha, _ = search_scale(x, [ctx.module(n).weight.data for n in lin], spec.weights, cfg.n_grid)
        how = scale_inputs(ctx, group, s.to(ctx.device), lin) if alpha > 0 else "none"
        for n in lin:
            xs[n] = x / s if alpha > 0 else x
        info[group.kind] = (alpha, how)
    if cfg.clip and spec.weights.granularity in ("channel", "group"):
        for n in names:
            if any(fnmatch.fnmatchcase(n, p) for p in cfg.clip_skip):
                continue
            w = ctx.module(n).weight
            x = _subsample(xs[n], cfg.clip_tokens)
            mx = search_clip(x, w.data, spec.weights, cfg.n_grid, cfg.max_shrink)
            w.data = apply_clip(w.data, mx)
    round_block(ctx, spec, cfg.base, "awq", cfg.base_args)
    log.info("awq block %d: %s", ctx.index, info)
    return info


@register_method("awq")
class AWQ(Method):
    Config = AWQConfig
    needs_calibration = True
    supports_activations = False

    def validate(self) -> None:
        name = self.config.name
        if self.spec.activations is not None:
            raise ConfigError(f"method '{name}' is weight-only: quant.activations must be null "
                              "(use smoothquant or rotation for weight-activation quantization)")
        if self.spec.weights is None:
            raise ConfigError(f"method '{name}' quantizes weights: quant.weights must be set")
        c = self.config
        if c.n_grid < 1 or not 0 <= c.max_shrink < 1:
            raise ConfigError(f"method '{name}': n_grid={c.n_grid} must be >= 1 and "
                              f"max_shrink={c.max_shrink} in [0, 1)")
        check_propagate(name, c.propagate)
        validate_base(name, c.base, self.spec, c.base_args)

    def calibrate(self, model, batches) -> None:
        require_batches(self.config.name, batches)
        c = self.config
        self.block_info = []
        run_layerwise(model, batches, lambda ctx: self.block_info.append(awq_block(ctx, self.spec, c)),
                      device=c.device, propagate=c.propagate,
                      offload_activations=c.offload_activations, desc="awq")

    def convert(self, model):
        if not hasattr(self, "block_info"):
            raise RuntimeError("awq: convert() called before calibrate(model, batches)")
        from bitsweep.methods.core.structure import find_blocks
        rtn_outside_blocks(model, self.spec, find_blocks(model)[0])
        return model
