"""Less flicker in stylized video without retraining: instance-norm statistics shared across frames, and
blending with the previous stylized frame where the input did not change.

A feed-forward style network flickers because every frame is stylized alone. Each instance
normalisation layer takes fresh per-frame statistics, so a small change in the picture (noise, an
object entering) shifts the tone and the strokes of the whole frame. The modes (``video.stabilize=``):

* ``none``: every frame alone, as for photos.
* ``ema``: each norm layer uses an exponential moving average over frames of its per-frame mean and
  variance (``video.momentum`` of the previous average). Follows slow changes, such as a pan that
  reveals a new part of a scene, and settles ~1/(1-momentum) frames after a cut.
* ``clip``: each norm layer uses one set of statistics for the whole clip, gathered in a first pass
  over ``video.clip_frames`` frames spread over the clip, stylized together as if they were one
  image (the same idea as the tiling code's whole-image statistics). The most stable, but a clip
  of several scenes gets statistics that fit none of them exactly.
* ``blend`` (alone, or ``ema+blend`` / ``clip+blend``): after the network, each pixel is mixed with
  the previous output frame in proportion to how unchanged the input is there (``video.blend`` at
  most), which calms sensor noise in still parts of the picture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from fast_style.errors import UserError
from fast_style.tiling import NormStats, normalize

STAT_MODES = ("none", "ema", "clip")
MODES = (*STAT_MODES, "blend", "ema+blend", "clip+blend")


def parse_mode(mode: str) -> tuple[str, bool]:
    """``video.stabilize`` → (statistics mode, blend or not)."""
    if mode not in MODES:
        raise UserError(f"video.stabilize must be one of {', '.join(MODES)}; got {mode!r}")
    stats, _, blend = mode.partition("+")
    return ("none", True) if stats == "blend" else (stats, blend == "blend")


@contextmanager
def norm_statistics(net: nn.Module, adjust: NormStats) -> Iterator[None]:
    """Within the block, every InstanceNorm2d of ``net`` normalises with ``adjust``'s statistics instead of
    each image's own. (The layers' ``forward`` is replaced on the instances and restored afterwards.)"""
    layers = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]

    def forward_for(layer: nn.InstanceNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            var, mean = torch.var_mean(x.float(), dim=(2, 3), correction=0)
            mean, var = adjust(layer, mean, var)
            return normalize(layer, x, mean, var)

        return forward

    for layer in layers:
        layer.forward = forward_for(layer)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


class MovingAverage:
    """``ema``: per layer, average = momentum · average + (1 - momentum) · this frame's, frame after frame
    (within a batch too, in order), starting from the first frame's own statistics."""

    def __init__(self, momentum: float) -> None:
        if not 0 <= momentum < 1:
            raise UserError(f"video.momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.state: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, layer: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Average E[x] and E[x²] (not the variances), so the result is the variance of the blended frames.
        moments = torch.stack([mean, var + mean.pow(2)])  # (2, N, C)
        out = torch.empty_like(moments)
        previous = self.state.get(layer)
        for i in range(moments.shape[1]):
            previous = moments[:, i] if previous is None else torch.lerp(moments[:, i], previous, self.momentum)
            out[:, i] = previous
        self.state[layer] = previous  # type: ignore[assignment]
        return out[0], (out[1] - out[0].pow(2)).clamp_min(0)


class ClipStatistics:
    """``clip``: fixed statistics per layer. :meth:`gather` runs the network once on a batch of frames
    with each layer pooling its statistics over the whole batch; afterwards every frame uses those."""

    def __init__(self) -> None:
        self.stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.gathering = False

    def __call__(self, layer: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gathering:
            pooled_mean = mean.mean(0)
            pooled_var = (var + mean.pow(2)).mean(0) - pooled_mean.pow(2)
            self.stats[layer] = (pooled_mean, pooled_var.clamp_min(0))
        if layer not in self.stats:
            raise RuntimeError("ClipStatistics used before gather()")
        pooled_mean, pooled_var = self.stats[layer]
        return pooled_mean.expand_as(mean), pooled_var.expand_as(var)

    def gather(self, run: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor) -> None:
        """``run`` (the stylizer, with this object as its statistics) over the sampled ``frames``."""
        self.gathering = True
        try:
            run(frames)
        finally:
            self.gathering = False


def unchanged(current: torch.Tensor, previous: torch.Tensor, threshold: float) -> torch.Tensor:
    """(1, 1, H, W) in [0, 1]: 1 where the inputs agree, falling to 0 at a mean colour difference of
    ``threshold`` after a 5×5 blur (so sensor noise counts as unchanged and real motion does not)."""
    difference = F.avg_pool2d((current - previous).abs().mean(1, keepdim=True), 5, 1, 2, count_include_pad=False)
    return (1 - difference / threshold).clamp(0, 1)


class Blender:
    """``blend``: output = lerp(stylized, previous output, strength · unchanged(input, previous input))."""

    def __init__(self, strength: float, threshold: float = 0.04) -> None:
        if not 0 <= strength < 1:
            raise UserError(f"video.blend must be in [0, 1), got {strength}")
        self.strength, self.threshold = strength, threshold
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, output) of the last frame

    def __call__(self, frames: torch.Tensor, stylized: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) inputs and their stylizations, in order → blended stylizations."""
        out = stylized.clone()
        for i in range(len(frames)):
            if self.previous is not None:
                before, before_out = self.previous
                weight = self.strength * unchanged(frames[i : i + 1], before, self.threshold)
                out[i : i + 1] = torch.lerp(out[i : i + 1], before_out, weight)
            self.previous = (frames[i : i + 1], out[i : i + 1])
        return out
