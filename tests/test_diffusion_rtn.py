"""The registry is not LLM-only: RTN quantizes a tiny diffusers UNet (weights only)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from bitsweep.methods import QuantSpec, build_method  # noqa: E402
from bitsweep.methods.core.qmodules import QuantConv2d, QuantLinear, effective_bits  # noqa: E402


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8).eval()


@torch.no_grad()
def test_rtn_quantizes_unet_linears_and_convs():
    unet = tiny_unet()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 32)
    ref = unet(x, t, encoder_hidden_states=ctx).sample
    n_lin = sum(isinstance(m, torch.nn.Linear) for m in unet.modules())
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in unet.modules())
    spec = QuantSpec.from_dict({"weights": {"bits": 8, "granularity": "channel"}, "skip": []})
    build_method({"name": "rtn"}, spec).convert(unet)
    assert sum(isinstance(m, QuantLinear) for m in unet.modules()) == n_lin
    assert sum(isinstance(m, QuantConv2d) for m in unet.modules()) == n_conv
    out8 = unet(x, t, encoder_hidden_states=ctx).sample
    rel8 = ((out8 - ref).norm() / ref.norm()).item()
    assert rel8 < 0.05  # 8-bit per-channel is close to 16-bit
    assert effective_bits(unet) > 8.0

    unet4 = tiny_unet()
    build_method({"name": "rtn"}, QuantSpec.from_dict(
        {"weights": {"bits": 2, "granularity": "channel"}, "skip": []})).convert(unet4)
    out2 = unet4(x, t, encoder_hidden_states=ctx).sample
    assert ((out2 - ref).norm() / ref.norm()).item() > rel8  # fewer bits, larger error
