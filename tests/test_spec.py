"""QuantSpec / method validation: errors name the field and the valid choices."""
from dataclasses import dataclass

import pytest
import torch

from bitsweep.methods import ConfigError, QuantSpec, build_method
from bitsweep.methods.core.qmodules import check_shapes
from bitsweep.methods.core.registry import Method, MethodConfig, register_method


@pytest.mark.parametrize("weights,field", [
    ({"bits": 0}, "bits"), ({"bits": 17}, "bits"), ({"granularity": "row"}, "granularity"),
    ({"format": "int5"}, "int5"), ({"bitz": 4}, "bitz"), ({"group_size": 0}, "group_size"),
])
def test_invalid_weight_spec_names_the_field(weights, field):
    with pytest.raises(ConfigError, match=field):
        QuantSpec.from_dict({"weights": weights})


def test_unknown_top_level_spec_key():
    with pytest.raises(ConfigError, match="unknown key 'weight'.*did you mean 'weights'"):
        QuantSpec.from_dict({"weight": {"bits": 4}})


def test_group_size_must_divide_input_dim():
    spec = QuantSpec.from_dict({"weights": {"bits": 4, "group_size": 48}})
    net = torch.nn.Sequential(torch.nn.Linear(64, 8))
    with pytest.raises(ConfigError, match="group_size=48 does not divide the input dimension 64 of layer '0'"):
        check_shapes(net, spec)


def test_unknown_method_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown method 'rtm'; valid: .*rtn.*did you mean 'rtn'"):
        build_method({"name": "rtm"}, QuantSpec())


def test_unknown_method_field():
    with pytest.raises(ConfigError, match="unknown key 'alpha'"):
        build_method({"name": "rtn", "alpha": 0.5}, QuantSpec())


@dataclass(frozen=True)
class _WOConfig(MethodConfig):
    name: str = "_test_weight_only"


@register_method("_test_weight_only")
class _WeightOnly(Method):
    Config = _WOConfig
    supports_activations = False

    def convert(self, model):
        return model


def test_activation_bits_need_a_method_that_supports_them():
    spec = QuantSpec.from_dict({"weights": {"bits": 4}, "activations": {"bits": 8}})
    with pytest.raises(ConfigError, match="'_test_weight_only' does not support activation"):
        build_method({"name": "_test_weight_only"}, spec)


def test_skip_filter():
    spec = QuantSpec.from_dict({"weights": {"bits": 4}, "skip": ["lm_head", "*.k_proj"]})
    assert not spec.applies_to("lm_head") and not spec.applies_to("model.layers.0.self_attn.k_proj")
    assert spec.applies_to("model.layers.0.self_attn.q_proj")
