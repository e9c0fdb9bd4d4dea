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
* ``motion`` (alone, or ``ema+motion`` / ``clip+motion``): ``blend`` after moving the previous frames by
  the camera's motion, an affine map (pan, zoom, rotation, shear) estimated between consecutive input
  frames. Pixels that the camera motion does not explain (moving objects, newly revealed borders) keep
  their fresh stylization, as in ``blend``.
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
BLEND_MODES = ("blend", "motion")
MODES = (*STAT_MODES, *BLEND_MODES, *(f"{s}+{b}" for s in STAT_MODES[1:] for b in BLEND_MODES))


def parse_mode(mode: str) -> tuple[str, str | None]:
    """``video.stabilize`` → (statistics mode, ``blend``, ``motion`` or None)."""
    if mode not in MODES:
        raise UserError(f"video.stabilize must be one of {', '.join(MODES)}; got {mode!r}")
    if mode in BLEND_MODES:
        return "none", mode
    stats, _, blend = mode.partition("+")
    return stats, blend or None


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


def gray(image: torch.Tensor) -> torch.Tensor:
    return (image * image.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(-3, keepdim=True)


def estimate_motion(current: torch.Tensor, previous: torch.Tensor, levels: int = 3, steps: int = 8) -> torch.Tensor:
    """The (2, 3) affine map θ from ``current``'s normalised coordinates to ``previous``'s (F.affine_grid's
    convention), such that ``previous`` sampled at θ looks like ``current``: Gauss-Newton on the grey images
    (Lucas-Kanade, coarse to fine from ~40 px wide), with residuals of moving objects down-weighted."""
    theta = torch.eye(2, 3, dtype=torch.float64)
    target, source = gray(current.double()), gray(previous.double())
    width = target.shape[-1]
    for level in reversed(range(levels)):
        factor = max(1, round(width / (160 / 2**level)))
        small_target, small_source = F.avg_pool2d(target, factor), F.avg_pool2d(source, factor)
        h, w = small_target.shape[-2:]
        ys, xs = torch.meshgrid(
            torch.linspace(-1 + 1 / h, 1 - 1 / h, h, dtype=torch.float64),
            torch.linspace(-1 + 1 / w, 1 - 1 / w, w, dtype=torch.float64),
            indexing="ij",
        )
        for _ in range(steps):
            grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)
            warped = F.grid_sample(small_source, grid, align_corners=False, padding_mode="border")[0, 0]
            inside = (grid[0].abs() < 1).all(-1)
            # Derivatives with respect to normalised coordinates (a pixel is 2 / w wide).
            gy, gx = torch.gradient(warped)
            gx, gy = gx * (w / 2), gy * (h / 2)
            residual = (warped - small_target[0, 0])[inside]
            weight = 1 / (residual.abs() / 0.02).clamp_min(1)  # Huber: outliers (moving objects) count less
            x, y, gx, gy = xs[inside], ys[inside], gx[inside], gy[inside]
            jacobian = torch.stack([gx * x, gx * y, gx, gy * x, gy * y, gy], 1)
            hessian = jacobian.T @ (jacobian * weight[:, None]) + 1e-6 * torch.eye(6, dtype=torch.float64)
            delta = torch.linalg.solve(hessian, -(jacobian * weight[:, None]).T @ residual)
            theta = theta + delta.reshape(2, 3)
            if delta.abs().max() < 1e-5:
                break
    return theta.float()


def move(image: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) ``image`` sampled at ``theta`` ((2, 3), or (N, 2, 3): one map per image; bicubic, so repeated
    moves blur little), and an (N, 1, H, W) mask of the pixels that came from inside it."""
    theta = theta if theta.dim() == 3 else theta.expand(len(image), 2, 3)
    grid = F.affine_grid(theta.to(image), [len(image), 1, *image.shape[-2:]], align_corners=False)
    moved = F.grid_sample(image, grid, mode="bicubic", align_corners=False, padding_mode="border")
    return moved, (grid.abs() <= 1).all(-1)[:, None].to(image)


class Blender:
    """``blend``: output = lerp(stylized, previous output, strength · unchanged(input, previous input)).
    ``motion``: the same with the previous input and output first moved by the camera motion."""

    def __init__(self, strength: float, threshold: float = 0.04, motion: bool = False) -> None:
        if not 0 <= strength < 1:
            raise UserError(f"video.blend must be in [0, 1), got {strength}")
        self.strength, self.threshold, self.motion = strength, threshold, motion
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, output) of the last frame

    def __call__(self, frames: torch.Tensor, stylized: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) inputs and their stylizations, in order → blended stylizations."""
        out = stylized.clone()
        for i in range(len(frames)):
            current = frames[i : i + 1]
            if self.previous is not None:
                before, before_out = self.previous
                weight = self.strength
                if self.motion:
                    theta = estimate_motion(current, before)
                    before, inside = move(before, theta)
                    before_out = move(before_out, theta)[0]
                    weight = weight * inside
                weight = weight * unchanged(current, before, self.threshold)
                out[i : i + 1] = torch.lerp(out[i : i + 1], before_out, weight)
            self.previous = (current, out[i : i + 1])
        return out
