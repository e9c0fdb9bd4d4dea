"""The temporal training term: small random camera motions, and an error that is zero only for a network
that follows them."""

from __future__ import annotations

import math

import pytest
import torch

from fast_style.errors import UserError
from fast_style.loss import PerceptualLoss
from fast_style.stabilize import move
from fast_style.temporal import NOISE, ROTATION, SHIFT, ZOOM, random_camera, temporal_error

from .conftest import photo


def test_random_cameras_are_small_motions_within_the_stated_ranges():
    theta = random_camera(2000, torch.Generator().manual_seed(0))
    linear, shift = theta[:, :, :2], theta[:, :, 2]
    scale = linear.det().sqrt()
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0])
    assert (scale - 1).abs().max() <= ZOOM + 1e-6 and (scale - 1).abs().max() > 0.9 * ZOOM
    assert angle.abs().max() <= ROTATION + 1e-6 and angle.abs().max() > 0.9 * ROTATION
    assert shift.abs().max() <= 2 * SHIFT + 1e-6 and shift.abs().max() > 0.9 * 2 * SHIFT
    assert torch.allclose(linear[:, 0, 1], -linear[:, 1, 0])  # a rotation and a zoom: no shear


def test_a_batch_moves_each_image_by_its_own_map():
    x = photo(size=64).repeat(2, 1, 1, 1)
    theta = torch.tensor([[[1.0, 0, 0], [0, 1, 0]], [[1, 0, 0.5], [0, 1, 0]]])  # identity; a quarter-width shift
    moved, inside = move(x, theta)
    assert torch.allclose(moved[0], x[0], atol=1e-5) and inside[0].all()
    assert torch.allclose(moved[1, :, :, :40], x[1, :, :, 16:56], atol=1e-5)  # content moved 16 px left
    assert inside[1, 0, :, :48].all() and not inside[1, 0, :, 48:].any()


def test_a_network_that_follows_the_motion_errs_only_by_the_noise():
    x = photo(size=96).repeat(4, 1, 1, 1)
    follows = temporal_error(lambda images: images, x, x, torch.Generator().manual_seed(0))
    assert follows == pytest.approx(NOISE**2, rel=0.2)


def test_a_network_that_paints_a_fixed_pattern_errs_far_more():
    """Strokes fixed to the image grid instead of the scene: what flickers when the camera moves."""
    x = photo(size=96).repeat(4, 1, 1, 1)
    rows = torch.arange(96.0)
    pattern = 0.2 * torch.sin(rows[:, None] * 2 * math.pi / 6) * torch.sin(rows[None, :] * 2 * math.pi / 6)

    def painter(images: torch.Tensor) -> torch.Tensor:
        return (images + pattern).clamp(0, 1)

    fixed = temporal_error(painter, x, painter(x), torch.Generator().manual_seed(0))
    assert fixed > 20 * NOISE**2


def test_a_negative_temporal_weight_is_refused():
    with pytest.raises(UserError, match="loss.temporal_weight must be >= 0"):
        PerceptualLoss(temporal_weight=-1)
