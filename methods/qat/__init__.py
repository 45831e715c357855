"""Quantization-aware training and quantized fine-tuning methods: one file per method."""
