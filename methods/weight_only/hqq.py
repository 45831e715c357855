"""Method ``hqq``: Half-Quadratic Quantization (Badri & Shaji 2023, "Half-Quadratic
Quantization of Large Machine Learning Models", mobiusml blog / github.com/mobiusml/hqq).

Data-free. For each group of a weight W, with codes ``q = clamp(round(W / s + z))`` and
``W_r = s (q - z)``, HQQ minimises the sparsity-promoting ``|| W - W_r ||_p^p``
(p < 1) by half-quadratic splitting: an auxiliary error ``W_e`` and alternating

* ``W_e <- shrink_p(W - W_r, beta)`` -- generalized soft-thresholding
  ``sign(x) relu(|x| - |x|^(p-1) / beta)``;
* ``z <- mean(q - (W - W_e) / s)`` over the group -- the closed-form zero point;
* ``beta <- kappa * beta``,

starting from the min/max scale and zero of each group (no widening to include 0,
float zero point), for ``iters`` iterations, keeping the iterate with the lowest mean
absolute reconstruction error (the reference code stops at the first iteration that
does not improve; ``early_stop``). Defaults are the reference's: p = 0.7, beta = 10,
kappa = 1.01, 20 iterations.

Option ``optimize_scale`` (off in the reference, "and optionally scale" in the paper's
framing): after each zero update, the scale is refit by least squares,
``s = <q - z, W - W_e> / ||q - z||^2`` per group.

Output is GPTQ's convention (``bitsweep.methods.core.quantizers``): unsigned codes, ``w_hat =
scale * (q - zero)`` with a float (unrounded) zero point, as HQQ stores it.
Asymmetric INT only (the zero point is what HQQ optimises).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bitsweep.methods.core.qmodules import make_quant_module, quantizable_modules, set_module, weight_matrix
from bitsweep.methods.core.quantizers import QuantizedWeight, _from_groups, _grouped, group_size_for
from bitsweep.methods.core.registry import ConfigError, Method, MethodConfig, register_method
from bitsweep.methods.core.spec import WeightSpec


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding (prox of |.|^p / beta), elementwise."""
    if p == 1:
        return torch.sign(x) * torch.relu(x.abs() - 1.0 / beta)
    return torch.sign(x) * torch.relu(x.abs() - (1.0 / beta) * torch.pow(x.abs() + 1e-8, p - 1))


def hqq_minmax_init(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, G, g] -> (scale, zero) [R, G, 1] from the raw min/max (w_hat = s (q - z))."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
    return scale, -lo / scale


def hqq_optimize(x: torch.Tensor, bits: int, lp_norm: float = 0.7, beta: float = 10.0,
                 kappa: float = 1.01, iters: int = 20, optimize_scale: bool = False,
                 early_stop: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-quadratic solver on grouped weights x [R, G, g] -> best (scale, zero) [R, G, 1]."""
    maxq = 2**bits - 1
    x = x.float()
    scale, zero = hqq_minmax_init(x, bits)

    def recon(s, z):
        q = torch.clamp(torch.round(x / s + z), 0, maxq)
        return q, s * (q - z)

    q, w_r = recon(scale, zero)
    best = (scale, zero, float((x - w_r).abs().mean()))
    for _ in range(iters):
        w_e = shrink_lp(x - w_r, beta, lp_norm)
        target = x - w_e
        zero = (q - target / scale).mean(-1, keepdim=True)
        if optimize_scale:
            d = q - zero
            s_new = (d * target).sum(-1, keepdim=True) / (d * d).sum(-1, keepdim=True).clamp(min=1e-12)
            scale = torch.where(s_new > 1e-8, s_new, scale)
        beta *= kappa
        q, w_r = recon(scale, zero)
        err = float((x - w_r).abs().mean())
        if err < best[2]:
            best = (scale, zero, err)
        elif early_stop:
            break
    return best[0], best[1]


def hqq_quantize(w: torch.Tensor, spec: WeightSpec, **opt) -> tuple[torch.Tensor, QuantizedWeight]:
    """w [N, K] -> (w_hat [N, K] in w.dtype, QuantizedWeight) with HQQ-optimised zero (and scale)."""
    g = group_size_for(spec, tuple(w.shape))
    x = _grouped(w.float(), spec.granularity, g)  # [R, G, g]
    scale, zero = hqq_optimize(x, spec.bits, **opt)
    codes = torch.clamp(torch.round(x / scale + zero), 0, 2**spec.bits - 1)
    scale_s = _from_groups(scale.squeeze(-1), spec.granularity)
    zero_s = _from_groups(zero.squeeze(-1), spec.granularity)
    codes = _ungroup(codes, tuple(w.shape), spec.granularity)
    qw = QuantizedWeight(codes.to(torch.uint8 if spec.bits <= 8 else torch.int16), scale_s, zero_s,
                         spec.bits, g, False, "int", spec.granularity)
    return qw.dequantize().to(w.dtype), qw


def _ungroup(x: torch.Tensor, shape: tuple[int, int], granularity: str) -> torch.Tensor:
    """Inverse of ``quantizers._grouped``: [R, G, g] -> [N, K]."""
    n, k = shape
    if granularity == "input_channel":
        return x.reshape(k, n).t().contiguous()
    return x.reshape(n, k)


@dataclass(frozen=True)
class HQQConfig(MethodConfig):
    name: str = "hqq"
    version: int = 1
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iters: int = 20
    optimize_scale: bool = False
    early_stop: bool = True


@register_method("hqq")
class HQQ(Method):
    Config = HQQConfig

    def validate(self) -> None:
        super().validate()
        c, w = self.config, self.spec.weights
        if w is None or w.format != "int":
            got = "null" if w is None else w.format
            raise ConfigError(f"method 'hqq' needs integer weights: quant.weights.format={got}; "
                              f"it supports format=int (2..8 bits, asymmetric)")
        if w.sym:
            raise ConfigError("method 'hqq' optimises the zero point: quant.weights.sym=true is not "
                              "supported (use sym=false)")
        if not 0 < c.lp_norm <= 1:
            raise ConfigError(f"method 'hqq': lp_norm={c.lp_norm} must be in (0, 1]")
        if c.beta <= 0 or c.kappa < 1 or c.iters < 0:
            raise ConfigError(f"method 'hqq': need beta > 0, kappa >= 1, iters >= 0 "
                              f"(got beta={c.beta}, kappa={c.kappa}, iters={c.iters})")

    def _opt(self) -> dict:
        c = self.config
        return dict(lp_norm=c.lp_norm, beta=c.beta, kappa=c.kappa, iters=c.iters,
                    optimize_scale=c.optimize_scale, early_stop=c.early_stop)

    @torch.no_grad()
    def convert(self, model):
        for name, module in quantizable_modules(model, self.spec):
            w = weight_matrix(module)
            w_hat, qw = hqq_quantize(w, self.spec.weights, **self._opt())
            set_module(model, name, make_quant_module(module, self.spec, w_hat=w_hat, qweight=qw))
        return model
