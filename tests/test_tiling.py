"""Tiled stylizing: bounded memory for any size, and the same picture as one untiled pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style import inference
from fast_style.errors import UserError
from fast_style.images import to_tensor
from fast_style.inference import Stylizer, pick_tile
from fast_style.network import TransformerNet
from fast_style.tiling import stylize_tiled

from .conftest import SAMPLES

TILE = 128
# Tiled against untiled, in [0, 1] units: float rounding only (4x the largest difference measured, 2.3e-6).
ROUNDING = 1e-5


def photo(size: tuple[int, int] = (397, 301)) -> torch.Tensor:
    """A real photo at an odd size, so tiles do not divide it evenly."""
    return to_tensor(Image.open(sorted(SAMPLES.glob("*.jpg"))[1]).convert("RGB").resize(size))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"upsample": "nearest"},
        {"norm": "batch"},
        {"trunk_norm": "weight", "upsample": "nearest"},
        {"output": "linear"},
    ],
    ids=["instance-norm", "nearest-upsampling", "batch-norm", "weight-standardised-trunk", "linear-output"],
)
@torch.inference_mode()
def test_tiled_output_matches_the_untiled_pass_with_no_seam(options):
    """Equal up to float rounding everywhere, tile borders included: measured at most 2.3e-6 (0.0006/255) over these
    networks in fp32. A halo too narrow for the receptive field, or statistics gathered wrong, shows as 1e-4 or more
    along the seams; naive tiling (below) as several levels of 255."""
    # Random weights are the hardest case: nothing smooths over a per-tile difference in statistics.
    torch.manual_seed(0)
    net = TransformerNet(width=0.5, **options).eval()
    image = photo()
    whole, tiled = net(image), stylize_tiled(net, image, TILE)
    if "norm" not in options:  # (untrained batch norm has unit running statistics and a flat output)
        assert whole.std() > 0.02  # a picture with structure, not a flat colour
    torch.testing.assert_close(tiled, whole, rtol=0, atol=ROUNDING)


def test_per_tile_statistics_would_have_shown_this_is_not_trivial():
    """Normalising each tile by its own statistics (naive tiling) differs visibly from the untiled pass."""
    torch.manual_seed(0)
    net = TransformerNet(width=0.5).eval()
    image = photo()
    with torch.inference_mode():
        whole = net(image)
        left, right = net(image[..., :, :200]), net(image[..., :, 200:])
    naive = torch.cat([left, right], -1)
    assert ((naive - whole).abs() * 255).mean() > 3


def test_stylizer_tiles_images_larger_than_the_tile_and_keeps_their_size(monkeypatch):
    torch.manual_seed(0)
    net = TransformerNet(width=0.25)
    calls = []
    monkeypatch.setattr(inference, "stylize_tiled", lambda *args: calls.append(args) or stylize_tiled(*args))
    whole, tiled = (Stylizer(net, {}, "cpu", "fp32", tile=tile, backend="torch") for tile in (None, TILE))
    image = photo()
    torch.testing.assert_close(tiled.stylize_tensor(image), whole.stylize_tensor(image), rtol=0, atol=ROUNDING)
    assert len(calls) == 1  # the tiled Stylizer did tile, the other did not
    picture = Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    assert tiled(picture).size == picture.size == (397, 301)


def test_auto_tiles_only_what_does_not_fit_in_memory():
    per_pixel, budget = 600, 1 << 30
    assert pick_tile("auto", 1024, 1024, per_pixel, budget) is None  # 0.6 GB: fits
    tile = pick_tile("auto", 2160, 3840, per_pixel, budget)  # 5 GB: does not
    assert tile is not None and 256 <= tile < 2160 and tile % 64 == 0
    assert pick_tile("auto", 2160, 3840, per_pixel, budget // 4) <= tile  # less memory, smaller tiles
    assert pick_tile(512, 400, 500, per_pixel, 0) is None  # smaller than the tile: one pass
    assert pick_tile(512, 400, 700, per_pixel, 0) == 512
    assert pick_tile(None, 5000, 5000, per_pixel, 0) is None


@pytest.mark.parametrize("tile", [32, "big", -1, 1.5])
def test_a_bad_tile_value_is_a_clear_error(tile):
    with pytest.raises(UserError, match="tile must be auto, null, or a size"):
        Stylizer(TransformerNet(width=0.25), {}, "cpu", "fp32", tile=tile)
