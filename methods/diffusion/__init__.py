"""Diffusion-specific quantization methods: one file per method."""
