"""Fake vs real module agreement (TRITON_INTERPRET=1 on CPU) and to_real's per-layer report."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bitsweep.methods.core.qmodules import make_quant_module  # noqa: E402
from bitsweep.methods.core.real import RealW8A8Linear, RealWeightOnlyLinear, to_real  # noqa: E402
from bitsweep.methods.core.spec import ActSpec, QuantSpec, WeightSpec  # noqa: E402


def _swap(model: nn.Module, spec: QuantSpec) -> nn.Module:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear) and spec.applies_to(name):
            setattr(model, name, make_quant_module(child, spec))
    return model


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32, bias=False))


@pytest.mark.parametrize("bits,gran,group,sym", [(4, "group", 32, False), (3, "group", 32, True),
                                                 (2, "channel", -1, False), (8, "group", 32, False)])
def test_fake_and_real_agree(bits, gran, group, sym):
    spec = QuantSpec(weights=WeightSpec(bits=bits, granularity=gran, group_size=group, sym=sym))
    fake = _swap(_model(bits), spec)
    x = torch.randn(5, 64)
    y_fake = fake(x)
    real = _swap(_model(bits), spec)
    report = to_real(real)
    assert report == {"0": "real", "2": "real"}
    assert isinstance(real[0], RealWeightOnlyLinear)
    y_real = real(x)
    err = ((y_real - y_fake).norm() / y_fake.norm()).item()
    assert err < 1e-3, err  # fp16 storage of scale and scale*zero
    assert real(x[:1]).shape == (1, 32)  # GEMV path too


def test_w8a8_real_close_to_fake():
    spec = QuantSpec(weights=WeightSpec(bits=8, granularity="channel", sym=True),
                     activations=ActSpec(bits=8, granularity="token"))
    fake = _swap(_model(1), spec).half()
    real = _swap(_model(1), spec).half()
    report = to_real(real)
    assert report["0"] == "real" and isinstance(real[0], RealW8A8Linear)
    x = torch.randn(4, 64).half()
    y_fake, y_real = fake(x).float(), real(x).float()
    assert ((y_real - y_fake).norm() / y_fake.norm()).item() < 2e-2  # activation rounding differs


def test_ineligible_layers_stay_fake_with_reason():
    spec = QuantSpec(weights=WeightSpec(bits=4, granularity="group", group_size=16, sym=False))
    model = _swap(_model(2), spec)
    report = to_real(model)
    assert report["0"].startswith("fake: group_size=16")
    assert type(model[0]).__name__ == "QuantLinear"
    spec5 = QuantSpec(weights=WeightSpec(bits=5, granularity="group", group_size=32))
    report5 = to_real(_swap(_model(3), spec5))
    assert report5["0"].startswith("fake: bits=5")


def test_real_forward_equals_custom_op():
    """The torch.ops.bitsweep ops (what torch.compile sees) give the eager forward's numbers exactly."""
    import bitsweep.kernels.ops  # noqa: F401  (registers torch.ops.bitsweep.*)
    spec = QuantSpec(weights=WeightSpec(bits=4, granularity="group", group_size=32, sym=False))
    real = _swap(_model(4), spec)
    to_real(real)
    m = real[0]
    x = torch.randn(2, 3, 64)
    y = m(x)
    y_op = torch.ops.bitsweep.weight_only_linear(x, m.qweight, m.scale, m.szero, m.bias, m.bits,
                                                 m.group_size, m.in_features, m.out_features, m.sym)
    assert y.shape == (2, 3, 96) and torch.equal(y, y_op)
    spec8 = QuantSpec(weights=WeightSpec(bits=8, granularity="channel", sym=True),
                      activations=ActSpec(bits=8, granularity="token"))
    real8 = _swap(_model(5), spec8).half()
    to_real(real8)
    w8 = real8[0]
    xh = torch.randn(3, 64).half()
    assert torch.equal(w8(xh), torch.ops.bitsweep.w8a8_linear(xh, w8.wq, w8.w_scale, w8.bias))
