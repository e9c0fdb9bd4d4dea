"""Stylizing images larger than memory allows, tile by tile, with the same result as one pass.

Naive tiling shows in two ways. Every tile pads its own borders, so its edge pixels differ from the
untiled pass: each tile therefore reads a ``halo`` of neighbouring pixels, wider than the receptive
field of the tiled part, and only its core is kept. And instance normalisation would normalise each
tile by its own statistics, so a sky tile and a street tile come out in different tones (on a
640×426 photo in 384-px tiles that was a mean error of 13/255). So each normalisation layer gets
the statistics of the whole image: a pass over the tiles up to that layer adds up its input's
per-channel sums, every pixel counted once, before the next layer is tiled.

The full-resolution encoder and decoder are tiled this way, recomputing the layers before each
norm rather than keeping full-resolution features. The residual blocks work at a quarter of the
resolution (16× fewer pixels), where keeping whole feature maps is affordable: there each norm's
input is kept whole and the convolutions run in tiles. The result equals the untiled pass up to
float rounding, so there is no seam to feather. Memory is bounded by the tile size plus three
quarter-resolution feature maps (a 3840×2160 photo: 1.5 GB peak for the whole process, against
about 5 GB untiled).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction

import torch
from torch import nn

from fast_style.network import TransformerNet, pad_to_multiple_of_4

Stats = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]
# (layer, means (N, C), variances (N, C)) → the statistics to normalise with (video stabilization), same shapes.
NormStats = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
HALO = 32  # full-resolution pixels; covers the receptive field of the tiled encoder and decoder


def leaf_layers(module: nn.Module) -> list[nn.Module]:
    """The layers of nested Sequentials, in the order they run."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in leaf_layers(child)]
    return [module]


def normalize(layer: nn.InstanceNorm2d, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Instance norm of (N, C, H, W) ``x`` with given statistics, (C,) or (N, C), and the layer's affine."""
    scale = torch.rsqrt(var + layer.eps) * (layer.weight if layer.affine else 1)
    shift = (layer.bias if layer.affine else 0) - mean * scale
    return torch.addcmul(shift[..., None, None], x.float(), scale[..., None, None]).to(x.dtype)


def set_stats(stats: Stats, layer: nn.Module, mean: torch.Tensor, var: torch.Tensor, adjust: NormStats | None) -> None:
    """Record a layer's whole-image (C,) statistics, first passed through ``adjust`` if given."""
    if adjust is not None:
        mean, var = (s[0] for s in adjust(layer, mean[None], var[None]))
    stats[layer] = (mean, var)


def run_layers(layers: Sequence[nn.Module], x: torch.Tensor, stats: Stats) -> torch.Tensor:
    """Apply ``layers`` (in inference mode), with every instance norm using the whole-image statistics in
    ``stats``."""
    for layer in layers:
        x = normalize(layer, x, *stats[layer]) if isinstance(layer, nn.InstanceNorm2d) else layer(x)
    return x


def map_tiles(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, halo: int, sums_only: bool = False
) -> torch.Tensor:
    """``fn`` over (1, C, H, W) ``x`` in ``tile``-sized cores, each read with a ``halo`` around it.

    Returns the assembled output or, with ``sums_only``, just its per-channel [sum, sum of squares,
    count] over all pixels, without ever holding the whole output. Tile starts are multiples of
    ``tile`` and ``halo`` (both multiples of 4), so strided layers see the same pixel grid as untiled.
    """
    height, width = x.shape[-2:]
    out: torch.Tensor | None = None
    sums = torch.zeros(3, 1, dtype=torch.float64)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            y0, x0 = max(0, top - halo), max(0, left - halo)
            y1, x1 = min(height, top + tile + halo), min(width, left + tile + halo)
            y = fn(x[..., y0:y1, x0:x1])
            scale = Fraction(y.shape[-1], x1 - x0)  # the layers' resolution change: 1/4 … 4

            def at(v: int, scale: Fraction = scale) -> int:  # input coordinate → output coordinate
                return int(v * scale)

            bottom, right = min(top + tile, height), min(left + tile, width)
            core = y[..., at(top - y0) : at(bottom - y0), at(left - x0) : at(right - x0)]
            if sums_only:
                # var_mean per tile needs no full-size temporaries; tiles are combined in float64.
                var, mean = torch.var_mean(core.float(), dim=(0, 2, 3), correction=0)
                count = core[:, 0].numel()
                mean, var = mean.double().cpu(), var.double().cpu()
                sums = sums + torch.stack([mean * count, (var + mean.pow(2)) * count, torch.full_like(mean, count)])
                continue
            if out is None:
                out = y.new_empty(*y.shape[:2], at(height), at(width))
            out[..., at(top) : at(bottom), at(left) : at(right)] = core
    return sums if sums_only else out  # type: ignore[return-value]


def run_tiled(
    layers: Sequence[nn.Module],
    x: torch.Tensor,
    stats: Stats,
    tile: int,
    halo: int,
    finish: Callable[[torch.Tensor], torch.Tensor] = lambda y: y,
    adjust: NormStats | None = None,
) -> torch.Tensor:
    """``layers`` (then ``finish``) over ``x`` tile by tile, first gathering whole-image statistics for each
    instance norm."""
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.InstanceNorm2d):
            total, squares, count = map_tiles(lambda t, i=i: run_layers(layers[:i], t, stats), x, tile, halo, True)
            mean = total / count
            var = (squares / count - mean.pow(2)).clamp_min(0)
            set_stats(stats, layer, mean.float().to(x.device), var.float().to(x.device), adjust)
    return map_tiles(lambda t: finish(run_layers(layers, t, stats)), x, tile, halo)


def run_materialized(
    layers: Sequence[nn.Module], x: torch.Tensor, stats: Stats, tile: int, halo: int, adjust: NormStats | None = None
) -> torch.Tensor:
    """``layers`` over ``x``, keeping the whole input of every instance norm (no recomputation, two whole
    tensors at a time) and running the layers between them in tiles (bounded convolution workspace)."""
    cuts = [i for i, layer in enumerate(layers) if isinstance(layer, nn.InstanceNorm2d)]
    for start, end in zip([0, *cuts], [*cuts, len(layers)]):
        if start in cuts:
            var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
            set_stats(stats, layers[start], mean, var, adjust)
        x = map_tiles(lambda t, start=start, end=end: run_layers(layers[start:end], t, stats), x, tile, halo)
    return x


def stylize_tiled(
    net: TransformerNet, images: torch.Tensor, tile: int, adjust: NormStats | None = None
) -> torch.Tensor:
    """The network's forward pass on (1, 3, H, W) ``images`` with full-resolution parts in ``tile``-px tiles;
    ``adjust`` replaces each norm's whole-image statistics (see fast_style.stabilize)."""
    tile = max(64, tile - tile % 4)
    stats: Stats = {}
    height, width = images.shape[-2:]
    features = run_tiled(leaf_layers(net.encoder), pad_to_multiple_of_4(images), stats, tile, HALO, adjust=adjust)
    for block in net.residuals:  # ResidualBlock.forward, with the sum in place (one tensor less at a time)
        branch = run_materialized(leaf_layers(block.body), features, stats, tile // 4, HALO // 4, adjust)
        features += block.scaled(branch)
    out = run_tiled(leaf_layers(net.decoder), features, stats, tile // 4, HALO // 4, net.finish, adjust)
    return out[..., :height, :width]
