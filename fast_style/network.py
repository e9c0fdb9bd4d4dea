"""The image transformation network of Johnson et al. (2016), with the usual improvements as options.

Images go in and come out as RGB in [0, 1]. The network pads any input to a multiple of 4 (the
total downsampling factor) with reflection and crops the result back, so every input size keeps
its size exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fast_style.errors import UserError

Norm = Literal["instance", "batch", "weight"]
Upsample = Literal["transposed", "nearest"]
Output = Literal["tanh", "linear"]
NORMS = ("instance", "batch", "weight")
UPSAMPLES = ("transposed", "nearest")
OUTPUTS = ("tanh", "linear")


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "weight":  # the convolution normalises its own weights (WSConv2d): nothing to add after it
        return nn.Identity()
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.BatchNorm2d(channels)


class FP32Conv2d(nn.Conv2d):
    """A convolution that runs in fp32 even under autocast: the output layer. In bf16 its result (8 bits of
    mantissa) bands smooth skies after tanh and the conversion to 8-bit pixels; it is about 5% of the compute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript (and what is exported from it) runs in fp32 anyway
            return self._conv_forward(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast(x.device.type, enabled=False):
            return self._conv_forward(x.float(), self.weight.float(), bias)


class WSConv2d(nn.Conv2d):
    """A convolution whose weights are standardised per output channel (zero mean, variance 1/fan-in) and
    scaled by a learned gain: the signal keeps its scale as normalisation layers would keep it, but without
    statistics of the image, so the network gains nothing from planting a spike that skews them — the
    'droplet' artifact of instance normalisation (Karras et al., StyleGAN2, 2020; Qiao et al. 2019)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), 2**0.5))  # He: ReLU halves the variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) * torch.rsqrt(var * w[0].numel() + 1e-4) * self.gain
        return self._conv_forward(x, w, self.bias)


class ConvLayer(nn.Sequential):
    """Reflection-padded convolution followed by normalisation and (optionally) ReLU; with ``fp32`` the
    convolution runs in fp32 under autocast too (:class:`FP32Conv2d`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        norm: Norm | None = "instance",
        relu: bool = True,
        fp32: bool = False,
    ) -> None:
        conv = (FP32Conv2d if fp32 else WSConv2d if norm == "weight" else nn.Conv2d)(cin, cout, kernel, stride)
        layers: list[nn.Module] = [nn.ReflectionPad2d(kernel // 2), conv]
        if norm is not None:
            layers.append(_norm(norm, cout))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with an identity shortcut (no ReLU after the sum, as in Johnson et al.)."""

    def __init__(self, channels: int, norm: Norm) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvLayer(channels, channels, 3, norm=norm),
            ConvLayer(channels, channels, 3, norm=norm, relu=False),
        )
        # Without normalisation layers nothing bounds the sum's growth: each block starts as the identity
        # and learns how much to add (SkipInit, De & Smith 2020).
        self.scale = nn.Parameter(torch.zeros(())) if norm == "weight" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scaled(self.body(x))

    def scaled(self, branch: torch.Tensor) -> torch.Tensor:
        """The body's output as it is added to the input (tiling adds it in place, tile by tile)."""
        return branch if self.scale is None else self.scale * branch


class UpsampleLayer(nn.Sequential):
    """Doubles the resolution: a stride-½ (transposed) convolution, or nearest upsampling + convolution.

    Nearest + convolution avoids the checkerboard patterns that transposed convolutions can leave
    (Odena et al. 2016).
    """

    def __init__(self, cin: int, cout: int, mode: Upsample, norm: Norm | None) -> None:
        if mode == "transposed":
            layers: list[nn.Module] = [
                nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                *([_norm(norm, cout)] if norm else []),
                nn.ReLU(inplace=True),
            ]
        else:
            layers = [nn.Upsample(scale_factor=2, mode="nearest"), ConvLayer(cin, cout, 3, norm=norm)]
        super().__init__(*layers)


class TransformerNet(nn.Module):
    """Feed-forward style network: 3 downsampling convs, 5 residual blocks, 2 upsampling layers, tanh.

    ``norm`` normalises the encoder; ``trunk_norm`` (default: the same) the residual blocks and the upsampling
    layers. ``trunk_norm="weight"`` keeps instance norm where it normalises the photo's contrast and uses
    weight-standardised convolutions after it: with instance norm throughout, our trainings planted bright or
    dark blobs in flat areas (README, "Blobs"). ``width`` scales every channel count (0.5 gives a light model
    with about a quarter of the parameters and compute).
    """

    def __init__(
        self,
        norm: Norm = "instance",
        upsample: Upsample = "transposed",
        width: float = 1.0,
        residual_blocks: int = 5,
        trunk_norm: Norm | None = None,
        output: Output = "tanh",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise UserError(f"model.norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if trunk_norm is not None and trunk_norm not in NORMS:
            raise UserError(f"model.trunk_norm must be null or one of {', '.join(NORMS)}, got {trunk_norm!r}")
        if upsample not in UPSAMPLES:
            raise UserError(f"model.upsample must be one of {', '.join(UPSAMPLES)}, got {upsample!r}")
        if (trunk_norm or norm) == "weight" and upsample != "nearest":
            raise UserError("model.trunk_norm=weight standardises upsampling convolutions: use model.upsample=nearest")
        if output not in OUTPUTS:
            raise UserError(f"model.output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if not 0 < width <= 4:
            raise UserError(f"model.width must be in (0, 4], got {width!r}")
        self.norm, self.upsample, self.width, self.residual_blocks = norm, upsample, float(width), residual_blocks
        self.trunk_norm, self.output = trunk_norm, output
        trunk: Norm = trunk_norm or norm
        c1, c2, c3 = (max(4, round(c * width)) for c in (32, 64, 128))
        self.encoder = nn.Sequential(
            ConvLayer(3, c1, 9, norm=norm),
            ConvLayer(c1, c2, 3, stride=2, norm=norm),
            ConvLayer(c2, c3, 3, stride=2, norm=norm),
        )
        self.residuals = nn.Sequential(*(ResidualBlock(c3, trunk) for _ in range(residual_blocks)))
        self.decoder = nn.Sequential(
            UpsampleLayer(c3, c2, upsample, trunk),
            UpsampleLayer(c2, c1, upsample, trunk),
            ConvLayer(c1, 3, 9, norm=None, relu=False, fp32=True),  # output, tanh and 8-bit pixels in fp32
        )

    def config(self) -> dict[str, object]:
        """The constructor arguments: enough to rebuild this architecture from an exported file."""
        return {
            "norm": self.norm,
            "upsample": self.upsample,
            "width": self.width,
            "residual_blocks": self.residual_blocks,
            "trunk_norm": self.trunk_norm,
            "output": self.output,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch of RGB images in [0, 1] (N, 3, H, W) to stylised images in [0, 1] of the same size."""
        h, w = x.shape[-2:]
        y = self.decoder(self.residuals(self.encoder(pad_to_multiple_of_4(x))))
        return self.finish(y)[..., :h, :w]

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """The last layer's output as an image in [0, 1]: through tanh (the paper), or linearly (y/2 + 1/2),
        clamped only outside training, so that no pixel can saturate where its gradient vanishes."""
        if self.output == "tanh":
            return to_unit_range(y)
        y = y * 0.5 + 0.5
        return y if self.training else y.clamp(0, 1)


def pad_to_multiple_of_4(x: torch.Tensor) -> torch.Tensor:
    """Reflection-pad the bottom and right to the network's total downsampling factor.

    Always pads (by 0 where the side is already a multiple of 4): one graph for every size, which is
    what ONNX export with dynamic height/width (sides of at least 8) needs. Reflection needs pad < side,
    so an image with a side under 8 (a 1×1 or 3×2 thumbnail) is padded by repeating its edge up to 8.
    The amounts use floor division, not ``%``: torch.compile with symbolic sizes (PyTorch 2.14) fails on the
    modulo of a size ("TensorReferenceAnalysis has no attribute python_mod").
    """
    h, w = x.shape[-2:]
    side = 8  # the first 9×9 convolution reflects 4 px (a local: TorchScript cannot read module constants)
    pad_w, pad_h = (w + 3) // 4 * 4 - w, (h + 3) // 4 * 4 - h
    if min(h, w) < side:
        return F.pad(x, (0, max(pad_w, side - w), 0, max(pad_h, side - h)), mode="replicate")
    return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")


def to_unit_range(y: torch.Tensor) -> torch.Tensor:
    """The last layer's output through tanh, mapped to [0, 1]."""
    return (torch.tanh(y) + 1) / 2
