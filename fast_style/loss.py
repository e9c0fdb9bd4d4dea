"""Perceptual loss (Gatys et al. 2015; Johnson et al. 2016): content + Gram-matrix style + total variation.

Normalisation, so that weights mean the same thing at every image size:

* Gram matrix of features F (C × H·W): G = F Fᵀ / (C·H·W);
* style loss of a layer: ‖G(output) − G(style)‖² / ‖G(style)‖² (squared Frobenius norms, averaged
  over the batch), times the layer's weight; the style loss is the sum over layers;
* content loss: ‖F(output) − F(content)‖² / ‖F(content)‖² at the content layer(s);
* total variation: mean squared difference of neighbouring pixels (horizontal + vertical), on [0, 1] images.

Content and style terms are relative errors (1.0 = an error as large as the target itself), so they
do not depend on the feature scale of a layer or of a network: every style layer counts by its weight,
and the same loss weights work with the caffe (0-255 input) and torchvision (0-1 input) VGGs. Other
implementations normalise differently, so their weights do not carry over to ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fast_style.errors import UserError
from fast_style.vgg import VGGFeatures, layer_names

# Content layer(s), style layers. On VGG19 the johnson preset takes the last ReLU of blocks 3 and 4.
PRESETS: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "johnson": {
        "vgg16": (["relu2_2"], ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]),
        "vgg19": (["relu2_2"], ["relu1_2", "relu2_2", "relu3_4", "relu4_4"]),
    },
    "gatys": {
        net: (["relu4_2"], ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]) for net in ("vgg16", "vgg19")
    },
}


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, C, C), normalised by C·H·W; computed in fp32 even under autocast."""
    n, c, h, w = features.shape
    f = features.float().reshape(n, c, h * w)
    with torch.autocast(device_type=f.device.type, enabled=False):
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def relative_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖x − target‖² / ‖target‖², averaged over the batch (dimension 0)."""
    return F.mse_loss(x, target) / target.pow(2).mean().clamp_min(1e-12)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertically and horizontally neighbouring pixels."""
    dy = images[..., 1:, :] - images[..., :-1, :]
    dx = images[..., :, 1:] - images[..., :, :-1]
    return dy.float().pow(2).mean() + dx.float().pow(2).mean()


class PerceptualLoss(nn.Module):
    """Weighted content + style + TV loss against style targets set once with :meth:`set_style`."""

    def __init__(
        self,
        network: str = "vgg19",
        weights: str | None = None,
        preset: str = "johnson",
        content_layers: Sequence[str] | None = None,
        style_layers: Sequence[str] | None = None,
        style_layer_weights: Sequence[float] | None = None,
        content_weight: float = 1.0,
        style_weight: float = 1.0,
        tv_weight: float = 0.0,
        pooling: str = "max",
        temporal_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise UserError(f"loss.preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        if network not in PRESETS[preset]:
            raise UserError(f"loss.network must be vgg16 or vgg19, got {network!r}")
        preset_content, preset_style = PRESETS[preset][network]
        self.content_layers = list(content_layers or preset_content)
        self.style_layers = list(style_layers or preset_style)
        layer_weights = list(style_layer_weights or [1.0] * len(self.style_layers))
        if len(layer_weights) != len(self.style_layers):
            raise UserError(
                f"loss.style_layer_weights has {len(layer_weights)} values for {len(self.style_layers)} style layers"
            )
        self.style_layer_weights = dict(zip(self.style_layers, map(float, layer_weights)))
        for name, value in (
            ("content_weight", content_weight),
            ("style_weight", style_weight),
            ("tv_weight", tv_weight),
            ("temporal_weight", temporal_weight),
        ):
            if value < 0:
                raise UserError(f"loss.{name} must be >= 0, got {value}")
        self.content_weight, self.style_weight, self.tv_weight = (
            float(content_weight),
            float(style_weight),
            float(tv_weight),
        )
        # Needs the network, so the training step adds it (fast_style.temporal); kept here with the other weights.
        self.temporal_weight = float(temporal_weight)

        order = layer_names(network)
        unknown = [name for name in self.content_layers + self.style_layers if name not in order]
        if unknown:
            raise UserError(f"{network} has no layer(s) {unknown}; layers are named like relu4_2 (block 4, ReLU 2)")
        deepest = max(self.content_layers + self.style_layers, key=order.index)
        self.vgg = VGGFeatures(network, weights, last_layer=deepest, pooling=pooling)  # type: ignore[arg-type]

    @torch.no_grad()
    def set_style(self, images: Sequence[torch.Tensor], blend: Sequence[float] | None = None) -> None:
        """Precompute the style targets: Gram matrices of one or more style images (1, 3, H, W) in [0, 1].

        Several images are mixed by blending their Gram matrices with ``blend`` weights (normalised to sum 1).
        """
        blend = list(blend or [1.0] * len(images))
        if len(blend) != len(images) or any(b < 0 for b in blend) or sum(blend) <= 0:
            raise UserError(f"style.blend needs one non-negative weight per style image, got {blend} for {len(images)}")
        total = sum(blend)
        targets = {layer: 0.0 for layer in self.style_layers}
        for image, weight in zip(images, blend):
            features = self.vgg(image.to(self.vgg.mean.device), self.style_layers)
            for layer in self.style_layers:
                targets[layer] = targets[layer] + gram_matrix(features[layer]) * (weight / total)
        for layer, gram in targets.items():
            self.register_buffer(f"target_gram_{layer}", gram, persistent=False)

    @torch.no_grad()
    def content_targets(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """Content-layer features of the input photos: no graph, VGG run only up to the content layer."""
        return self.vgg(content, self.content_layers)

    def forward(
        self, output: torch.Tensor, content: torch.Tensor, content_features: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """All loss terms for stylised ``output`` of ``content`` photos: 'loss' (weighted total),
        'content', 'style', 'tv' (unweighted), and 'style/<layer>' (unweighted, per layer).

        ``content_features``: :meth:`content_targets` of ``content``, for callers that compare many
        outputs with one photo (optimization-based stylization) and so compute them once.
        """
        if not hasattr(self, f"target_gram_{self.style_layers[0]}"):
            raise RuntimeError("call set_style() before computing the loss")
        targets = self.content_targets(content) if content_features is None else content_features
        features = self.vgg(output, self.content_layers + self.style_layers)
        terms: dict[str, torch.Tensor] = {}
        terms["content"] = sum(
            relative_error(features[layer].float(), targets[layer].float()) for layer in self.content_layers
        )  # type: ignore[assignment]
        style = output.new_zeros((), dtype=torch.float32)
        for layer in self.style_layers:
            gram = gram_matrix(features[layer])
            target = getattr(self, f"target_gram_{layer}").expand_as(gram)
            terms[f"style/{layer}"] = relative_error(gram, target)
            style = style + self.style_layer_weights[layer] * terms[f"style/{layer}"]
        terms["style"] = style
        terms["tv"] = total_variation(output)
        terms["loss"] = (
            self.content_weight * terms["content"] + self.style_weight * terms["style"] + self.tv_weight * terms["tv"]
        )
        return terms
