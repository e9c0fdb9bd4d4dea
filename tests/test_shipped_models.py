"""What ships in the box: every model in checkpoints/ is complete, records its training, and stylizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fast_style.images import to_tensor
from fast_style.inference import Stylizer
from fast_style.model_file import read_metadata

from .conftest import ROOT, SAMPLES

SHIPPED = sorted((ROOT / "checkpoints").glob("*.safetensors"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_bundled_models_and_data_stay_small():
    assert folder_bytes(ROOT / "checkpoints") + folder_bytes(ROOT / "data") <= 30 * 2**20


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_shipped_model_records_its_training(path):
    meta = read_metadata(path)
    assert meta["style"]["name"] == path.stem
    assert meta["steps"] > 0 and meta["train_seconds"] > 0 and meta["hardware"]
    assert {"train/content", "train/style", "train/tv"} <= set(meta["losses"])
    assert meta["config"] and meta["data"] and meta["date"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_shipped_model_changes_a_photo_substantially_and_stays_in_range(path):
    photo = Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB")
    photo.thumbnail((256, 256))
    out = Stylizer.load(path, device="cpu", precision="fp32", backend="torch").stylize_tensor(to_tensor(photo))
    assert out.isfinite().all() and out.min() >= 0 and out.max() <= 1
    assert out.std() > 0.05  # not a flat image
    original = np.asarray(photo, dtype=np.float32) / 255
    assert np.abs(out[0].permute(1, 2, 0).numpy() - original).mean() > 0.05  # visibly stylized
