"""The temporal training term (``loss.temporal_weight``): stylize(move(x)) should equal move(stylize(x)).

A network that answers a small camera motion of its input with the same motion of its output, and ignores
sensor noise, does not flicker in video. Each training crop gets a random small camera motion (shift, zoom,
rotation) and fresh noise, so no video or optical flow is needed (the idea of Gupta et al. 2017 and ReCoNet,
Gao et al. 2018, with synthetic motion). The term is the mean squared difference, on [0, 1] pixels, over the
pixels the moved crop still shows; validation logs it for every run, so runs can be compared for flicker.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fast_style.stabilize import move

SHIFT = 0.02  # at most 2% of the crop's side (2.6 px at 128 px)
ZOOM = 0.02  # at most ±2%
ROTATION = math.radians(1.0)  # at most ±1°
NOISE = 3 / 255  # σ of the sensor noise added to the moved crop


def random_camera(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 2, 3) affine maps (``F.affine_grid``'s convention, coordinates in [-1, 1]) of small random motions."""
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    scale, angle = 1 + ZOOM * u[:, 0], ROTATION * u[:, 1]
    cos, sin = scale * angle.cos(), scale * angle.sin()
    shift = 2 * SHIFT * u[:, 2:]  # the [-1, 1] grid spans 2
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def temporal_error(
    net: Callable[[torch.Tensor], torch.Tensor],
    content: torch.Tensor,
    output: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """How far ``net`` is from following a camera motion: mean squared difference between net(moved ``content``
    + noise) and the moved ``output`` (= net(``content``)), over the pixels both show."""
    theta = random_camera(len(content), generator).to(content.device)
    moved, inside = move(content.float(), theta)
    noise = torch.randn(moved.shape, generator=generator).to(moved) * NOISE
    expected, _ = move(output.float(), theta)
    actual = net((moved + noise).clamp(0, 1).to(content.dtype))
    squared = (actual.float() - expected).pow(2) * inside
    return squared.sum() / (inside.sum() * squared.shape[1]).clamp_min(1)
