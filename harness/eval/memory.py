"""Evaluator ``memory``: checkpoint bytes, effective bits, and peak GPU bytes of a forward.

* ``weight_bytes``: bytes of every parameter and buffer as held (a real
  quantized model holds packed codes + fp16 scales; a fake one the 16-bit weight);
* ``effective_bits``: parameter-weighted mean of each quantized layer's
  ``effective_bits`` (16 for layers that are not quantized), i.e. the spec's bits;
* ``peak_gpu_bytes``: ``torch.cuda.max_memory_allocated`` over one forward of
  ``seq_len`` tokens at batch 1 (unavailable without CUDA).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bitsweep.harness.eval.base import EvalContext, Evaluator, MetricRow, register_evaluator


def model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def effective_bits(model: nn.Module) -> float:
    """Weighted mean bits per weight over Linear-like layers (16 for unquantized)."""
    num = den = 0.0
    for m in model.modules():
        n_w = None
        if hasattr(m, "in_features") and hasattr(m, "out_features"):
            n_w = m.in_features * m.out_features
        if n_w is None or any(True for _ in m.children()):
            continue
        if hasattr(m, "effective_bits"):
            bits = float(m.effective_bits)
        elif hasattr(m, "bits") and hasattr(m, "group_size"):
            from bitsweep.kernels.packing import effective_bits as eb
            bits = eb(m.bits, m.group_size, m.sym)
        elif hasattr(m, "wq"):
            bits = 8.0 + 32.0 / m.in_features
        else:
            bits = 16.0
        num, den = num + bits * n_w, den + n_w
    return num / den if den else 16.0


@torch.inference_mode()
def peak_forward_bytes(model: nn.Module, seq_len: int) -> int:
    dev = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device=dev,
                        generator=torch.Generator(dev).manual_seed(0))
    model(ids, use_cache=False)  # warm-up outside the measured peak (kernel tuning)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    model(ids, use_cache=False)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


@register_evaluator("memory")
class Memory(Evaluator):
    """Weight bytes, effective bits and peak forward GPU bytes."""

    @dataclass(frozen=True)
    class Config:
        seq_len: int = 2048

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> list[MetricRow]:
        rows = [MetricRow("weight_bytes", float(model_bytes(model))),
                MetricRow("effective_bits", effective_bits(model))]
        on_cuda = torch.cuda.is_available() and next(model.parameters()).device.type == "cuda"
        if on_cuda:
            rows.append(MetricRow("peak_gpu_bytes", float(peak_forward_bytes(model, self.config.seq_len)),
                                  tags=dict(seq_len=self.config.seq_len)))
        else:
            rows.append(MetricRow("peak_gpu_bytes", None, unavailable="no CUDA device"))
        return rows
