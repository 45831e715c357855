"""Method ``rtn``: round-to-nearest, data-free.

Every module the spec admits gets its weight quantized with min/max scales per
group (``bitsweep.methods.core.quantizers``, GPTQ's convention: asymmetric ranges include 0;
symmetric ranges are +-absmax) -- the baseline every PTQ paper compares against
(e.g. GPTQ, arXiv 2210.17323, "RTN" rows; their ``--nearest`` path uses the same
quantizer). Activations / KV cache, if in the spec, get dynamic fake quantizers.
Works on any ``nn.Linear`` / ``nn.Conv2d`` (LLMs and diffusion models alike).
"""
from __future__ import annotations

from dataclasses import dataclass

from bitsweep.methods.core.qmodules import make_quant_module, quantizable_modules, set_module
from bitsweep.methods.core.registry import Method, MethodConfig, register_method


@dataclass(frozen=True)
class RTNConfig(MethodConfig):
    name: str = "rtn"
    version: int = 1


@register_method("rtn")
class RTN(Method):
    Config = RTNConfig

    def convert(self, model):
        for name, module in quantizable_modules(model, self.spec):
            set_module(model, name, make_quant_module(module, self.spec))
        return model
