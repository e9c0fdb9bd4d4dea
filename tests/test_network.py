"""The transformation network: sizes, options, gradients."""

import pytest
import torch

from fast_style.network import TransformerNet, WSConv2d


@pytest.mark.parametrize(("h", "w"), [(64, 64), (128, 96), (256, 132), (36, 20)])
def test_sizes_that_are_multiples_of_four_are_kept_exactly(h, w):
    out = TransformerNet()(torch.rand(2, 3, h, w))
    assert out.shape == (2, 3, h, w)


@pytest.mark.parametrize(("h", "w"), [(65, 63), (517 // 4, 383 // 4), (9, 13)])
def test_any_other_size_is_kept_too(h, w):
    assert TransformerNet()(torch.rand(1, 3, h, w)).shape == (1, 3, h, w)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 2), (2, 7), (4, 4), (5, 9), (7, 300)])
def test_thumbnails_smaller_than_the_first_convolutions_reach_work_too(h, w):
    """Reflection padding needs a larger side: a 1x1 or 3x2 image once stopped a folder run with a traceback."""
    out = TransformerNet(width=0.25)(torch.rand(1, 3, h, w))
    assert out.shape == (1, 3, h, w) and out.isfinite().all()


@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("upsample", ["transposed", "nearest"])
def test_options_build_working_networks_with_outputs_in_image_range(norm, upsample):
    net = TransformerNet(norm=norm, upsample=upsample)
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1


def test_instance_norm_is_the_default_and_nearest_upsampling_has_no_transposed_convs():
    default = TransformerNet()
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in default.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in default.modules())
    nearest = TransformerNet(upsample="nearest")
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in nearest.modules())


def test_weight_trunk_norm_keeps_instance_norm_only_in_the_encoder():
    net = TransformerNet(upsample="nearest", trunk_norm="weight")
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules()) == 3
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in [*net.residuals.modules(), *net.decoder.modules()])
    assert sum(isinstance(m, WSConv2d) for m in net.modules()) == 2 * 5 + 2  # residual blocks + upsampling convs
    h = torch.randn(1, 128, 8, 8)
    assert torch.equal(net.residuals(h), h)  # every block starts as the identity


def test_a_weight_standardised_convolution_ignores_the_scale_and_mean_of_its_weights():
    torch.manual_seed(0)
    conv = WSConv2d(8, 4, 3)
    x = torch.randn(2, 8, 16, 16)
    before = conv(x)
    with torch.no_grad():
        conv.weight.mul_(10).add_(3)
    assert torch.allclose(conv(x), before, rtol=1e-3, atol=1e-3)  # up to the epsilon that guards a zero weight
    assert 0.5 < before.std() < 3  # a unit-variance input stays near unit scale (He gain for the ReLU)


@pytest.mark.parametrize(("trunk_norm", "spreads"), [(None, True), ("weight", False)])
def test_a_local_spike_reaches_the_whole_image_only_through_instance_norm_statistics(trunk_norm, spreads):
    """The blob artifact: under instance norm a spike in one corner rescales every pixel of the image (so training
    can use it as a global volume knob); with weight-standardised layers it stays inside its receptive field."""
    torch.manual_seed(0)
    net = TransformerNet(upsample="nearest", trunk_norm=trunk_norm).eval()
    for block in net.residuals:
        if block.scale is not None:
            block.scale.data.fill_(1.0)  # as after training: the blocks do something
    h = torch.rand(1, 128, 64, 64)
    spiked = h.clone()
    spiked[..., :2, :2] += 50
    with torch.no_grad():
        a, b = (net.decoder(net.residuals(f)) for f in (h, spiked))
    far = (a - b)[..., 160:, 160:].abs().max()  # >100 px from the spike, beyond the receptive field
    assert (far > 1e-3) if spreads else (far == 0)


def test_linear_output_is_unclamped_in_training_and_in_image_range_otherwise():
    torch.manual_seed(0)
    net = TransformerNet(output="linear")
    with torch.no_grad():
        net.decoder[-1][-1].bias.fill_(3.0)  # a last layer pushing every pixel far above white
    x = torch.rand(1, 3, 32, 32)
    raw = net.train()(x)
    assert raw.min() > 1  # training sees the values themselves: no flat, gradient-free region
    assert torch.equal(net.eval()(x), raw.clamp(0, 1))
    tanh = TransformerNet(output="tanh")
    tanh.load_state_dict(net.state_dict())
    assert tanh.train()(x).max() <= 1  # while tanh saturates


def test_half_width_is_a_light_model():
    full = sum(p.numel() for p in TransformerNet().parameters())
    light = sum(p.numel() for p in TransformerNet(width=0.5).parameters())
    assert 0.2 < light / full < 0.3  # channel counts halve, so parameters shrink about 4x


def test_gradients_reach_every_parameter():
    net = TransformerNet()
    net(torch.rand(2, 3, 32, 32)).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize(
    "bad", [{"norm": "layer"}, {"trunk_norm": "group"}, {"upsample": "bilinear"}, {"width": 0}, {"output": "relu"}]
)
def test_bad_options_are_rejected_with_the_key_name(bad):
    with pytest.raises(ValueError, match="model\\."):
        TransformerNet(**bad)


def test_weight_standardised_upsampling_needs_nearest_upsampling():
    with pytest.raises(ValueError, match="model.upsample=nearest"):
        TransformerNet(upsample="transposed", trunk_norm="weight")


def test_config_round_trips_the_architecture():
    net = TransformerNet(norm="batch", upsample="nearest", width=0.5, trunk_norm="weight", output="linear")
    twin = TransformerNet(**net.config())
    twin.load_state_dict(net.state_dict())  # same architecture: every key and shape matches
