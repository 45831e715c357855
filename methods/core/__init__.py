"""Method machinery, kept apart from the methods themselves.

``config`` (generic registry, strict dataclass configs, ``ConfigError``), ``registry``
(the method registry and the ``Method`` lifecycle), ``spec`` (QuantSpec), ``formats``
(number formats), ``quantizers`` (tensor -> quantized tensor math), ``qmodules`` (fake
quantized modules), ``engine`` + ``structure`` + ``layerwise`` (block-by-block
calibration), ``real`` (packed kernel modules), ``fuse`` (sibling fusion), ``kvcache``
(activation and KV-cache quantization), ``bits`` (effective bits, one owner).
"""
